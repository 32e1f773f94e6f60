//! String enumerations of the wire (formats, legality, job states, ...).

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::scalar::truncate_for_message;

// ---------------------------------------------------------------------------------------------
// Enumerations

coded_wire_enum! {
    /// Volume format (VDSM's codes: 5 RAW, 4 COW).
    VolumeFormat { /// Raw bytes.
        Raw = "RAW" / 5, /// qcow2.
        Cow = "COW" / 4 }
}

coded_wire_enum! {
    /// Allocation policy of a new volume (VDSM's codes: 2 SPARSE, 1 PREALLOCATED).
    Preallocation { /// Thin: space is allocated on write.
        Sparse = "SPARSE" / 2, /// All space is allocated at creation.
        Preallocated = "PREALLOCATED" / 1 }
}

wire_enum! {
    /// Role of a volume in its chain.
    VolumeRole { /// The active top of a chain.
        Leaf = "LEAF", /// A parent of another volume.
        Internal = "INTERNAL", /// A template volume shared by several images.
        Shared = "SHARED" }
}

wire_enum! {
    /// Whether a volume's content can be trusted.
    Legality { /// Complete and consistent.
        Legal = "LEGAL", /// Being written, or the last write did not finish.
        Illegal = "ILLEGAL", /// A placeholder (oVirt); never written by sdm.
        Fake = "FAKE" }
}

wire_enum! {
    /// Public job states.
    JobStatus { /// Registered, not started.
        Pending = "pending", /// Running.
        Running = "running", /// Running, winding down after `Job.abort` (as VDSM reports it).
        Aborting = "aborting", /// Finished successfully.
        Done = "done", /// Finished with an error.
        Failed = "failed", /// Stopped by `Job.abort`.
        Aborted = "aborted" }
}

impl JobStatus {
    /// True for pending, running and aborting jobs.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Running | JobStatus::Aborting
        )
    }
}

wire_enum! {
    /// Lease backend of a domain's volumes. A domain has one, recorded in its metadata when it
    /// is formatted (VDSM's domain TYPE: LOCALFS uses local locks, the shared types sanlock).
    LeaseBackendName { /// OFD locks: one host only.
        Local = "local", /// sanlock: shared storage, several hosts.
        Sanlock = "sanlock" }
}

wire_enum! {
    /// Content of a volume, as VDSM's `diskType` names it (written as DISKTYPE).
    DiskType { /// Data disk.
        Data = "DATA", /// ISO image.
        Isof = "ISOF", /// Memory dump.
        Memd = "MEMD", /// Memory metadata.
        Memm = "MEMM", /// OVF store.
        Ovfs = "OVFS", /// Hosted engine VM disk.
        Hevd = "HEVD", /// Hosted engine sanlock disk.
        Hesd = "HESD", /// Hosted engine metadata disk.
        Hemd = "HEMD", /// Hosted engine configuration image.
        Heci = "HECI", /// VM backup scratch disk.
        Scrd = "SCRD", /// Data disk of engines before 4.2.
        LegacyData = "2", /// Data disk written by virt-v2v.
        LegacyV2vData = "1" }
}

wire_enum! {
    /// State of a VDSM SPM task, as `Task.getStatus` reports a job.
    TaskState { /// Pending or running.
        Running = "running", /// Winding down after `Task.stop`.
        Aborting = "aborting", /// Ended (see `taskResult`).
        Finished = "finished" }
}

wire_enum! {
    /// Result of a VDSM SPM task.
    TaskResult { /// Still running.
        None = "", /// Done.
        Success = "success", /// Failed or stopped, and cleaned up.
        CleanSuccess = "cleanSuccess" }
}

wire_enum! {
    /// Kind of a `StorageDomain.check` finding.
    FixType { /// Remove something left over.
        Clean = "clean", /// Repair an inconsistency.
        Mend = "mend", /// Reclaim space or tidy up.
        Optimize = "optimize" }
}

/// `Image.move` operation: 1 or "copy" (supported), 2 or "move" (refused with
/// UnsupportedOperation: move is copy, then delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOperation {
    /// Copy the image, keep the source.
    Copy,
    /// Copy, then delete the source (not supported by sdm).
    Move,
}

impl Serialize for ImageOperation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match self {
            ImageOperation::Copy => 1,
            ImageOperation::Move => 2,
        })
    }
}

impl<'de> Deserialize<'de> for ImageOperation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ImageOperation, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ImageOperation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("1, 2, \"copy\" or \"move\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ImageOperation, E> {
                match v {
                    1 => Ok(ImageOperation::Copy),
                    2 => Ok(ImageOperation::Move),
                    _ => Err(E::custom(format!(
                        "invalid operation {v}: expected 1 (copy) or 2 (move)"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ImageOperation, E> {
                Err(E::custom(format!(
                    "invalid operation {v}: expected 1 (copy) or 2 (move)"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ImageOperation, E> {
                match v.to_ascii_lowercase().as_str() {
                    "copy" | "1" => Ok(ImageOperation::Copy),
                    "move" | "2" => Ok(ImageOperation::Move),
                    _ => Err(E::custom(format!(
                        "invalid operation {:?}: expected \"copy\" or \"move\"",
                        truncate_for_message(v)
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ImageOperation {
    fn schema_name() -> Cow<'static, str> {
        "ImageOperation".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "1 or \"copy\" (supported); 2 or \"move\" (UnsupportedOperation)",
            "oneOf": [
                {"type": "integer", "enum": [1, 2]},
                {"type": "string", "pattern": "^(?i)(copy|move)$"}
            ]
        })
    }
}

/// The checksum algorithm of `Volume.checksum` (only sha256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ChecksumAlgorithm {
    /// SHA-256 of the volume's raw bytes, as `sha256sum` prints it.
    #[serde(rename = "sha256")]
    Sha256,
}
