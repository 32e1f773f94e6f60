//! The records of the journal: one per phase of a disk operation, written before the phase
//! acts, and the [`Entry`] that stores each with its version and time.

use sdm_proto::{CopyStart, JobError, Uuid};
use serde::{Deserialize, Serialize};

use crate::op::{MovePolicy, OpKind, Outcome, VolumeSpec};

/// Version written in every record.
pub const JOURNAL_VERSION: u32 = 1;

/// One journal record. Every record names its operation; `Begin` must come first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An operation starts: everything needed to finish or undo it.
    Begin {
        /// Operation id.
        op: Uuid,
        /// What it does.
        kind: OpKind,
        /// The image.
        image: Uuid,
        /// Source domain (the domain deleted from, for a delete).
        src_sd: Uuid,
        /// Destination domain (copies and moves).
        dst_sd: Option<Uuid>,
        /// The caller's policy.
        policy: MovePolicy,
        /// The source's volumes, parents first.
        volumes: Vec<VolumeSpec>,
    },
    /// The destination's structure exists (every volume created and ILLEGAL).
    Cloned {
        /// Operation id.
        op: Uuid,
    },
    /// A copy of one volume is about to be submitted.
    CopySubmit {
        /// Operation id.
        op: Uuid,
        /// The volume.
        vol: Uuid,
        /// URL of the host it goes to.
        host: String,
        /// The job id.
        job: Uuid,
        /// The destination's generation just before submitting (`G`).
        generation: u16,
        /// 1 for the first attempt of this volume.
        attempt: u32,
    },
    /// A copy attempt reached its verdict.
    CopyEnd {
        /// Operation id.
        op: Uuid,
        /// The volume.
        vol: Uuid,
        /// The job id.
        job: Uuid,
        /// The copy committed.
        done: bool,
        /// The destination's generation after a successful copy.
        generation: Option<u16>,
        /// The job was lost and its destination fenced.
        fenced: bool,
        /// Why it failed.
        error: Option<JobError>,
        /// Where the attempt's copy started on its host (resumed from a checkpoint or a full
        /// copy), as its job status last said; absent when the host never said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start: Option<CopyStart>,
    },
    /// A volume's source and destination checksums are equal.
    Verified {
        /// Operation id.
        op: Uuid,
        /// The volume.
        vol: Uuid,
        /// The common SHA-256.
        checksum: String,
    },
    /// The commit point: every destination volume is LEGAL at its copy's generation (and
    /// verified when asked). From here on the destination is the disk.
    Commit {
        /// Operation id.
        op: Uuid,
    },
    /// Every source volume was marked ILLEGAL (a move, after its commit).
    SourceIllegal {
        /// Operation id.
        op: Uuid,
    },
    /// An image deletion is about to be submitted (the source of a move, the image of a
    /// delete, or the destination of a rollback).
    DeleteSubmit {
        /// Operation id.
        op: Uuid,
        /// Domain deleted from.
        sd: Uuid,
        /// URL of the host it goes to.
        host: String,
        /// The job id.
        job: Uuid,
    },
    /// A deletion ended.
    DeleteEnd {
        /// Operation id.
        op: Uuid,
        /// Domain deleted from.
        sd: Uuid,
        /// The image is gone from the domain, leftovers included.
        done: bool,
        /// Why not.
        error: Option<JobError>,
    },
    /// The operation will be undone (its destination deleted); written before undoing.
    Rollback {
        /// Operation id.
        op: Uuid,
        /// Why.
        reason: String,
    },
    /// The operation is over; nothing is left to do for it.
    End {
        /// Operation id.
        op: Uuid,
        /// How it ended.
        outcome: Outcome,
        /// Details.
        message: Option<String>,
    },
}

impl Record {
    /// The operation the record belongs to.
    pub fn op(&self) -> &Uuid {
        match self {
            Record::Begin { op, .. }
            | Record::Cloned { op }
            | Record::CopySubmit { op, .. }
            | Record::CopyEnd { op, .. }
            | Record::Verified { op, .. }
            | Record::Commit { op }
            | Record::SourceIllegal { op }
            | Record::DeleteSubmit { op, .. }
            | Record::DeleteEnd { op, .. }
            | Record::Rollback { op, .. }
            | Record::End { op, .. } => op,
        }
    }

    /// The record type's name, as written.
    pub fn name(&self) -> &'static str {
        match self {
            Record::Begin { .. } => "begin",
            Record::Cloned { .. } => "cloned",
            Record::CopySubmit { .. } => "copy_submit",
            Record::CopyEnd { .. } => "copy_end",
            Record::Verified { .. } => "verified",
            Record::Commit { .. } => "commit",
            Record::SourceIllegal { .. } => "source_illegal",
            Record::DeleteSubmit { .. } => "delete_submit",
            Record::DeleteEnd { .. } => "delete_end",
            Record::Rollback { .. } => "rollback",
            Record::End { .. } => "end",
        }
    }
}

/// A record with its version and time, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version.
    pub v: u32,
    /// Milliseconds since the epoch when it was appended.
    pub at_ms: u64,
    /// The record.
    pub rec: Record,
}

/// Milliseconds since the epoch: the clock of [`Entry::at_ms`], and of every duration derived
/// from entries.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `Begin` of a one-volume move, for tests.
#[cfg(test)]
pub(super) fn sample_begin(op: &Uuid) -> Record {
    Record::Begin {
        op: op.clone(),
        kind: OpKind::Move,
        image: Uuid::new_v4(),
        src_sd: Uuid::new_v4(),
        dst_sd: Some(Uuid::new_v4()),
        policy: MovePolicy::default(),
        volumes: vec![VolumeSpec {
            vol_id: Uuid::new_v4(),
            parent: Uuid::blank(),
            format: sdm_proto::VolumeFormat::Raw,
            allocation: sdm_proto::Preallocation::Sparse,
            capacity: 1 << 20,
            description: "d".into(),
            bytes: 1 << 20,
            sequence: 2,
        }],
    }
}
