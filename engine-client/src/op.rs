//! What a disk operation is, as the journal stores it: its kind, its caller's policy, the
//! source volumes it found, and how it ended. Plain data with no behaviour of its own, so that
//! both the journal (which records them) and the disk driver (which acts on them) depend on this
//! file and not on each other.

use sdm_proto::{Preallocation, Uuid, VolumeFormat, VolumeInfo};
use serde::{Deserialize, Serialize};

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
    /// Place in its chain (SEQ), which the destination volume keeps. Journals written before
    /// it was recorded read 0, what those moves created the destination with.
    #[serde(default)]
    pub sequence: u64,
}

impl From<&VolumeInfo> for VolumeSpec {
    fn from(info: &VolumeInfo) -> VolumeSpec {
        VolumeSpec {
            vol_id: info.uuid.clone(),
            parent: info.parent.clone(),
            format: info.format,
            allocation: info.allocation,
            capacity: info.capacity.get(),
            description: info.description.clone(),
            bytes: info.apparentsize.get(),
            sequence: info.sequence,
        }
    }
}

/// Orders volumes parents first (a parent outside the list counts as present): the destination
/// creates a layer only after the layer it sits on.
pub fn parents_first(mut vols: Vec<VolumeSpec>) -> Vec<VolumeSpec> {
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
            sequence: 0,
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
    fn policy_defaults_and_decoding() {
        let p: MovePolicy = serde_json::from_str("{\"wipe\":true}").unwrap();
        assert!(p.wipe && p.verify && p.max_attempts == 3);
        assert_eq!(MovePolicy::default(), serde_json::from_str("{}").unwrap());
    }

    #[test]
    fn a_volume_recorded_without_its_sequence_reads_0() {
        let mut v = serde_json::to_value(spec(&Uuid::new_v4(), &Uuid::blank())).unwrap();
        v.as_object_mut().unwrap().remove("sequence");
        let back: VolumeSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back.sequence, 0);
    }
}
