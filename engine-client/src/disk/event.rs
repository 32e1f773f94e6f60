//! What a disk operation tells its caller as it goes: [`Event`]s to an [`EventSink`]. Every
//! step the journal records is announced right after it is recorded ([`Event::announcing`]),
//! never before.

use sdm_proto::Uuid;
use serde::{Deserialize, Serialize};

use crate::follow::Decision;
use crate::journal::Record;
use crate::op::{OpKind, Outcome, VolumeSpec};

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
    /// The operation was taken over from another engine, whose lease had expired or which
    /// released it (`resume` with a shared journal).
    TakenOver {
        /// Operation id.
        op: Uuid,
        /// The engine that held it.
        from: String,
        /// The ownership epoch this engine now holds.
        epoch: u64,
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
        /// Where the attempt's copy started on its host, when it said.
        start: Option<super::report::CopyStartReport>,
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

impl Event {
    /// The event that announces `rec` once it is recorded, if the record is one callers see.
    /// `copy_host` is the host of a copy's verdict (its record names the job, not the host);
    /// other records name their host themselves.
    pub fn announcing(rec: &Record, copy_host: &str) -> Option<Event> {
        let text =
            |e: &Option<sdm_proto::JobError>| e.as_ref().map(|e| e.to_api_error().to_string());
        Some(match rec.clone() {
            Record::CopySubmit {
                op,
                vol,
                host,
                job,
                generation,
                attempt,
            } => Event::CopySubmitted {
                op,
                vol,
                host,
                job,
                generation,
                attempt,
            },
            Record::CopyEnd {
                op,
                vol,
                done,
                fenced,
                ref error,
                ref start,
                ..
            } => Event::CopyEnded {
                op,
                vol,
                host: copy_host.to_string(),
                done,
                fenced,
                error: text(error),
                start: start.as_ref().map(Into::into),
            },
            Record::Verified { op, vol, checksum } => Event::Verified { op, vol, checksum },
            Record::Commit { op } => Event::TargetReady { op },
            Record::DeleteSubmit { op, sd, host, job } => {
                Event::DeleteSubmitted { op, sd, host, job }
            }
            Record::DeleteEnd {
                op,
                sd,
                done,
                ref error,
            } => Event::DeleteEnded {
                op,
                sd,
                done,
                error: text(error),
            },
            Record::Begin { .. }
            | Record::Cloned { .. }
            | Record::SourceIllegal { .. }
            | Record::Rollback { .. }
            | Record::End { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdm_proto::{ApiError, ErrorCode, JobError};

    #[test]
    fn a_recorded_failure_is_announced_in_the_agents_words() {
        let e = ApiError::new(ErrorCode::NoSpaceLeftOnDomain, "full");
        let (op, vol, job) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let rec = Record::CopyEnd {
            op: op.clone(),
            vol: vol.clone(),
            job,
            done: false,
            generation: None,
            fenced: false,
            error: Some(JobError::from(&e)),
            start: None,
        };
        let Some(Event::CopyEnded {
            host, error, done, ..
        }) = Event::announcing(&rec, "http://h:1")
        else {
            panic!("a copy verdict is announced")
        };
        assert_eq!((host.as_str(), done), ("http://h:1", false));
        assert_eq!(error, Some(e.to_string()));
        assert!(Event::announcing(&Record::Cloned { op }, "").is_none());
    }
}
