//! What following reports to the caller: each cycle's [`Decision`] and the final [`Verdict`].

use sdm_proto::{ApiError, JobInfo, Uuid};
use serde::Serialize;

/// What one cycle of following found and decided; reported to the caller as it happens.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The host reported the job.
    Job {
        /// Its info.
        info: JobInfo,
    },
    /// The job's host did not answer.
    HostUnreachable {
        /// Host URL.
        host: String,
        /// Why.
        error: String,
    },
    /// The job's host answered but does not know the job.
    JobMissing {
        /// Host URL.
        host: String,
    },
    /// No healthy host could read the destination volume; nothing is decided this cycle.
    NoObserver {
        /// Why.
        error: String,
    },
    /// The destination's lease is held: still running.
    LeaseHeld {
        /// Host that read the volume.
        via: String,
        /// Generation seen.
        generation: u16,
    },
    /// The destination is at G+1: done.
    GenerationDone {
        /// Host that read the volume.
        via: String,
        /// Generation seen.
        generation: u16,
    },
    /// The destination is at G+3: fenced, failed.
    GenerationFenced {
        /// Host that read the volume.
        via: String,
        /// Generation seen.
        generation: u16,
    },
    /// Neither: fencing the destination.
    Fencing {
        /// Host running the fence.
        via: String,
        /// The fencing job.
        fence_job: Uuid,
        /// Generation seen (`G`).
        from: u16,
        /// Generation set (`G+3`).
        to: u16,
    },
    /// The fencing job ended (its outcome only informs; the next cycle decides).
    FenceEnded {
        /// Host that ran it.
        via: String,
        /// The fencing job.
        fence_job: Uuid,
        /// "done", or the error.
        outcome: String,
    },
    /// The caller cancelled: `Job.abort` was sent; following goes on until a verdict.
    Aborting {
        /// Host URL.
        host: String,
    },
}

/// How a followed copy ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The destination holds the copy at `generation` (G+1).
    Done {
        /// The destination's generation now.
        generation: u16,
    },
    /// The copy failed, or was lost and fenced.
    Failed {
        /// Why.
        error: ApiError,
        /// The destination was found fenced (its job was lost).
        fenced: bool,
    },
}
