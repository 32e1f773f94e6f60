//! What the phases of a disk operation share: [`Disks`] itself, the per-call [`Run`], how a
//! phase stops ([`Stop`]), and the journal helpers every phase uses (record, announce, read the
//! state). The driver (`mod.rs`) and the phases depend on this file, never the other way.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sdm_proto::{ApiError, ErrorCode, Uuid};

use crate::client::AgentClient;
use crate::error::Error;
use crate::follow::{FollowOptions, VolumeId};
use crate::journal::{Journal, JournalError, OpState, Record};
use crate::op::Outcome;
use crate::pool::HostPool;

use super::event::{Event, EventSink, Phase};

/// Why a phase stopped.
pub(super) enum Stop {
    /// Nothing can make it succeed: roll back.
    Abandon(String),
    /// Cannot go on now (no host, lease held): leave it in the journal for `resume`.
    Later(String),
    /// Storage refused before anything changed.
    Refused(ApiError),
    /// The journal failed: stop everything, the caller gets the error.
    Fatal(Error),
}

impl From<JournalError> for Stop {
    fn from(e: JournalError) -> Stop {
        match e {
            JournalError::InProgress { image, op, owner } => {
                Stop::Fatal(Error::InProgress { image, op, owner })
            }
            e => Stop::Fatal(Error::Journal(e)),
        }
    }
}

pub(super) type Step<T = ()> = Result<T, Stop>;

/// The error the caller of an entry point gets for a stop.
pub(super) fn fatal(s: Stop) -> Error {
    match s {
        Stop::Fatal(e) => e,
        Stop::Abandon(m) | Stop::Later(m) => Error::Operation(m),
        Stop::Refused(e) => Error::Api(e),
    }
}

/// Agent errors worth another attempt on another host: the host, its lease or a lost job may be
/// at fault. Everything else (an ILLEGAL source, no space, a bad request, an abort) would fail
/// again anywhere.
pub fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::GeneralException
            | ErrorCode::AcquireLockFailure
            | ErrorCode::GenerationMismatch
            | ErrorCode::NoSuchJob
            | ErrorCode::JobExists
            | ErrorCode::ImageVerificationError
            | ErrorCode::StorageDomainDoesNotExist
            | ErrorCode::VolumeMetadataWriteError
    )
}

/// Per-call state of one operation.
pub(super) struct Run<'a> {
    pub(super) op: Uuid,
    pub(super) events: &'a dyn EventSink,
    pub(super) cancel: AtomicBool,
}

impl Run<'_> {
    pub(super) fn emit(&self, e: Event) {
        self.events.event(&e);
    }

    pub(super) fn phase(&self, phase: Phase) {
        self.emit(Event::Phase {
            op: self.op.clone(),
            phase,
        });
    }
}

/// Removes an operation from the active set when its driver ends (also when its future is
/// dropped), and releases it if it did not end: with a shared journal, others may take up at
/// once what this engine stopped driving.
pub(super) struct Active {
    pub(super) set: Arc<Mutex<HashSet<Uuid>>>,
    pub(super) op: Uuid,
    pub(super) journal: Arc<Journal>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.op);
        if self.journal.op(&self.op).is_some_and(|st| st.unfinished()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (journal, op) = (self.journal.clone(), self.op.clone());
                rt.spawn(async move { journal.release(&op).await });
            }
        }
    }
}

/// The destination domain of a copy or move (blank for a delete, which has none).
pub(super) fn dst_of(st: &OpState) -> Uuid {
    st.dst_sd.clone().unwrap_or_else(Uuid::blank)
}

/// Volume `vol` of the operation's image on `sd`.
pub(super) fn volume_on(sd: &Uuid, st: &OpState, vol: &Uuid) -> VolumeId {
    VolumeId {
        sd_id: sd.clone(),
        img_id: st.image.clone(),
        vol_id: vol.clone(),
    }
}

/// Disk operations over a [`HostPool`], recorded in a [`Journal`].
#[derive(Debug)]
pub struct Disks {
    pub(super) pool: Arc<HostPool>,
    pub(super) journal: Arc<Journal>,
    pub(super) follow: FollowOptions,
    /// Operations being driven now (not taken up by `resume`).
    pub(super) active: Arc<Mutex<HashSet<Uuid>>>,
}

impl Disks {
    pub(super) async fn record(&self, rec: Record) -> Step {
        Ok(self.journal.append(rec).await?)
    }

    /// Records `rec`, then announces it ([`Event::announcing`]; `copy_host`: the host of a
    /// copy's verdict): callers never hear of a step the journal does not hold.
    pub(super) async fn record_and_announce(
        &self,
        run: &Run<'_>,
        rec: Record,
        copy_host: &str,
    ) -> Step {
        let event = Event::announcing(&rec, copy_host);
        self.record(rec).await?;
        if let Some(e) = event {
            run.emit(e);
        }
        Ok(())
    }

    pub(super) fn state(&self, op: &Uuid) -> Step<OpState> {
        self.journal
            .op(op)
            .ok_or_else(|| Stop::Fatal(Error::Journal(JournalError::UnknownOp(op.clone()))))
    }

    pub(super) fn lost_after(&self) -> Duration {
        self.pool.options().probe_timeout * 3
    }

    /// A client of a healthy host that sees `sd`, least loaded first.
    pub(super) async fn reader(&self, sd: &Uuid) -> Result<AgentClient, Error> {
        self.pool.refresh_if_stale().await;
        self.pool
            .up_seeing(sd)
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoHost(format!("domain {sd}")))
    }

    /// Records the operation's end: nothing is left to do for it.
    pub(super) async fn end(
        &self,
        run: &Run<'_>,
        outcome: Outcome,
        message: Option<String>,
    ) -> Step {
        self.record(Record::End {
            op: run.op.clone(),
            outcome,
            message,
        })
        .await
    }
}
