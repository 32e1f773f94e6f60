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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sdm_proto::{
    ApiError, Capacity, ChecksumAlgorithm, Description, Endpoint, ErrorCode, Flag, Generation,
    JobError, JobInfo, JobStatus, Legality, Preallocation, Size, Uuid, VolumeAttributes,
    VolumeFormat, VolumeInfo, VolumeRef,
};
use serde::{Deserialize, Serialize};

use crate::follow::{self, CopyTicket, Decision, FollowOptions, Verdict, VolumeId};
use crate::journal::{Journal, JournalError, OpState, Record};
use crate::pool::{HostPool, PlacementRequest};
use crate::{job_outcome, AgentClient, Error, SdmApiClient};

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Copy to another domain, then delete the source.
    Move,
    /// Copy to another domain.
    Copy,
    /// Delete from a domain.
    Delete,
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            OpKind::Move => "move",
            OpKind::Copy => "copy",
            OpKind::Delete => "delete",
        })
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Finished as asked.
    Committed,
    /// Undone: the destination was deleted, the source is as before.
    RolledBack,
    /// Refused by storage before anything changed (a delete of a disk in use, say).
    Failed,
    /// Not finished: it stays in the journal and `resume` takes it up again (a source that
    /// could not be deleted yet, no host reachable).
    Pending,
}

impl Outcome {
    /// True for [`Outcome::Committed`].
    pub fn is_success(self) -> bool {
        self == Outcome::Committed
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "failed",
            Outcome::Pending => "pending",
        })
    }
}

/// How to copy or move a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MovePolicy {
    /// Overwrite the deleted image with zeros (`postZero`): the source of a move, the
    /// destination of a rollback.
    pub wipe: bool,
    /// Release the deleted image's space (best effort).
    pub discard: bool,
    /// Compare checksums of every source and destination volume before the commit.
    pub verify: bool,
    /// Volumes copied at once (0: one per host that sees both domains).
    pub parallelism: usize,
    /// Bytes per second per copy (None: the agents' default).
    pub bandwidth_limit: Option<u64>,
    /// Attempts per volume before the operation is rolled back.
    pub max_attempts: u32,
}

impl Default for MovePolicy {
    fn default() -> Self {
        MovePolicy {
            wipe: false,
            discard: false,
            verify: true,
            parallelism: 0,
            bandwidth_limit: None,
            max_attempts: 3,
        }
    }
}

/// How to delete a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePolicy {
    /// Overwrite every byte with zeros before removal.
    pub wipe: bool,
    /// Release the space afterwards (best effort).
    pub discard: bool,
}

/// A source volume as recorded at the beginning of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Volume id (the same on the destination).
    pub vol_id: Uuid,
    /// Parent volume, or the BLANK UUID.
    pub parent: Uuid,
    /// RAW or COW.
    pub format: VolumeFormat,
    /// SPARSE or PREALLOCATED.
    pub allocation: Preallocation,
    /// Virtual size.
    pub capacity: u64,
    /// Description.
    pub description: String,
    /// Bytes of the volume's file (what a copy moves at most).
    pub bytes: u64,
}

/// Phases, as reported in [`Event::Phase`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Creating the destination's volumes.
    Clone,
    /// Copying data.
    Copy,
    /// Comparing checksums.
    Verify,
    /// Checking the destination and recording the commit.
    Commit,
    /// Deleting the source of a move.
    DeleteSource,
    /// Deleting the image of a delete.
    Delete,
    /// Undoing: deleting the destination.
    Rollback,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Phase::Clone => "clone",
            Phase::Copy => "copy",
            Phase::Verify => "verify",
            Phase::Commit => "commit",
            Phase::DeleteSource => "delete source",
            Phase::Delete => "delete",
            Phase::Rollback => "rollback",
        })
    }
}

/// What happens during an operation, as it happens (for progress displays and logs).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The operation starts (or is resumed).
    Started {
        /// Operation id.
        op: Uuid,
        /// What it does.
        kind: OpKind,
        /// The image.
        image: Uuid,
        /// Source domain.
        src_sd: Uuid,
        /// Destination domain.
        dst_sd: Option<Uuid>,
        /// Its volumes.
        volumes: Vec<VolumeSpec>,
        /// Taken up from the journal by `resume`.
        resumed: bool,
    },
    /// A phase begins.
    Phase {
        /// Operation id.
        op: Uuid,
        /// The phase.
        phase: Phase,
    },
    /// A copy was submitted.
    CopySubmitted {
        /// Operation id.
        op: Uuid,
        /// Volume.
        vol: Uuid,
        /// Host URL.
        host: String,
        /// Job id.
        job: Uuid,
        /// `G`.
        generation: u16,
        /// Attempt number.
        attempt: u32,
    },
    /// A copy's progress.
    CopyProgress {
        /// Operation id.
        op: Uuid,
        /// Volume.
        vol: Uuid,
        /// Host URL.
        host: String,
        /// Bytes copied.
        bytes_done: u64,
        /// Bytes to copy.
        bytes_total: u64,
        /// Current rate.
        rate_bps: u64,
        /// Seconds left, when known.
        eta_s: Option<f64>,
    },
    /// The recovery table was consulted (the host did not answer or forgot the job).
    Recovery {
        /// Operation id.
        op: Uuid,
        /// Volume.
        vol: Uuid,
        /// Host URL of the job.
        host: String,
        /// What was found and decided.
        decision: Decision,
    },
    /// A copy attempt reached its verdict.
    CopyEnded {
        /// Operation id.
        op: Uuid,
        /// Volume.
        vol: Uuid,
        /// Host URL.
        host: String,
        /// It committed.
        done: bool,
        /// It was lost and fenced.
        fenced: bool,
        /// Why it failed.
        error: Option<String>,
    },
    /// A volume's checksums matched.
    Verified {
        /// Operation id.
        op: Uuid,
        /// Volume.
        vol: Uuid,
        /// The SHA-256.
        checksum: String,
    },
    /// The commit is recorded: the destination is the disk from now on.
    TargetReady {
        /// Operation id.
        op: Uuid,
    },
    /// An image deletion (or a leftover's cleanup) was submitted.
    DeleteSubmitted {
        /// Operation id.
        op: Uuid,
        /// Domain.
        sd: Uuid,
        /// Host URL.
        host: String,
        /// Job id.
        job: Uuid,
    },
    /// A deletion's progress (wiping).
    DeleteProgress {
        /// Operation id.
        op: Uuid,
        /// Domain.
        sd: Uuid,
        /// Bytes wiped.
        bytes_done: u64,
        /// Bytes to wipe.
        bytes_total: u64,
        /// Current rate.
        rate_bps: u64,
    },
    /// A deletion ended.
    DeleteEnded {
        /// Operation id.
        op: Uuid,
        /// Domain.
        sd: Uuid,
        /// The image is gone.
        done: bool,
        /// Why not.
        error: Option<String>,
    },
    /// The call is over for this operation (it may still be pending in the journal).
    Finished {
        /// Operation id.
        op: Uuid,
        /// Outcome.
        outcome: Outcome,
        /// Details.
        message: Option<String>,
    },
}

/// Receives [`Event`]s. Called from the operation's tasks: keep it quick and never block.
pub trait EventSink: Send + Sync {
    /// One event.
    fn event(&self, e: &Event);
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn event(&self, e: &Event) {
        self(e)
    }
}

/// An [`EventSink`] that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _: &Event) {}
}

/// One copy attempt in a report.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptReport {
    /// Attempt number.
    pub attempt: u32,
    /// Host URL.
    pub host: String,
    /// Job id.
    pub job: Uuid,
    /// `G`.
    pub generation: u16,
    /// "done", "fenced", "failed: ..." or "undecided".
    pub outcome: String,
    /// Seconds from submission to verdict.
    pub seconds: Option<f64>,
}

/// One volume in a report.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeReport {
    /// Volume id.
    pub vol_id: Uuid,
    /// Bytes of the source file.
    pub bytes: u64,
    /// Copy attempts.
    pub attempts: Vec<AttemptReport>,
    /// Destination generation after the copy.
    pub generation: Option<u16>,
    /// Verified checksum.
    pub checksum: Option<String>,
}

/// The result of a disk operation.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// Operation id (the journal's key).
    pub op: Uuid,
    /// What it did.
    pub kind: OpKind,
    /// The image.
    pub image: Uuid,
    /// Source domain.
    pub src_sd: Uuid,
    /// Destination domain.
    pub dst_sd: Option<Uuid>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, when not committed (or a warning).
    pub message: Option<String>,
    /// Volumes.
    pub volumes: Vec<VolumeReport>,
    /// Bytes of all source volumes.
    pub bytes: u64,
    /// Seconds from begin to end (or to now, when pending).
    pub elapsed_s: f64,
    /// Seconds from begin to the commit (the destination usable).
    pub target_ready_s: Option<f64>,
    /// The deleted image (the source of a move, the image of a delete) is gone.
    pub deleted: bool,
    /// Taken up from the journal by `resume`.
    pub resumed: bool,
}

impl OpReport {
    /// Ok for a committed operation; otherwise an [`Error::Operation`] saying how it ended.
    pub fn into_result(self) -> Result<OpReport, Error> {
        if self.outcome.is_success() {
            Ok(self)
        } else {
            Err(Error::Operation(format!(
                "{} of image {} {}{}",
                self.kind,
                self.image,
                self.outcome,
                self.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )))
        }
    }
}

/// Why a phase stopped.
enum Stop {
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
        Stop::Fatal(Error::Journal(e))
    }
}

type Step<T = ()> = Result<T, Stop>;

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
struct Run<'a> {
    op: Uuid,
    events: &'a dyn EventSink,
    cancel: AtomicBool,
}

impl Run<'_> {
    fn emit(&self, e: Event) {
        self.events.event(&e);
    }
}

/// Removes an operation from the active set when its driver ends (also when its future is
/// dropped).
struct Active {
    set: Arc<Mutex<HashSet<Uuid>>>,
    op: Uuid,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.op);
    }
}

/// Disk operations over a [`HostPool`], recorded in a [`Journal`].
#[derive(Debug)]
pub struct Disks {
    pool: Arc<HostPool>,
    journal: Arc<Journal>,
    follow: FollowOptions,
    active: Arc<Mutex<HashSet<Uuid>>>,
}

fn job_error(e: &ApiError) -> JobError {
    JobError::from(e)
}

/// Orders volumes parents first (a parent outside the list counts as present).
fn parents_first(mut vols: Vec<VolumeSpec>) -> Vec<VolumeSpec> {
    let mut out: Vec<VolumeSpec> = Vec::with_capacity(vols.len());
    while !vols.is_empty() {
        let pos = vols
            .iter()
            .position(|v| {
                v.parent.is_blank()
                    || out.iter().any(|o| o.vol_id == v.parent)
                    || !vols.iter().any(|o| o.vol_id == v.parent)
            })
            .unwrap_or(0);
        out.push(vols.remove(pos));
    }
    out
}

fn spec_of(info: &VolumeInfo) -> VolumeSpec {
    VolumeSpec {
        vol_id: info.uuid.clone(),
        parent: info.parent.clone(),
        format: info.format,
        allocation: info.allocation,
        capacity: info.capacity.get(),
        description: info.description.clone(),
        bytes: info.apparentsize.get(),
    }
}

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

    async fn record(&self, rec: Record) -> Step {
        let j = self.journal.clone();
        match tokio::task::spawn_blocking(move || j.append(rec)).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(Stop::Fatal(Error::Operation(format!(
                "journal writer failed: {e}"
            )))),
        }
    }

    fn state(&self, op: &Uuid) -> Step<OpState> {
        self.journal
            .op(op)
            .ok_or_else(|| Stop::Fatal(Error::Journal(JournalError::UnknownOp(op.clone()))))
    }

    fn lost_after(&self) -> Duration {
        self.pool.options().probe_timeout * 3
    }

    /// A client of a healthy host that sees `sd`, least loaded first.
    async fn reader(&self, sd: &Uuid) -> Result<AgentClient, Error> {
        self.pool.refresh_if_stale().await;
        self.pool
            .up_seeing(sd)
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoHost(format!("domain {sd}")))
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
        self.refuse_busy(image)?;
        self.pool.refresh().await;
        let c = self.reader(sd).await?;
        let vols = call!(c, get_volumes(sd.clone(), image.clone())).await?;
        let mut specs = Vec::new();
        for v in &vols {
            let info = call!(c, get_volume_info(sd.clone(), image.clone(), v.clone())).await?;
            specs.push(spec_of(&info));
        }
        let op = Uuid::new_v4();
        let mp = MovePolicy {
            wipe: policy.wipe,
            discard: policy.discard,
            ..Default::default()
        };
        self.begin(op.clone(), OpKind::Delete, image, sd, None, mp, specs)
            .await?;
        self.drive(&op, events, false).await
    }

    /// Takes up every unfinished operation of the journal (except those this `Disks` is running
    /// now) and drives it to its end: forward before the commit, forward after it, or on with a
    /// recorded rollback. Idempotent: an operation that ends is not taken up again, and one that
    /// stays pending (a source still not deletable) is retried by the next call.
    pub async fn resume(&self, events: &dyn EventSink) -> Result<Vec<OpReport>, Error> {
        let ops: Vec<OpState> = {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            self.journal
                .unfinished()
                .into_iter()
                .filter(|o| !active.contains(&o.op))
                .collect()
        };
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.pool.refresh().await;
        let mut reports = Vec::new();
        for st in ops {
            tracing::info!(op = %st.op, kind = %st.kind, image = %st.image, "resuming operation");
            reports.push(self.drive(&st.op, events, true).await?);
        }
        Ok(reports)
    }

    /// One unfinished operation per image: a second one would take the first one's half-built
    /// destination for its own.
    fn refuse_busy(&self, image: &Uuid) -> Result<(), Error> {
        match self
            .journal
            .unfinished()
            .into_iter()
            .find(|o| &o.image == image)
        {
            Some(o) => Err(Error::Usage(format!(
                "image {image} has an unfinished {} operation {} in the journal; resume it first",
                o.kind, o.op
            ))),
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
        self.refuse_busy(image)?;
        self.pool.refresh().await;
        let c = self.reader(src_sd).await?;
        let vols = call!(c, get_volumes(src_sd.clone(), image.clone())).await?;
        let mut specs = Vec::new();
        for v in &vols {
            let info = call!(c, get_volume_info(src_sd.clone(), image.clone(), v.clone())).await?;
            if info.legality != Legality::Legal {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::prepareIllegalVolumeError,
                    format!("source volume {v} is {}", info.legality),
                )));
            }
            specs.push(spec_of(&info));
        }
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
        let op = Uuid::new_v4();
        let specs = parents_first(specs);
        self.begin(op.clone(), kind, image, src_sd, Some(dst_sd), policy, specs)
            .await?;
        self.drive(&op, events, false).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn begin(
        &self,
        op: Uuid,
        kind: OpKind,
        image: &Uuid,
        src_sd: &Uuid,
        dst_sd: Option<&Uuid>,
        policy: MovePolicy,
        volumes: Vec<VolumeSpec>,
    ) -> Result<(), Error> {
        let rec = Record::Begin {
            op,
            kind,
            image: image.clone(),
            src_sd: src_sd.clone(),
            dst_sd: dst_sd.cloned(),
            policy,
            volumes,
        };
        match self.record(rec).await {
            Ok(()) => Ok(()),
            Err(Stop::Fatal(e)) => Err(e),
            Err(_) => Err(Error::Operation("cannot record the operation".into())),
        }
    }

    // --- the driver ---------------------------------------------------------------------

    async fn drive(
        &self,
        op: &Uuid,
        events: &dyn EventSink,
        resumed: bool,
    ) -> Result<OpReport, Error> {
        {
            let mut set = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if !set.insert(op.clone()) {
                return Err(Error::Usage(format!("operation {op} is already running")));
            }
        }
        let _active = Active {
            set: self.active.clone(),
            op: op.clone(),
        };
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
        let report = self.report(&st, pending, resumed);
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

    async fn end(&self, run: &Run<'_>, outcome: Outcome, message: Option<String>) -> Step {
        self.record(Record::End {
            op: run.op.clone(),
            outcome,
            message,
        })
        .await
    }

    async fn run_delete(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::Delete,
        });
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

    // --- clone --------------------------------------------------------------------------

    async fn clone_structure(&self, run: &Run<'_>, st: &OpState) -> Step {
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::Clone,
        });
        let dst = st
            .dst_sd
            .clone()
            .ok_or_else(|| Stop::Abandon("no destination domain".into()))?;
        let c = self
            .reader(&dst)
            .await
            .map_err(|e| Stop::Later(e.to_string()))?;
        let (dst_ref, img) = (&dst, &st.image);
        for spec in &st.volumes {
            let parent = &(!spec.parent.is_blank()).then(|| spec.parent.clone());
            let description = &Description::parse(&spec.description).ok();
            let r = call!(
                c,
                create_volume(
                    dst_ref.clone(),
                    img.clone(),
                    spec.vol_id.clone(),
                    Capacity(Size(spec.capacity)),
                    spec.format,
                    spec.allocation,
                    parent.clone(),
                    description.clone(),
                )
            )
            .await;
            match r {
                Ok(_) => {}
                // Created by an earlier attempt whose answer was lost, or before a crash.
                Err(Error::Api(e)) if e.code == ErrorCode::VolumeAlreadyExists => {}
                Err(Error::Api(e)) => {
                    return Err(Stop::Abandon(format!(
                        "creating volume {} on the destination: {e}",
                        spec.vol_id
                    )))
                }
                Err(e) => return Err(Stop::Later(e.to_string())),
            }
        }
        for spec in &st.volumes {
            let vol = VolumeId {
                sd_id: dst.clone(),
                img_id: st.image.clone(),
                vol_id: spec.vol_id.clone(),
            };
            let info = self.volume_info(&c, &vol).await?;
            if info.format != spec.format || info.capacity.get() != spec.capacity {
                return Err(Stop::Abandon(format!(
                    "destination volume {} exists as {} of {} bytes, the source is {} of {}",
                    spec.vol_id, info.format, info.capacity, spec.format, spec.capacity
                )));
            }
            if info.legality == Legality::Legal {
                self.set_illegal(&c, &vol, info.generation).await?;
            }
        }
        Ok(())
    }

    async fn volume_info(&self, c: &AgentClient, vol: &VolumeId) -> Step<VolumeInfo> {
        call!(
            c,
            get_volume_info(vol.sd_id.clone(), vol.img_id.clone(), vol.vol_id.clone())
        )
        .await
        .map_err(|e| match e {
            Error::Api(a) => Stop::Abandon(format!("volume {vol}: {a}")),
            e => Stop::Later(e.to_string()),
        })
    }

    /// Marks a volume ILLEGAL, keeping its generation.
    async fn set_illegal(&self, c: &AgentClient, vol: &VolumeId, generation: u16) -> Step {
        let job = Uuid::new_v4();
        let vref = VolumeRef {
            sd_id: vol.sd_id.clone(),
            img_id: vol.img_id.clone(),
            vol_id: vol.vol_id.clone(),
            generation: Some(Generation(generation)),
        };
        let attrs = VolumeAttributes {
            legality: Some(Legality::Illegal),
            generation: Some(Generation(generation)),
            ..Default::default()
        };
        let submitted = c
            .submit(&job, |h| {
                let (j, v, a) = (job.clone(), vref.clone(), attrs.clone());
                async move { h.update_volume(j, v, a).await }
            })
            .await;
        let outcome = match submitted {
            Ok(()) => match follow::follow_plain(c, &job, &self.follow, self.lost_after(), &|_| {})
                .await
            {
                Ok(info) => job_outcome(&info).map_err(Error::Api),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(()),
            // Already ILLEGAL.
            Err(Error::Api(e)) if e.code == ErrorCode::InvalidVolumeUpdate => Ok(()),
            Err(Error::Api(e)) if e.code == ErrorCode::AcquireLockFailure => {
                Err(Stop::Later(format!("volume {vol} is in use: {e}")))
            }
            Err(Error::Api(e)) => Err(Stop::Abandon(format!("marking volume {vol} ILLEGAL: {e}"))),
            Err(e) => Err(Stop::Later(e.to_string())),
        }
    }

    // --- copy ---------------------------------------------------------------------------

    async fn copy_all(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::Copy,
        });
        let dst = st
            .dst_sd
            .clone()
            .ok_or_else(|| Stop::Abandon("no destination domain".into()))?;
        let todo: Vec<VolumeSpec> = st
            .volumes
            .iter()
            .filter(|v| {
                st.copies
                    .get(&v.vol_id)
                    .is_none_or(|c| c.done_generation.is_none())
            })
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let parallelism = if st.policy.parallelism > 0 {
            st.policy.parallelism
        } else {
            self.pool.refresh_if_stale().await;
            self.pool
                .eligible(&[st.src_sd.clone(), dst.clone()])
                .len()
                .max(1)
        };
        let mut results = futures::stream::iter(todo)
            .map(|spec| self.copy_volume(run, spec))
            .buffer_unordered(parallelism);
        let mut worst: Option<Stop> = None;
        while let Some(r) = results.next().await {
            let Err(stop) = r else { continue };
            if matches!(stop, Stop::Abandon(_) | Stop::Fatal(_)) {
                // The operation will roll back: stop the other copies instead of finishing them.
                run.cancel.store(true, Ordering::Relaxed);
            }
            worst = Some(match (worst.take(), stop) {
                (Some(Stop::Fatal(e)), _) | (_, Stop::Fatal(e)) => Stop::Fatal(e),
                (Some(Stop::Abandon(m)), _) => Stop::Abandon(m),
                (_, s) => s,
            });
        }
        match worst {
            None => Ok(()),
            Some(s) => Err(s),
        }
    }

    fn endpoints(&self, st: &OpState, vol: &Uuid, generation: u16) -> (Endpoint, Endpoint) {
        let src = Endpoint::div(st.src_sd.clone(), st.image.clone(), vol.clone(), None);
        let dst = Endpoint::div(
            st.dst_sd.clone().unwrap_or_else(Uuid::blank),
            st.image.clone(),
            vol.clone(),
            Some(Generation(generation)),
        );
        (src, dst)
    }

    async fn copy_volume(&self, run: &Run<'_>, spec: VolumeSpec) -> Step {
        let st = self.state(&run.op)?;
        let vol = spec.vol_id.clone();
        let dst_sd = st.dst_sd.clone().unwrap_or_else(Uuid::blank);
        let dst = VolumeId {
            sd_id: dst_sd.clone(),
            img_id: st.image.clone(),
            vol_id: vol.clone(),
        };
        let copy = st.copies.get(&vol).cloned().unwrap_or_default();
        let mut attempts = copy.attempts.len() as u32;
        let mut avoid: Vec<String> = Vec::new();
        let mut last_error = String::from("no attempt made");

        // An attempt recorded before a crash and never decided: follow it first.
        if let Some(a) = copy.undecided() {
            let ticket = CopyTicket {
                host: a.host.clone(),
                job_id: a.job.clone(),
                dst: dst.clone(),
                generation: a.generation,
            };
            let verdict = self.follow_copy(run, &ticket).await?;
            match self.conclude(run, &ticket, verdict).await? {
                None => return Ok(()),
                Some(err) => {
                    avoid.push(ticket.host.clone());
                    last_error = err;
                }
            }
        }

        loop {
            if run.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Abandon(format!(
                    "copy of volume {vol} stopped: another volume failed"
                )));
            }
            if attempts >= st.policy.max_attempts.max(1) {
                return Err(Stop::Abandon(format!(
                    "copy of volume {vol} failed {attempts} times; last: {last_error}"
                )));
            }
            let req = PlacementRequest {
                domains: vec![st.src_sd.clone(), dst_sd.clone()],
                avoid: avoid.clone(),
                bytes: spec.bytes,
            };
            let placement = self
                .pool
                .place(&req)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            let c = placement.client().clone();
            let host = placement.url().to_string();
            // G, read just before submitting.
            let (d, i, v) = (&dst_sd, &st.image, &vol);
            let g = match call!(c, get_volume_info(d.clone(), i.clone(), v.clone())).await {
                Ok(info) => info.generation,
                Err(Error::Api(e)) => {
                    return Err(Stop::Abandon(format!("destination volume {vol}: {e}")))
                }
                Err(e) => {
                    // Nothing was submitted: not an attempt.
                    self.pool.mark_down(&host, &e.to_string());
                    avoid.push(host);
                    tokio::time::sleep(self.follow.poll_interval).await;
                    continue;
                }
            };
            attempts += 1;
            let job = Uuid::new_v4();
            self.record(Record::CopySubmit {
                op: run.op.clone(),
                vol: vol.clone(),
                host: host.clone(),
                job: job.clone(),
                generation: g,
                attempt: attempts,
            })
            .await?;
            run.emit(Event::CopySubmitted {
                op: run.op.clone(),
                vol: vol.clone(),
                host: host.clone(),
                job: job.clone(),
                generation: g,
                attempt: attempts,
            });
            let (src_ep, dst_ep) = self.endpoints(&st, &vol, g);
            let bw = st.policy.bandwidth_limit.map(Size);
            let submitted = c
                .submit(&job, |h| {
                    let (j, s, d) = (job.clone(), src_ep.clone(), dst_ep.clone());
                    async move { h.copy_data(j, s, d, None, None, bw).await }
                })
                .await;
            let ticket = CopyTicket {
                host: host.clone(),
                job_id: job.clone(),
                dst: dst.clone(),
                generation: g,
            };
            let verdict = match submitted {
                // Refused: no job exists.
                Err(Error::Api(error)) => Verdict::Failed {
                    error,
                    fenced: false,
                },
                Err(e) => {
                    // Maybe registered, maybe not: the recovery table tells.
                    tracing::warn!(job = %job, host = %host, error = %e, "copy submission undetermined; following it");
                    self.follow_copy(run, &ticket).await?
                }
                Ok(()) => self.follow_copy(run, &ticket).await?,
            };
            drop(placement);
            match self.conclude(run, &ticket, verdict).await? {
                None => return Ok(()),
                Some(err) => {
                    avoid.push(host);
                    last_error = err;
                }
            }
        }
    }

    async fn follow_copy(&self, run: &Run<'_>, t: &CopyTicket) -> Step<Verdict> {
        let on = |d: &Decision| match d {
            Decision::Job { info } => run.emit(Event::CopyProgress {
                op: run.op.clone(),
                vol: t.dst.vol_id.clone(),
                host: t.host.clone(),
                bytes_done: info.bytes_done,
                bytes_total: info.bytes_total,
                rate_bps: info.rate_bps,
                eta_s: info.eta_s,
            }),
            d => {
                tracing::info!(op = %run.op, vol = %t.dst.vol_id, job = %t.job_id, decision = ?d, "recovery table");
                run.emit(Event::Recovery {
                    op: run.op.clone(),
                    vol: t.dst.vol_id.clone(),
                    host: t.host.clone(),
                    decision: d.clone(),
                })
            }
        };
        follow::follow_copy(&self.pool, t, &self.follow, Some(&run.cancel), &on)
            .await
            .map_err(|e| Stop::Later(e.to_string()))
    }

    /// Records a verdict. None: the copy is done; Some(error): another attempt may help.
    async fn conclude(
        &self,
        run: &Run<'_>,
        t: &CopyTicket,
        verdict: Verdict,
    ) -> Step<Option<String>> {
        let vol = t.dst.vol_id.clone();
        match verdict {
            Verdict::Done { generation } => {
                self.record(Record::CopyEnd {
                    op: run.op.clone(),
                    vol: vol.clone(),
                    job: t.job_id.clone(),
                    done: true,
                    generation: Some(generation),
                    fenced: false,
                    error: None,
                })
                .await?;
                run.emit(Event::CopyEnded {
                    op: run.op.clone(),
                    vol,
                    host: t.host.clone(),
                    done: true,
                    fenced: false,
                    error: None,
                });
                Ok(None)
            }
            Verdict::Failed { error, fenced } => {
                tracing::warn!(op = %run.op, vol = %vol, job = %t.job_id, host = %t.host, fenced, error = %error, "copy attempt failed");
                self.record(Record::CopyEnd {
                    op: run.op.clone(),
                    vol: vol.clone(),
                    job: t.job_id.clone(),
                    done: false,
                    generation: None,
                    fenced,
                    error: Some(job_error(&error)),
                })
                .await?;
                run.emit(Event::CopyEnded {
                    op: run.op.clone(),
                    vol: vol.clone(),
                    host: t.host.clone(),
                    done: false,
                    fenced,
                    error: Some(error.to_string()),
                });
                if fenced || retryable(error.code) {
                    Ok(Some(error.to_string()))
                } else {
                    Err(Stop::Abandon(format!(
                        "copy of volume {vol} failed: {error}"
                    )))
                }
            }
        }
    }

    // --- verify and commit --------------------------------------------------------------

    async fn verify_all(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::Verify,
        });
        let todo: Vec<Uuid> = st
            .volumes
            .iter()
            .filter(|v| {
                st.copies
                    .get(&v.vol_id)
                    .is_none_or(|c| c.checksum.is_none())
            })
            .map(|v| v.vol_id.clone())
            .collect();
        let parallelism = st.policy.parallelism.max(self.pool.urls().len()).max(1);
        let results: Vec<Step> = futures::stream::iter(todo)
            .map(|vol| self.verify_volume(run, &st, vol))
            .buffer_unordered(parallelism)
            .collect()
            .await;
        let mut worst = None;
        for r in results {
            if let Err(s) = r {
                worst = Some(match (worst.take(), s) {
                    (Some(Stop::Fatal(e)), _) | (_, Stop::Fatal(e)) => Stop::Fatal(e),
                    (Some(Stop::Abandon(m)), _) => Stop::Abandon(m),
                    (_, s) => s,
                });
            }
        }
        worst.map_or(Ok(()), Err)
    }

    async fn verify_volume(&self, run: &Run<'_>, st: &OpState, vol: Uuid) -> Step {
        let dst_sd = st.dst_sd.clone().unwrap_or_else(Uuid::blank);
        let (s, d) = futures::join!(
            self.checksum(&st.src_sd, &st.image, &vol),
            self.checksum(&dst_sd, &st.image, &vol)
        );
        let (s, d) = (s?, d?);
        if s != d {
            let e = Error::Verification {
                vol: vol.clone(),
                src: s,
                dst: d,
            };
            return Err(Stop::Abandon(e.to_string()));
        }
        self.record(Record::Verified {
            op: run.op.clone(),
            vol: vol.clone(),
            checksum: s.clone(),
        })
        .await?;
        run.emit(Event::Verified {
            op: run.op.clone(),
            vol,
            checksum: s,
        });
        Ok(())
    }

    /// SHA-256 of a volume, computed by a host that sees its domain; retried elsewhere when the
    /// host is lost (a checksum is read-only, so repeating it is harmless).
    async fn checksum(&self, sd: &Uuid, img: &Uuid, vol: &Uuid) -> Step<String> {
        let mut avoid = Vec::new();
        let mut last = String::new();
        for _ in 0..3 {
            let req = PlacementRequest {
                domains: vec![sd.clone()],
                avoid: avoid.clone(),
                bytes: 0,
            };
            let placement = self
                .pool
                .place(&req)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            let c = placement.client().clone();
            let job = Uuid::new_v4();
            let submitted = c
                .submit(&job, |h| {
                    let (j, s, i, v) = (job.clone(), sd.clone(), img.clone(), vol.clone());
                    async move {
                        h.checksum_volume(j, s, i, v, Some(ChecksumAlgorithm::Sha256))
                            .await
                    }
                })
                .await;
            let r = match submitted {
                Ok(()) => {
                    follow::follow_plain(&c, &job, &self.follow, self.lost_after(), &|_| {}).await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(info) => match (job_outcome(&info), info.result) {
                    (Ok(()), Some(res)) => return Ok(res.checksum),
                    (Ok(()), None) => last = format!("checksum job {job} ended without a result"),
                    (Err(e), _) if retryable(e.code) => last = e.to_string(),
                    (Err(e), _) => {
                        return Err(Stop::Abandon(format!("checksum of {sd}/{img}/{vol}: {e}")))
                    }
                },
                Err(Error::Api(e)) if !retryable(e.code) => {
                    return Err(Stop::Abandon(format!("checksum of {sd}/{img}/{vol}: {e}")))
                }
                Err(e) => {
                    if e.is_transport() {
                        self.pool.mark_down(c.url(), &e.to_string());
                    }
                    last = e.to_string();
                }
            }
            avoid.push(c.url().to_string());
        }
        Err(Stop::Later(format!(
            "checksum of {sd}/{img}/{vol} could not be computed: {last}"
        )))
    }

    async fn commit(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::Commit,
        });
        let dst_sd = st.dst_sd.clone().unwrap_or_else(Uuid::blank);
        let c = self
            .reader(&dst_sd)
            .await
            .map_err(|e| Stop::Later(e.to_string()))?;
        for spec in &st.volumes {
            let vol = VolumeId {
                sd_id: dst_sd.clone(),
                img_id: st.image.clone(),
                vol_id: spec.vol_id.clone(),
            };
            let info = self.volume_info(&c, &vol).await?;
            let want = st.copies.get(&spec.vol_id).and_then(|c| c.done_generation);
            if info.legality != Legality::Legal || Some(info.generation) != want {
                return Err(Stop::Abandon(format!(
                    "destination volume {} is {} at generation {} after its copy (expected LEGAL at {})",
                    spec.vol_id,
                    info.legality,
                    info.generation,
                    want.map(|g| g.to_string()).unwrap_or_else(|| "?".into())
                )));
            }
        }
        self.record(Record::Commit { op: run.op.clone() }).await?;
        tracing::info!(op = %run.op, image = %st.image, dst_sd = %dst_sd, "destination committed");
        run.emit(Event::TargetReady { op: run.op.clone() });
        Ok(())
    }

    // --- deletion -----------------------------------------------------------------------

    async fn delete_source(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::DeleteSource,
        });
        if !st.source_illegal {
            // The destination is the disk now; the source must not be taken for it, even if
            // its deletion has to wait.
            let c = self
                .reader(&st.src_sd)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            for spec in &st.volumes {
                let vol = VolumeId {
                    sd_id: st.src_sd.clone(),
                    img_id: st.image.clone(),
                    vol_id: spec.vol_id.clone(),
                };
                let v = &vol;
                let r = call!(
                    c,
                    get_volume_info(v.sd_id.clone(), v.img_id.clone(), v.vol_id.clone())
                )
                .await;
                match r {
                    Ok(info) if info.legality == Legality::Legal => {
                        match self.set_illegal(&c, &vol, info.generation).await {
                            Ok(()) => {}
                            Err(Stop::Abandon(m)) => return Err(Stop::Later(m)),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(_) => {}
                    // Already (being) deleted.
                    Err(Error::Api(e))
                        if matches!(
                            e.code,
                            ErrorCode::ImageDoesNotExistInSD | ErrorCode::VolumeDoesNotExist
                        ) => {}
                    Err(e) => return Err(Stop::Later(e.to_string())),
                }
            }
            self.record(Record::SourceIllegal { op: run.op.clone() })
                .await?;
        }
        match self
            .delete_image(run, &st.src_sd, st.policy.wipe, st.policy.discard)
            .await
        {
            Ok(()) => Ok(()),
            Err(Stop::Refused(e)) => Err(Stop::Later(format!(
                "the source could not be deleted and stays ILLEGAL until resume retries: {e}"
            ))),
            Err(Stop::Abandon(m)) => Err(Stop::Later(m)),
            Err(e) => Err(e),
        }
    }

    /// Deletes the operation's image from `sd`, leftovers included. Refused when the agent
    /// refuses before changing anything; Later when a deletion began but did not finish.
    async fn delete_image(&self, run: &Run<'_>, sd: &Uuid, wipe: bool, discard: bool) -> Step {
        let st = self.state(&run.op)?;
        let img = st.image.clone();
        let on = |i: &JobInfo| {
            run.emit(Event::DeleteProgress {
                op: run.op.clone(),
                sd: sd.clone(),
                bytes_done: i.bytes_done,
                bytes_total: i.bytes_total,
                rate_bps: i.rate_bps,
            })
        };

        // A deletion submitted before a crash: settle it first.
        if let Some(d) = st.delete.as_ref().filter(|d| &d.sd == sd && !d.ended) {
            if let Some(c) = self.pool.client(&d.host) {
                if let Ok(info) =
                    follow::follow_plain(&c, &d.job, &self.follow, self.lost_after(), &on).await
                {
                    if info.status == JobStatus::Done {
                        return self.clean_leftovers(run, sd).await;
                    }
                }
            }
        }

        let mut avoid: Vec<String> = Vec::new();
        let mut last = String::new();
        for _ in 0..3 {
            let req = PlacementRequest {
                domains: vec![sd.clone()],
                avoid: avoid.clone(),
                bytes: 0,
            };
            let placement = self
                .pool
                .place(&req)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            let c = placement.client().clone();
            let host = placement.url().to_string();
            let i = &img;
            match call!(c, get_volumes(sd.clone(), i.clone())).await {
                Ok(_) => {}
                Err(Error::Api(e)) if e.code == ErrorCode::ImageDoesNotExistInSD => {
                    return self.clean_leftovers(run, sd).await
                }
                Err(Error::Api(e)) => return Err(Stop::Later(e.to_string())),
                Err(e) => {
                    self.pool.mark_down(&host, &e.to_string());
                    avoid.push(host);
                    last = e.to_string();
                    continue;
                }
            }
            let job = Uuid::new_v4();
            self.record(Record::DeleteSubmit {
                op: run.op.clone(),
                sd: sd.clone(),
                host: host.clone(),
                job: job.clone(),
            })
            .await?;
            run.emit(Event::DeleteSubmitted {
                op: run.op.clone(),
                sd: sd.clone(),
                host: host.clone(),
                job: job.clone(),
            });
            let j = &job;
            let r = call!(
                c,
                delete_image(
                    i.clone(),
                    sd.clone(),
                    Some(Flag(wipe)),
                    None,
                    Some(Flag(discard)),
                    Some(j.clone())
                )
            )
            .await;
            match r {
                // A retry after a lost answer finds the image already renamed: the first
                // attempt went through.
                Ok(_) => {}
                Err(Error::Api(e)) if e.code == ErrorCode::ImageDoesNotExistInSD => {}
                Err(Error::Api(e)) => {
                    self.record(Record::DeleteEnd {
                        op: run.op.clone(),
                        sd: sd.clone(),
                        done: false,
                        error: Some(job_error(&e)),
                    })
                    .await?;
                    run.emit(Event::DeleteEnded {
                        op: run.op.clone(),
                        sd: sd.clone(),
                        done: false,
                        error: Some(e.to_string()),
                    });
                    return Err(Stop::Refused(e));
                }
                Err(e) => {
                    // Maybe done: the next round looks.
                    self.pool.mark_down(&host, &e.to_string());
                    avoid.push(host);
                    last = e.to_string();
                    continue;
                }
            }
            match follow::follow_plain(&c, &job, &self.follow, self.lost_after(), &on).await {
                Ok(info) => {
                    if let Err(e) = job_outcome(&info) {
                        tracing::warn!(op = %run.op, sd = %sd, job = %job, error = %e, "image deletion job failed; finishing its leftovers");
                    }
                }
                // The host went silent while deleting: its job may still be wiping. Finishing the
                // leftovers elsewhere now would race it, so the deletion waits for `resume`, which
                // first asks that host again.
                Err(e) if e.is_transport() => {
                    return Err(Stop::Later(format!(
                        "deletion job {job} on {host} could not be followed: {e}"
                    )))
                }
                Err(e) => {
                    tracing::warn!(op = %run.op, sd = %sd, job = %job, error = %e, "image deletion job lost; finishing its leftovers")
                }
            }
            return self.clean_leftovers(run, sd).await;
        }
        Err(Stop::Later(format!(
            "image {img} on {sd} could not be deleted: {last}"
        )))
    }

    /// Finishes `_remove_me_` leftovers of the operation's image on `sd` (an interrupted or
    /// failed deletion) with `StorageDomain.fix`, and records the deletion done when none remain.
    async fn clean_leftovers(&self, run: &Run<'_>, sd: &Uuid) -> Step {
        let st = self.state(&run.op)?;
        let names = [
            format!("_remove_me_{}", st.image),
            format!("_remove_me_ZERO_{}", st.image),
        ];
        let mut last = String::new();
        for _ in 0..3 {
            let c = self
                .reader(sd)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            let fixes = match call!(c, check_domain(sd.clone())).await {
                Ok(f) => f,
                Err(e) => {
                    if e.is_transport() {
                        self.pool.mark_down(c.url(), &e.to_string());
                    }
                    last = e.to_string();
                    continue;
                }
            };
            let leftover = fixes.into_iter().find(|f| {
                f.data.get("kind").and_then(|k| k.as_str()) == Some("leftover")
                    && f.data
                        .get("name")
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| names.iter().any(|m| m == n))
            });
            let Some(fix) = leftover else {
                self.record(Record::DeleteEnd {
                    op: run.op.clone(),
                    sd: sd.clone(),
                    done: true,
                    error: None,
                })
                .await?;
                run.emit(Event::DeleteEnded {
                    op: run.op.clone(),
                    sd: sd.clone(),
                    done: true,
                    error: None,
                });
                return Ok(());
            };
            let job = Uuid::new_v4();
            self.record(Record::DeleteSubmit {
                op: run.op.clone(),
                sd: sd.clone(),
                host: c.url().into(),
                job: job.clone(),
            })
            .await?;
            run.emit(Event::DeleteSubmitted {
                op: run.op.clone(),
                sd: sd.clone(),
                host: c.url().into(),
                job: job.clone(),
            });
            let (f, j) = (&fix, &job);
            let r = match call!(c, fix_domain(sd.clone(), f.clone(), Some(j.clone()))).await {
                Ok(_) => {
                    follow::follow_plain(&c, &job, &self.follow, self.lost_after(), &|_| {}).await
                }
                Err(e) => Err(e),
            };
            match r.map(|info| job_outcome(&info)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(Error::Api(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        let e = ApiError::new(
            ErrorCode::GeneralException,
            format!("leftovers of image {} remain on {sd}: {last}", st.image),
        );
        self.record(Record::DeleteEnd {
            op: run.op.clone(),
            sd: sd.clone(),
            done: false,
            error: Some(job_error(&e)),
        })
        .await?;
        run.emit(Event::DeleteEnded {
            op: run.op.clone(),
            sd: sd.clone(),
            done: false,
            error: Some(e.to_string()),
        });
        Err(Stop::Later(e.message))
    }

    // --- rollback -----------------------------------------------------------------------

    async fn rollback(&self, run: &Run<'_>, st: &OpState, reason: String) -> Step {
        run.emit(Event::Phase {
            op: run.op.clone(),
            phase: Phase::Rollback,
        });
        run.cancel.store(true, Ordering::Relaxed);
        let dst_sd = st.dst_sd.clone().unwrap_or_else(Uuid::blank);
        // Copies still undecided (after a crash) are stopped and settled first: the
        // destination cannot be deleted under a writer.
        for (vol, copy) in &st.copies {
            if let Some(a) = copy.undecided() {
                let ticket = CopyTicket {
                    host: a.host.clone(),
                    job_id: a.job.clone(),
                    dst: VolumeId {
                        sd_id: dst_sd.clone(),
                        img_id: st.image.clone(),
                        vol_id: vol.clone(),
                    },
                    generation: a.generation,
                };
                let verdict = self.follow_copy(run, &ticket).await?;
                let _ = self.conclude(run, &ticket, verdict).await;
            }
        }
        match self
            .delete_image(run, &dst_sd, st.policy.wipe, st.policy.discard)
            .await
        {
            Ok(()) => self.end(run, Outcome::RolledBack, Some(reason)).await,
            Err(Stop::Refused(e)) => Err(Stop::Later(format!(
                "rolling back ({reason}): the destination could not be deleted yet: {e}"
            ))),
            Err(Stop::Abandon(m)) => Err(Stop::Later(m)),
            Err(e) => Err(e),
        }
    }

    // --- reports ------------------------------------------------------------------------

    fn report(&self, st: &OpState, pending: Option<String>, resumed: bool) -> OpReport {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        let volumes = st
            .volumes
            .iter()
            .map(|spec| {
                let c = st.copies.get(&spec.vol_id).cloned().unwrap_or_default();
                VolumeReport {
                    vol_id: spec.vol_id.clone(),
                    bytes: spec.bytes,
                    attempts: c
                        .attempts
                        .iter()
                        .map(|a| AttemptReport {
                            attempt: a.attempt,
                            host: a.host.clone(),
                            job: a.job.clone(),
                            generation: a.generation,
                            outcome: match (a.done, a.fenced, &a.error) {
                                (None, _, _) => "undecided".into(),
                                (Some(true), _, _) => "done".into(),
                                (Some(false), true, _) => "fenced".into(),
                                (Some(false), false, Some(e)) => {
                                    format!("failed: {} ({})", e.message, e.code)
                                }
                                (Some(false), false, None) => "failed".into(),
                            },
                            seconds: a.ended_ms.map(|e| secs(a.started_ms, e)),
                        })
                        .collect(),
                    generation: c.done_generation,
                    checksum: c.checksum,
                }
            })
            .collect();
        let (outcome, message) = match &st.end {
            Some((o, m)) => (*o, m.clone()),
            None => (Outcome::Pending, pending.or_else(|| st.rollback.clone())),
        };
        let deleted_sd = match st.kind {
            OpKind::Move | OpKind::Delete => Some(&st.src_sd),
            OpKind::Copy => None,
        };
        OpReport {
            op: st.op.clone(),
            kind: st.kind,
            image: st.image.clone(),
            src_sd: st.src_sd.clone(),
            dst_sd: st.dst_sd.clone(),
            outcome,
            message,
            bytes: st.volumes.iter().map(|v| v.bytes).sum(),
            volumes,
            elapsed_s: secs(st.started_ms, st.ended_ms.unwrap_or(now)),
            target_ready_s: st.committed_ms.map(|c| secs(st.started_ms, c)),
            deleted: st
                .delete
                .as_ref()
                .is_some_and(|d| d.done && Some(&d.sd) == deleted_sd),
            resumed,
        }
    }
}

fn fatal(s: Stop) -> Error {
    match s {
        Stop::Fatal(e) => e,
        Stop::Abandon(m) | Stop::Later(m) => Error::Operation(m),
        Stop::Refused(e) => Error::Api(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &Uuid, parent: &Uuid) -> VolumeSpec {
        VolumeSpec {
            vol_id: id.clone(),
            parent: parent.clone(),
            format: VolumeFormat::Cow,
            allocation: Preallocation::Sparse,
            capacity: 1 << 20,
            description: String::new(),
            bytes: 1 << 16,
        }
    }

    #[test]
    fn chains_are_ordered_parents_first() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let vols = vec![spec(&c, &b), spec(&b, &a), spec(&a, &Uuid::blank())];
        let order: Vec<Uuid> = parents_first(vols).into_iter().map(|v| v.vol_id).collect();
        assert_eq!(order, vec![a, b, c]);
        // A parent outside the image does not block.
        let (x, outside) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(parents_first(vec![spec(&x, &outside)]).len(), 1);
    }

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

    #[test]
    fn policy_defaults_and_decoding() {
        let p: MovePolicy = serde_json::from_str("{\"wipe\":true}").unwrap();
        assert!(p.wipe && p.verify && p.max_attempts == 3);
        assert_eq!(MovePolicy::default(), serde_json::from_str("{}").unwrap());
    }
}
