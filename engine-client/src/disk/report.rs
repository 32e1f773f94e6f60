//! What a disk operation returns: an [`OpReport`] built from the journal's state of the
//! operation.

use sdm_proto::Uuid;
use serde::Serialize;

use crate::error::Error;
use crate::journal::{now_ms, OpState};
use crate::op::{OpKind, Outcome};

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
    /// Where its copy started on the host: resumed from an earlier attempt's checkpoint, or
    /// a full copy and why (None: the host never said, e.g. an older agent or a lost job).
    pub start: Option<CopyStartReport>,
}

/// Where a copy attempt started, as the agent's job status said (`JobInfo::copies`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "start", rename_all = "snake_case")]
pub enum CopyStartReport {
    /// The destination's first `from` bytes were kept from an earlier attempt.
    Resumed {
        /// Bytes kept.
        from: u64,
        /// Bytes of the whole copy.
        total: u64,
    },
    /// Copied from 0.
    Full {
        /// Why no checkpoint was used ("no checkpoint", or why it was not trusted).
        reason: String,
    },
}

impl From<&sdm_proto::CopyStart> for CopyStartReport {
    fn from(c: &sdm_proto::CopyStart) -> CopyStartReport {
        match (&c.full_copy_reason, c.resumed_from) {
            (None, from) if from > 0 => CopyStartReport::Resumed {
                from,
                total: c.bytes_total,
            },
            (Some(reason), _) => CopyStartReport::Full {
                reason: reason.clone(),
            },
            (None, _) => CopyStartReport::Full {
                reason: "nothing to keep".into(),
            },
        }
    }
}

impl std::fmt::Display for CopyStartReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyStartReport::Resumed { from, total } => {
                write!(f, "resumed from {from} of {total} bytes")
            }
            CopyStartReport::Full { reason } => write!(f, "full copy: {reason}"),
        }
    }
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

/// The report of an operation as the journal knows it; `pending`: why it stays in the journal,
/// when it does.
pub(super) fn report(st: &OpState, pending: Option<String>, resumed: bool) -> OpReport {
    let now = now_ms();
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
                        start: a.start.as_ref().map(Into::into),
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
