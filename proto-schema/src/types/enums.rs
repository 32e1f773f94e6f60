//! String enumerations of the wire (formats, legality, job states, ...).

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::scalar::truncate_for_message;

// ---------------------------------------------------------------------------------------------
// Enumerations

wire_enum! {
    /// Volume format.
    VolumeFormat { /// Raw bytes.
        Raw = "RAW", /// qcow2.
        Cow = "COW" }
}

wire_enum! {
    /// Allocation policy of a new volume.
    Preallocation { /// Thin: space is allocated on write.
        Sparse = "SPARSE", /// All space is allocated at creation.
        Preallocated = "PREALLOCATED" }
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
        Pending = "pending", /// Running (also while an abort is being carried out).
        Running = "running", /// Finished successfully.
        Done = "done", /// Finished with an error.
        Failed = "failed", /// Stopped by `Job.abort`.
        Aborted = "aborted" }
}

impl JobStatus {
    /// True for pending and running jobs.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

wire_enum! {
    /// qcow2 compatibility level (`qemu-img -o compat=`).
    Qcow2Compat { /// Version 2 (no zero clusters, no feature bits).
        V0_10 = "0.10", /// Version 3, what V5 domains create.
        V1_1 = "1.1" }
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
