//! Disk operations over a pool of hosts: copy, move (copy, then delete the source) and delete,
//! each recorded phase by phase in the [`Journal`] so that [`Disks::resume`] finishes or rolls
//! back whatever an engine crash interrupted.
//!
//! # A move, phase by phase
//!
//! ```text
//! begin ─► clone ─► copy (per volume, in parallel over hosts) ─► verify ─► COMMIT ─► delete source ─► end
//!            │           │  failed for good / checksum mismatch       │
//!            └───────────┴────────────────► rollback: delete destination ─► end (rolled back)
//! ```
//!
//! 1. **begin**: the source's volumes (ids, format, capacity, parent, allocation) are read and
//!    recorded; the destination must not have the image.
//! 2. **clone**: every volume is created on the destination with the same ids, parents first,
//!    then marked ILLEGAL: an empty destination must never look usable.
//! 3. **copy**: one `SDM.copy_data` per volume, up to `parallelism` at once, each on the host the
//!    [`PlacementPolicy`](crate::pool::PlacementPolicy) picks among those that see both domains.
//!    `G` is read just before each submission and recorded with the job; the job is followed
//!    by the recovery table ([`crate::follow`]). A failed or fenced attempt is retried on another
//!    host (up to `max_attempts`); a failure that no host can fix (an ILLEGAL source, no space)
//!    rolls the operation back.
//! 4. **verify** (optional): `Volume.checksum` of source and destination, compared.
//! 5. **commit**: every destination volume is read back LEGAL at its copy's generation; the
//!    commit record makes the destination the disk. [`Event::TargetReady`] is sent: the engine
//!    can use the disk from now on, whatever happens to the source.
//! 6. **delete source** (a move): the source volumes are marked ILLEGAL, then `Image.delete`
//!    (with `postZero` when wiping). A source that cannot be deleted stays ILLEGAL and its
//!    operation stays in the journal, outcome [`Outcome::Pending`], for `resume` to retry.
//!
//! Before the commit a crash is finished forward by `resume` (copies are followed or retried);
//! after it, forward is the only direction. A rollback is recorded before it acts, so a crash
//! during one is rolled back again.
//!
//! # Files
//!
//! This file holds the entry points and the driver that walks the phases; `retry.rs` the one
//! retry loop over hosts and the one parallel loop over volumes that the phases share. Each
//! phase has a file: `clone.rs`, `copy.rs`, `verify.rs` (verification and the commit),
//! `delete.rs` (deleting a source or a delete's image, and rolling back); `event.rs` and
//! `report.rs` are what callers see.

mod clone;
mod copy;
mod delete;
mod event;
mod report;
mod retry;
mod run;
mod verify;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use sdm_proto::{ApiError, ErrorCode, Legality, SdmApiClient, Uuid};

use crate::error::Error;
use crate::follow::FollowOptions;
use crate::journal::{Journal, JournalError, Record};
use crate::op::parents_first;
use crate::pool::HostPool;

pub use crate::op::{DeletePolicy, MovePolicy, OpKind, Outcome, VolumeSpec};
pub use event::{Event, EventSink, NoEvents, Phase};
pub use report::{AttemptReport, CopyStartReport, OpReport, VolumeReport};
pub use run::{retryable, Disks};

use run::{fatal, Active, Run, Step, Stop};

impl Disks {
    /// Operations over `pool`, recorded in `journal`.
    pub fn new(pool: Arc<HostPool>, journal: Arc<Journal>) -> Disks {
        Disks {
            pool,
            journal,
            follow: FollowOptions::default(),
            active: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Uses `opts` to follow jobs.
    pub fn with_follow_options(mut self, opts: FollowOptions) -> Disks {
        self.follow = opts;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<HostPool> {
        &self.pool
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    // --- entry points -------------------------------------------------------------------

    /// Copies every volume of `image` from `src_sd` to `dst_sd` (same ids), verified when the
    /// policy says so; the source is kept.
    pub async fn copy_disk(
        &self,
        image: &Uuid,
        src_sd: &Uuid,
        dst_sd: &Uuid,
        policy: MovePolicy,
        events: &dyn EventSink,
    ) -> Result<OpReport, Error> {
        self.transfer(OpKind::Copy, image, src_sd, dst_sd, policy, events)
            .await
    }

    /// Moves `image` from `src_sd` to `dst_sd`: copy (verified when the policy says so), commit,
    /// then delete the source (wiped when the policy says so). See the module documentation.
    ///
    /// Returns a report once the operation is recorded: its outcome says whether it committed,
    /// was rolled back, or is pending in the journal. Errors are for operations that could not
    /// begin (bad arguments, unknown image, no host) and journal failures.
    pub async fn move_disk(
        &self,
        image: &Uuid,
        src_sd: &Uuid,
        dst_sd: &Uuid,
        policy: MovePolicy,
        events: &dyn EventSink,
    ) -> Result<OpReport, Error> {
        self.transfer(OpKind::Move, image, src_sd, dst_sd, policy, events)
            .await
    }

    /// Deletes `image` from `sd` (wiped when the policy says so).
    pub async fn delete_disk(
        &self,
        image: &Uuid,
        sd: &Uuid,
        policy: DeletePolicy,
        events: &dyn EventSink,
    ) -> Result<OpReport, Error> {
        let volumes = self.read_source(image, sd, false).await?;
        // The agent lists no volumes for an image it does not have (as VDSM).
        if volumes.is_empty() {
            return Err(Error::Api(ApiError::new(
                ErrorCode::ImageDoesNotExistInSD,
                format!("image {image} has no volumes on domain {sd}"),
            )));
        }
        let policy = MovePolicy {
            wipe: policy.wipe,
            discard: policy.discard,
            ..Default::default()
        };
        let begin = Record::Begin {
            op: Uuid::new_v4(),
            kind: OpKind::Delete,
            image: image.clone(),
            src_sd: sd.clone(),
            dst_sd: None,
            policy,
            volumes,
        };
        self.start(begin, events).await
    }

    /// Takes up every unfinished operation of the journal that this engine may take up
    /// (except those this `Disks` is running now) and drives it to its end: forward before the
    /// commit, forward after it, or on with a recorded rollback. Idempotent: an operation that
    /// ends is not taken up again, and one that stays pending (a source still not deletable)
    /// is retried by the next call.
    ///
    /// With a shared journal, "may take up" means: its owner's lease expired (the owner died,
    /// froze or lost the database) or the owner released it. Each is claimed first, with a
    /// higher epoch ([`Event::TakenOver`] when it came from another engine); one that another
    /// engine claims first, or whose owner renews after all, is skipped.
    pub async fn resume(&self, events: &dyn EventSink) -> Result<Vec<OpReport>, Error> {
        self.resume_parallel(events, 1).await
    }

    /// [`resume`](Self::resume), driving up to `parallel` operations at once (a takeover
    /// daemon that finds the operations of a dead engine should not finish them one by one).
    /// Reports come in the order operations end.
    pub async fn resume_parallel(
        &self,
        events: &dyn EventSink,
        parallel: usize,
    ) -> Result<Vec<OpReport>, Error> {
        use futures::StreamExt;
        let ids = self.journal.claimable().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.pool.refresh().await;
        let mut runs = futures::stream::iter(ids)
            .map(|op| async move { self.resume_op(&op, events).await })
            .buffer_unordered(parallel.max(1));
        let mut reports = Vec::new();
        let mut failed = None;
        while let Some(r) = runs.next().await {
            match r {
                Ok(Some(report)) => reports.push(report),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }

    /// Takes up one unfinished operation, if this engine may (see [`resume`](Self::resume)),
    /// and drives it to its end or to a stop. None: not taken up (this `Disks` runs it already,
    /// another engine holds it, or it ended).
    pub async fn resume_op(
        &self,
        op: &Uuid,
        events: &dyn EventSink,
    ) -> Result<Option<OpReport>, Error> {
        let Some(active) = self.activate(op) else {
            return Ok(None);
        };
        let claim = match self.journal.claim(op).await {
            Ok(c) => c,
            Err(e @ (JournalError::Busy { .. } | JournalError::UnknownOp(_))) => {
                tracing::info!(op = %op, reason = %e, "not taking up the operation");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(st) = self.journal.op(op) else {
            return Ok(None);
        };
        if let Some(from) = &claim.previous_owner {
            tracing::info!(op = %op, kind = %st.kind, image = %st.image, from = %from, epoch = claim.epoch, "taking over operation");
            events.event(&Event::TakenOver {
                op: op.clone(),
                from: from.clone(),
                epoch: claim.epoch,
            });
        } else {
            tracing::info!(op = %op, kind = %st.kind, image = %st.image, "resuming operation");
        }
        self.drive(active, events, true).await.map(Some)
    }

    /// One unfinished operation per image: a second one would take the first one's half-built
    /// destination for its own. Asked before anything is read, so that the answer names the
    /// operation; a shared journal's unique constraint decides at `begin` anyway.
    async fn refuse_busy(&self, image: &Uuid) -> Result<(), Error> {
        if let Some(o) = self
            .journal
            .unfinished()
            .into_iter()
            .find(|o| &o.image == image)
        {
            return Err(Error::Usage(format!(
                "image {image} has an unfinished {} operation {} in the journal; resume it first",
                o.kind, o.op
            )));
        }
        match self.journal.in_progress(image).await? {
            Some(l) => Err(Error::InProgress {
                image: image.clone(),
                op: l.op,
                owner: l.owner.unwrap_or_default(),
            }),
            None => Ok(()),
        }
    }

    async fn transfer(
        &self,
        kind: OpKind,
        image: &Uuid,
        src_sd: &Uuid,
        dst_sd: &Uuid,
        policy: MovePolicy,
        events: &dyn EventSink,
    ) -> Result<OpReport, Error> {
        if src_sd == dst_sd {
            return Err(Error::Usage(
                "source and destination domains are the same".into(),
            ));
        }
        let specs = self.read_source(image, src_sd, true).await?;
        if specs.is_empty() {
            return Err(Error::Api(ApiError::new(
                ErrorCode::ImageDoesNotExistInSD,
                format!("image {image} has no volumes on domain {src_sd}"),
            )));
        }
        let d = self.reader(dst_sd).await?;
        match call!(d, get_volumes(dst_sd.clone(), image.clone())).await {
            Err(Error::Api(e)) if e.code == ErrorCode::ImageDoesNotExistInSD => {}
            Ok(v) if v.is_empty() => {}
            Ok(_) => {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::VolumeAlreadyExists,
                    format!("image {image} already exists on domain {dst_sd}"),
                )))
            }
            Err(e) => return Err(e),
        }
        let begin = Record::Begin {
            op: Uuid::new_v4(),
            kind,
            image: image.clone(),
            src_sd: src_sd.clone(),
            dst_sd: Some(dst_sd.clone()),
            policy,
            volumes: parents_first(specs),
        };
        self.start(begin, events).await
    }

    /// Refuses an image that is busy, refreshes the pool and reads the volumes of `image` on
    /// `sd` as the operation will record them. `legal_only`: a volume that is not LEGAL refuses
    /// the operation (a copy must not take a half-written volume for its source).
    async fn read_source(
        &self,
        image: &Uuid,
        sd: &Uuid,
        legal_only: bool,
    ) -> Result<Vec<VolumeSpec>, Error> {
        self.refuse_busy(image).await?;
        self.pool.refresh().await;
        let c = self.reader(sd).await?;
        let vols = call!(c, get_volumes(sd.clone(), image.clone())).await?;
        let mut specs = Vec::new();
        for v in &vols {
            let info = call!(c, get_volume_info(sd.clone(), image.clone(), v.clone())).await?;
            if legal_only && info.legality != Legality::Legal {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::prepareIllegalVolumeError,
                    format!("source volume {v} is {}", info.legality),
                )));
            }
            specs.push(VolumeSpec::from(&info));
        }
        Ok(specs)
    }

    /// Records a new operation's `begin`, then drives the operation.
    async fn start(&self, begin: Record, events: &dyn EventSink) -> Result<OpReport, Error> {
        let op = begin.op().clone();
        let active = self
            .activate(&op)
            .ok_or_else(|| Error::Usage(format!("operation {op} is already running")))?;
        match self.record(begin).await {
            Ok(()) => {}
            Err(Stop::Fatal(e)) => return Err(e),
            Err(_) => return Err(Error::Operation("cannot record the operation".into())),
        }
        self.drive(active, events, false).await
    }

    /// Marks `op` as driven by this `Disks` (None: it already is).
    fn activate(&self, op: &Uuid) -> Option<Active> {
        let mut set = self.active.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(op.clone()).then(|| Active {
            set: self.active.clone(),
            op: op.clone(),
            journal: self.journal.clone(),
        })
    }

    // --- the driver ---------------------------------------------------------------------

    /// Drives the operation `active` marks to its end or to a stop; an operation that did not
    /// end is released when `active` drops.
    async fn drive(
        &self,
        active: Active,
        events: &dyn EventSink,
        resumed: bool,
    ) -> Result<OpReport, Error> {
        let op = &active.op.clone();
        let run = Run {
            op: op.clone(),
            events,
            cancel: AtomicBool::new(false),
        };
        let st = self.state(op).map_err(fatal)?;
        run.emit(Event::Started {
            op: op.clone(),
            kind: st.kind,
            image: st.image.clone(),
            src_sd: st.src_sd.clone(),
            dst_sd: st.dst_sd.clone(),
            volumes: st.volumes.clone(),
            resumed,
        });
        let mut pending = None;
        if st.unfinished() {
            let r = match st.kind {
                OpKind::Delete => self.run_delete(&run).await,
                OpKind::Move | OpKind::Copy => self.run_transfer(&run).await,
            };
            match r {
                Ok(()) => {}
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Later(m)) => pending = Some(m),
                Err(Stop::Refused(e)) => pending = Some(e.to_string()),
                Err(Stop::Abandon(m)) => pending = Some(m),
            }
        }
        let st = self.state(op).map_err(fatal)?;
        let report = report::report(&st, pending, resumed);
        if let Some(m) = &report.message {
            if report.outcome == Outcome::Pending {
                tracing::warn!(op = %op, message = %m, "operation stays in the journal");
            }
        }
        run.emit(Event::Finished {
            op: op.clone(),
            outcome: report.outcome,
            message: report.message.clone(),
        });
        Ok(report)
    }

    async fn run_transfer(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        if st.rollback.is_none() && !st.committed() {
            match self.forward(run).await {
                Ok(()) => {}
                Err(Stop::Abandon(reason)) => {
                    tracing::error!(op = %run.op, reason = %reason, "operation fails; rolling back");
                    self.record(Record::Rollback {
                        op: run.op.clone(),
                        reason,
                    })
                    .await?;
                }
                Err(e) => return Err(e),
            }
        }
        let st = self.state(&run.op)?;
        if let Some(reason) = st.rollback.clone() {
            return self.rollback(run, &st, reason).await;
        }
        if st.kind == OpKind::Copy {
            return self.end(run, Outcome::Committed, None).await;
        }
        self.delete_source(run).await?;
        self.end(run, Outcome::Committed, None).await
    }

    async fn run_delete(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.phase(Phase::Delete);
        match self
            .delete_image(run, &st.src_sd, st.policy.wipe, st.policy.discard)
            .await
        {
            Ok(()) => self.end(run, Outcome::Committed, None).await,
            Err(Stop::Refused(e)) => {
                // Nothing changed on storage: there is nothing to resume.
                self.end(run, Outcome::Failed, Some(e.to_string())).await?;
                Err(Stop::Refused(e))
            }
            Err(e) => Err(e),
        }
    }

    async fn forward(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        if !st.cloned {
            self.clone_structure(run, &st).await?;
            self.record(Record::Cloned { op: run.op.clone() }).await?;
        }
        self.copy_all(run).await?;
        if st.policy.verify {
            self.verify_all(run).await?;
        }
        self.commit(run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy() {
        assert!(retryable(ErrorCode::GeneralException));
        assert!(retryable(ErrorCode::AcquireLockFailure));
        assert!(retryable(ErrorCode::GenerationMismatch));
        assert!(!retryable(ErrorCode::prepareIllegalVolumeError));
        assert!(!retryable(ErrorCode::NoSpaceLeftOnDomain));
        assert!(!retryable(ErrorCode::ActionStopped));
        assert!(!retryable(ErrorCode::InvalidParameterException));
    }

    /// Engines run operations in tasks of their own: the entry points' futures must be `Send`.
    #[allow(dead_code)]
    fn entry_points_are_send(d: &Disks, id: &Uuid, p: MovePolicy) {
        fn send<T: Send>(_: T) {}
        send(d.move_disk(id, id, id, p.clone(), &NoEvents));
        send(d.copy_disk(id, id, id, p, &NoEvents));
        send(d.delete_disk(id, id, DeletePolicy::default(), &NoEvents));
        send(d.resume(&NoEvents));
    }
}
