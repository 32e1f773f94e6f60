//! Data operations that run as host jobs: `SDM.copy_data` (with format conversion),
//! `SDM.update_volume`, `SDM.merge`, `SDM.amend_volume`, `SDM.sparsify_volume`, the bitmap
//! verbs, `Volume.checksum`, and (with the image verbs) garbage collection of deletion
//! leftovers.
//!
//! Each verb validates its parameters and registers its job before returning, so a malformed
//! request registers nothing and a duplicate job id is refused at once; everything that depends
//! on the state of storage (generation, legality, leases) is checked inside the job and fails
//! the job, as VDSM does.

pub mod amend;
pub mod bitmaps;
pub mod chain;
pub mod check;
pub mod checksum;
pub mod convert;
pub mod copy_data;
pub mod gc;
pub mod image;
pub mod image_status;
pub mod lease_watch;
pub mod merge;
pub mod move_plan;
pub mod outcome;
pub mod purge;
pub mod resume;
pub mod sparsify;
pub mod update_volume;
pub mod volume_job;

use std::sync::Arc;
use std::time::Duration;

use sdm_proto::{ApiError, ErrorCode, Flag, JobResult, Uuid};

use crate::error::AgentError;
use crate::jobs::{Job, Work};
use crate::locks::{LockError, LockSet, Mode};
use crate::service::Agent;

/// How long a job waits for its in-process locks before failing.
pub const JOB_LOCK_TIMEOUT: Duration = Duration::from_secs(3600);

/// The work of a job as the ops write it (their errors convert into wire errors when it ends).
pub fn work(
    f: impl FnOnce(&Arc<Job>) -> Result<Option<JobResult>, AgentError> + Send + 'static,
) -> Work {
    Box::new(move |job| f(job).map_err(ApiError::from))
}

/// Registers `job_id` and starts `f` as its job, once a data-path slot is free.
pub fn spawn_job(
    agent: &Arc<Agent>,
    job_id: &Uuid,
    description: &str,
    f: impl FnOnce(&Arc<Job>) -> Result<Option<JobResult>, AgentError> + Send + 'static,
) -> Result<(), AgentError> {
    spawn(agent, job_id, description, true, work(f))
}

/// Registers and starts a metadata-only job that does not wait for a data-path slot.
pub fn spawn_metadata_job(
    agent: &Arc<Agent>,
    job_id: &Uuid,
    description: &str,
    f: impl FnOnce(&Arc<Job>) -> Result<Option<JobResult>, AgentError> + Send + 'static,
) -> Result<(), AgentError> {
    spawn(agent, job_id, description, false, work(f))
}

fn spawn(
    agent: &Arc<Agent>,
    job_id: &Uuid,
    description: &str,
    queued: bool,
    work: Work,
) -> Result<(), AgentError> {
    let job = agent.jobs.register(job_id, description)?;
    if queued {
        agent.jobs.start(job, work);
    } else {
        agent.jobs.start_unqueued(job, work);
    }
    Ok(())
}

/// Takes a job's locks, waiting while other jobs hold them, giving up if the job is aborted.
pub fn lock_for_job(
    agent: &Agent,
    job: &Job,
    wanted: &[(String, Mode)],
) -> Result<LockSet, AgentError> {
    agent
        .locks
        .lock(wanted, JOB_LOCK_TIMEOUT, &|| job.is_aborting())
        .map_err(|e| match e {
            LockError::Stopped(_) => ApiError::new(
                ErrorCode::ActionStopped,
                "job aborted while waiting for locks",
            )
            .into(),
            e => e.into(),
        })
}

/// The value of an optional wire flag (absent: false).
pub fn flag(f: Option<Flag>) -> bool {
    f.is_some_and(Flag::get)
}

/// Fails with ActionStopped if the job was aborted, with the fence reason (AcquireLockFailure)
/// if it was stopped because a lease it holds was lost.
pub fn check_abort(job: &Job) -> Result<(), ApiError> {
    if let Some(why) = job.fenced() {
        Err(why.clone())
    } else if job.is_aborting() {
        Err(ApiError::new(ErrorCode::ActionStopped, "job aborted"))
    } else {
        Ok(())
    }
}

/// Runs `f` over `items` with at most `n` at once (scoped threads; each IO call makes its own
/// ring on its own thread).
pub fn run_parallel<T: Send, R: Send>(
    n: usize,
    items: Vec<T>,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    // Taken from the back: reversed, so items start in the order given (a move's chain
    // parents first, which is its stage order).
    let queue = std::sync::Mutex::new(items.into_iter().enumerate().rev().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((i, item)) = next else { break };
                let r = f(item);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, r));
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, r)| r).collect()
}
