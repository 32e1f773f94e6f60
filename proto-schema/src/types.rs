//! Wire types of CONTRACT §3.
//!
//! Decoding is tolerant where engines are known to be loose (booleans as "true"/"false" strings,
//! sizes as decimal strings, `operation` as 1/2 or words, unknown fields ignored) and strict
//! where a loose value could reach the disk: UUIDs must be canonical lowercase before they can
//! ever become a path component, generations must be 0–999, and free text may not carry control
//! characters (it is stored as one `KEY=VALUE` line). A decoding failure is reported by the
//! server as InvalidParameterException (1000).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The largest generation; generations wrap from 999 to 0.
pub const MAX_GENERATION: u16 = 999;
/// Generation distance the engine uses to fence a lost job (G → G+3).
pub const FENCING_GENERATION_DIFF: u16 = 3;
/// The BLANK parent UUID of a volume without a parent.
pub const BLANK_UUID: &str = "00000000-0000-0000-0000-000000000000";
/// Largest size accepted anywhere (2^63 - 1 bytes).
pub const MAX_SIZE: u64 = i64::MAX as u64;
/// Longest description kept in volume metadata, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 210;

// ---------------------------------------------------------------------------------------------
// UUID

/// A canonical lowercase UUID (`8-4-4-4-12` hex). Anything else is refused at decoding time, so
/// a value of this type is always safe to use as a path component.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

impl Uuid {
    /// Parses a canonical lowercase UUID.
    pub fn parse(s: &str) -> Result<Uuid, String> {
        if is_canonical_uuid(s) {
            Ok(Uuid(s.to_string()))
        } else {
            Err(format!(
                "invalid UUID {:?}: expected canonical lowercase 8-4-4-4-12 hex",
                truncate_for_message(s)
            ))
        }
    }

    /// A new random (v4) UUID.
    pub fn new_v4() -> Uuid {
        Uuid(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// The BLANK UUID (no parent).
    pub fn blank() -> Uuid {
        Uuid(BLANK_UUID.to_string())
    }

    /// True for the BLANK UUID.
    pub fn is_blank(&self) -> bool {
        self.0 == BLANK_UUID
    }

    /// The UUID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True if `s` is a canonical lowercase UUID.
pub fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

fn truncate_for_message(s: &str) -> String {
    // Hostile input can be megabytes long; an error message needs only its start.
    s.chars().take(64).collect()
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Uuid {
    type Err = String;
    fn from_str(s: &str) -> Result<Uuid, String> {
        Uuid::parse(s)
    }
}

impl AsRef<std::path::Path> for Uuid {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Uuid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a canonical lowercase UUID string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Uuid, E> {
                Uuid::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl JsonSchema for Uuid {
    fn schema_name() -> Cow<'static, str> {
        "Uuid".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Canonical lowercase UUID",
            "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Loose booleans

/// A boolean that also accepts the strings "true"/"false" in any case, as the engine sends
/// `postZero` and `force`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

impl Flag {
    /// The value.
    pub fn get(self) -> bool {
        self.0
    }
}

impl From<bool> for Flag {
    fn from(b: bool) -> Flag {
        Flag(b)
    }
}

impl Serialize for Flag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(self.0)
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean or the string \"true\"/\"false\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                if v.eq_ignore_ascii_case("true") {
                    Ok(Flag(true))
                } else if v.eq_ignore_ascii_case("false") {
                    Ok(Flag(false))
                } else {
                    Err(E::custom(format!(
                        "invalid boolean {:?}: expected true or false",
                        truncate_for_message(v)
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Flag {
    fn schema_name() -> Cow<'static, str> {
        "Flag".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A boolean; the strings \"true\"/\"false\" (any case) are accepted too",
            "oneOf": [
                {"type": "boolean"},
                {"type": "string", "pattern": "^(?i)(true|false)$"}
            ]
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes

/// A size in bytes, 0 ..= 2^63-1. Accepted as an integer or a decimal string; sent as a decimal
/// string, as VDSM does for `capacity`, `apparentsize` and `truesize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// The value in bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Size {
    fn from(v: u64) -> Size {
        Size(v)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn size_from_u64<E: de::Error>(v: u64) -> Result<u64, E> {
    if v > MAX_SIZE {
        Err(E::custom(format!("size {v} is beyond 2^63-1")))
    } else {
        Ok(v)
    }
}

/// Parses a size given as a decimal string.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid size {:?}: expected a decimal number of bytes",
            truncate_for_message(s)
        ));
    }
    let v: u64 = t
        .parse()
        .map_err(|_| format!("size {t} is beyond 2^63-1"))?;
    if v > MAX_SIZE {
        return Err(format!("size {t} is beyond 2^63-1"));
    }
    Ok(v)
}

/// Parses a size for people: plain bytes, or a number with a binary unit (`K`, `M`, `G`, `T`,
/// optionally followed by `iB` or `B`, any case): `4G`, `512MiB`, `1t`. The one parser for
/// command lines and tools; the wire takes only bytes ([`parse_size`]). Overflow is an error.
pub fn parse_human_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].to_ascii_uppercase());
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "invalid size {:?}: unknown unit (use K, M, G or T)",
                truncate_for_message(s)
            ))
        }
    };
    let n = parse_size(num)?;
    n.checked_mul(1u64 << shift)
        .filter(|v| *v <= MAX_SIZE)
        .ok_or_else(|| format!("size {} is beyond 2^63-1", truncate_for_message(s)))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (integer or decimal string)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                size_from_u64(v).map(Size)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
                    .map(Size)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "size {v} is not an integer number of bytes below 2^63"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes, 0..2^63-1, as an integer or a decimal string (sent as a string)",
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": 9223372036854775807u64},
                {"type": "string", "pattern": "^[0-9]{1,19}$"}
            ]
        })
    }
}

/// A volume capacity: a [`Size`] that must be at least one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Capacity(pub Size);

impl Capacity {
    /// The value in bytes.
    pub fn get(self) -> u64 {
        self.0 .0
    }
}

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Capacity, D::Error> {
        let s = Size::deserialize(d)?;
        if s.0 == 0 {
            return Err(de::Error::custom("capacity must be greater than 0"));
        }
        Ok(Capacity(s))
    }
}

impl JsonSchema for Capacity {
    fn schema_name() -> Cow<'static, str> {
        "Capacity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes, 1..2^63-1, as an integer or a decimal string",
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 9223372036854775807u64},
                {"type": "string", "pattern": "^[0-9]{1,19}$"}
            ]
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Generation

/// A volume generation, 0..=999 (wraps). Accepted as an integer or a decimal string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Generation(pub u16);

impl Generation {
    /// Checks the range.
    pub fn new(v: u64) -> Result<Generation, String> {
        if v > MAX_GENERATION as u64 {
            Err(format!("generation {v} is outside 0-{MAX_GENERATION}"))
        } else {
            Ok(Generation(v as u16))
        }
    }

    /// The next generation, wrapping from 999 to 0.
    pub fn next(self) -> Generation {
        Generation((self.0 + 1) % (MAX_GENERATION + 1))
    }

    /// The value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Generation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Generation, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Generation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a generation 0-999")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Generation, E> {
                Generation::new(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Generation, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("generation {v} is outside 0-{MAX_GENERATION}")))
                    .and_then(|v| Generation::new(v).map_err(E::custom))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Generation, E> {
                Err(E::custom(format!(
                    "generation {v} is not an integer 0-{MAX_GENERATION}"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Generation, E> {
                let n = parse_size(v).map_err(|_| {
                    E::custom(format!("invalid generation {:?}", truncate_for_message(v)))
                })?;
                Generation::new(n).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Generation {
    fn schema_name() -> Cow<'static, str> {
        "Generation".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 0, "maximum": 999,
            "description": "Volume generation; wraps from 999 to 0"})
    }
}

// ---------------------------------------------------------------------------------------------
// Free text

/// A description: any text without control characters (it is stored as one metadata line).
/// Volume metadata keeps at most [`MAX_DESCRIPTION_CHARS`] characters of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(transparent)]
pub struct Description(pub String);

/// Longest description accepted on the wire (bytes); longer ones are refused, not truncated,
/// so a hostile request cannot make the agent hold megabytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

impl Description {
    /// Validates free text.
    pub fn parse(s: &str) -> Result<Description, String> {
        if s.len() > MAX_DESCRIPTION_BYTES {
            return Err(format!(
                "description is {} bytes, more than {MAX_DESCRIPTION_BYTES}",
                s.len()
            ));
        }
        // Controls, and the Unicode line and paragraph separators: oVirt reads metadata with
        // Python's splitlines(), which breaks lines at those too.
        if let Some(c) = s
            .chars()
            .find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        {
            return Err(format!("description contains the control character {c:?}"));
        }
        Ok(Description(s.to_string()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Description, D::Error> {
        let s = String::deserialize(d)?;
        Description::parse(&s).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Enumerations

macro_rules! wire_enum {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// The wire spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(format!(concat!("invalid ", stringify!($name), " {:?}"), s)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

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

// ---------------------------------------------------------------------------------------------
// Objects

/// `SDM.copy_data` endpoint. Only `endpoint_type: "div"` (domain/image/volume) exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Endpoint {
    /// Must be "div".
    pub endpoint_type: EndpointType,
    /// Storage domain.
    pub sd_id: Uuid,
    /// Image.
    pub img_id: Uuid,
    /// Volume.
    pub vol_id: Uuid,
    /// Expected generation of the volume (checked on the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Accepted for compatibility; sdm volumes need no preparation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Flag>,
}

impl Endpoint {
    /// A div endpoint.
    pub fn div(
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
        generation: Option<Generation>,
    ) -> Endpoint {
        Endpoint {
            endpoint_type: EndpointType::Div,
            sd_id,
            img_id,
            vol_id,
            generation,
            prepared: None,
        }
    }
}

wire_enum! {
    /// Endpoint discriminator.
    EndpointType { /// Domain, image, volume.
        Div = "div" }
}

/// Which volume `SDM.update_volume` changes, and its expected generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeRef {
    /// Storage domain.
    pub sd_id: Uuid,
    /// Image.
    pub img_id: Uuid,
    /// Volume.
    pub vol_id: Uuid,
    /// Must equal the volume's generation (a missing value never matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
}

/// Attributes `SDM.update_volume` sets; at least one must be given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeAttributes {
    /// New legality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legality: Option<Legality>,
    /// New description (cut to 210 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
    /// New generation; without it the generation goes up by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Only SHARED is allowed (a parentless LEAF becomes a template).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub role: Option<VolumeRole>,
}

impl VolumeAttributes {
    /// True when no attribute is set.
    pub fn is_empty(&self) -> bool {
        self.legality.is_none()
            && self.description.is_none()
            && self.generation.is_none()
            && self.role.is_none()
    }
}

/// The result a finished job may carry (`Volume.checksum`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    /// Lowercase hex digest.
    pub checksum: String,
    /// "sha256".
    pub algorithm: ChecksumAlgorithm,
}

/// A host job as `Host.getJobs` and `Job.subscribe` report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobInfo {
    /// The job id the caller chose.
    pub id: Uuid,
    /// State.
    pub status: JobStatus,
    /// What the job does (its verb, e.g. "copy_data").
    pub description: String,
    /// Always "storage".
    pub job_type: String,
    /// Percent done, 0–100, a float; omitted until the job has started its work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Why the job failed or was aborted; omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::JobError>,
    /// Logical bytes processed so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Logical bytes the job will process.
    #[serde(default)]
    pub bytes_total: u64,
    /// Current rate, bytes per second.
    #[serde(default)]
    pub rate_bps: u64,
    /// Estimated seconds left; omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// True once `Job.abort` was accepted and the job is winding down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborting: bool,
    /// Result of a finished job that has one (`Volume.checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
}

/// `Host.getCapabilities` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    /// Agent version.
    pub version: String,
    /// This host's id in lockspaces (1–2000).
    pub host_id: u64,
    /// True when the data path runs on io_uring (false: the synchronous fallback).
    pub io_uring: bool,
    /// Why io_uring is not used, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_fallback_reason: Option<String>,
    /// Lease backends this agent can use ("local", "sanlock").
    pub lease_backends: Vec<String>,
    /// Attached storage domains.
    pub domains: Vec<Uuid>,
}

/// `Host.getStats` result: what a scheduler needs to pick a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostStats {
    /// Jobs running now.
    pub jobs_running: u64,
    /// Jobs registered and waiting to run.
    pub jobs_pending: u64,
    /// Data-path read rate over the last seconds, bytes per second.
    pub read_bps: u64,
    /// Data-path write rate over the last seconds, bytes per second.
    pub write_bps: u64,
    /// Jobs the agent runs at once before queueing.
    pub max_running_jobs: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Resident memory of the agent, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors of the agent.
    pub open_fds: u64,
}

/// `StorageDomain.list` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DomainInfo {
    /// Domain id.
    pub sd_id: Uuid,
    /// The domain directory, `.../<sd_id>`.
    pub path: String,
    /// "file".
    pub kind: String,
    /// Domain description.
    pub description: String,
    /// Size of the file system holding the domain.
    pub capacity: Size,
    /// Free space on it.
    pub free: Size,
    /// Lease backend used for its volumes ("local" or "sanlock").
    pub lease_backend: String,
    /// Domain format version (5).
    pub version: u32,
}

/// `StorageDomain.attach` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttachResult {
    /// The attached domain.
    pub sd_id: Uuid,
}

/// `Image.move` / `Image.delete` / `StorageDomain.fix` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRef {
    /// The job that carries the work.
    pub uuid: Uuid,
}

/// Lease state of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseInfo {
    /// The lease file.
    pub path: String,
    /// Offset of the lease in it.
    pub offset: u64,
    /// Host ids holding it; empty when free.
    pub owners: Vec<u64>,
    /// Lease version (sanlock lver); null when not known.
    pub version: Option<u64>,
}

/// `Volume.getInfo` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeInfo {
    /// Volume id.
    pub uuid: Uuid,
    /// Image id.
    pub image: Uuid,
    /// Domain id.
    pub domain: Uuid,
    /// RAW or COW.
    pub format: VolumeFormat,
    /// SPARSE or PREALLOCATED.
    #[serde(rename = "type")]
    pub allocation: Preallocation,
    /// LEAF, INTERNAL or SHARED.
    pub voltype: VolumeRole,
    /// Virtual size in bytes.
    pub capacity: Size,
    /// File size in bytes.
    pub apparentsize: Size,
    /// Allocated bytes.
    pub truesize: Size,
    /// Parent volume, or the BLANK UUID.
    pub parent: Uuid,
    /// Description.
    pub description: String,
    /// Disk type (DATA, ...).
    pub disktype: String,
    /// Creation time, seconds since the epoch.
    pub ctime: u64,
    /// LEGAL, ILLEGAL or FAKE.
    pub legality: Legality,
    /// Generation 0–999.
    pub generation: u16,
    /// Metadata write sequence number.
    pub sequence: u64,
    /// OK, or ILLEGAL when the legality is ILLEGAL, or INVALID.
    pub status: String,
    /// Volume lease.
    pub lease: LeaseInfo,
}

/// A `StorageDomain.check` finding; send it back unchanged to `StorageDomain.fix`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Fix {
    /// clean, mend or optimize.
    #[serde(rename = "type")]
    pub fix_type: FixType,
    /// What was found, for a person.
    pub description: String,
    /// Opaque data the agent needs to act; do not change it.
    pub data: serde_json::Value,
}

/// Result map of `Host.getJobs`.
pub type JobMap = BTreeMap<Uuid, JobInfo>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_sizes() {
        assert_eq!(parse_human_size("4096"), Ok(4096));
        assert_eq!(parse_human_size("4K"), Ok(4096));
        assert_eq!(parse_human_size(" 512MiB "), Ok(512 << 20));
        assert_eq!(parse_human_size("1g"), Ok(1 << 30));
        assert_eq!(parse_human_size("2TB"), Ok(2 << 40));
        assert_eq!(parse_human_size("3 M"), Ok(3 << 20));
        assert!(parse_human_size("1X").is_err());
        assert!(parse_human_size("G").is_err());
        assert!(parse_human_size("-1G").is_err());
        assert!(parse_human_size("1.5G").is_err());
        assert!(parse_human_size("9000000T").unwrap_err().contains("beyond"));
        assert!(parse_human_size("8388608T").is_err()); // 2^63 exactly
        assert_eq!(parse_human_size("8388607T"), Ok(8388607u64 << 40));
    }

    #[test]
    fn uuid_is_strict() {
        assert!(
            serde_json::from_value::<Uuid>(json!("5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60")).is_ok()
        );
        for bad in [
            "",
            "../../etc",
            "a/b",
            "5F7D1F2E-29A6-4F0B-9A35-1C2B3D4E5F60",
            "5f7d1f2e29a64f0b9a351c2b3d4e5f60",
            "{5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60}",
            "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f6g",
            "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60\n",
        ] {
            assert!(
                serde_json::from_value::<Uuid>(json!(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_value::<Uuid>(json!(5)).is_err());
    }

    #[test]
    fn flag_accepts_strings() {
        for (v, want) in [
            (json!(true), true),
            (json!("TRUE"), true),
            (json!("false"), false),
            (json!("False"), false),
        ] {
            assert_eq!(serde_json::from_value::<Flag>(v).unwrap().0, want);
        }
        assert!(serde_json::from_value::<Flag>(json!("yes")).is_err());
        assert!(serde_json::from_value::<Flag>(json!(1)).is_err());
    }

    #[test]
    fn sizes_accept_strings_and_refuse_overflow() {
        assert_eq!(
            serde_json::from_value::<Size>(json!("1073741824"))
                .unwrap()
                .0,
            1 << 30
        );
        assert_eq!(serde_json::from_value::<Size>(json!(4096)).unwrap().0, 4096);
        assert_eq!(serde_json::to_value(Size(5)).unwrap(), json!("5"));
        for bad in [
            json!(-1),
            json!("-1"),
            json!("1e9"),
            json!(1.5),
            json!("9223372036854775808"),
            json!(9223372036854775808u64),
            json!("abc"),
            json!(""),
            json!(null),
            json!(1e30),
        ] {
            assert!(
                serde_json::from_value::<Size>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_value::<Capacity>(json!(0)).is_err());
        assert!(serde_json::from_value::<Capacity>(json!("0")).is_err());
    }

    #[test]
    fn generation_range_and_wrap() {
        assert_eq!(
            serde_json::from_value::<Generation>(json!(999)).unwrap().0,
            999
        );
        assert!(serde_json::from_value::<Generation>(json!(1000)).is_err());
        assert!(serde_json::from_value::<Generation>(json!(-1)).is_err());
        assert_eq!(Generation(999).next(), Generation(0));
        assert_eq!(Generation(4).next(), Generation(5));
    }

    #[test]
    fn operation_words_and_numbers() {
        assert_eq!(
            serde_json::from_value::<ImageOperation>(json!(1)).unwrap(),
            ImageOperation::Copy
        );
        assert_eq!(
            serde_json::from_value::<ImageOperation>(json!("MOVE")).unwrap(),
            ImageOperation::Move
        );
        assert!(serde_json::from_value::<ImageOperation>(json!(0)).is_err());
        assert!(serde_json::from_value::<ImageOperation>(json!(3)).is_err());
    }

    #[test]
    fn description_refuses_control_characters() {
        assert!(serde_json::from_value::<Description>(json!("disk {\"a\":1}")).is_ok());
        assert!(serde_json::from_value::<Description>(json!("a\nLEGALITY=LEGAL")).is_err());
        assert!(serde_json::from_value::<Description>(json!("a\u{0}b")).is_err());
        assert!(serde_json::from_value::<Description>(json!("a\u{2028}b")).is_err());
        assert!(serde_json::from_value::<Description>(json!("a\u{85}b")).is_err());
    }

    #[test]
    fn endpoint_ignores_unknown_fields_and_checks_type() {
        let e: Endpoint = serde_json::from_value(json!({
            "endpoint_type": "div", "sd_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60",
            "img_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f61", "vol_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f62",
            "prepared": "false", "legal": true, "generation": 3
        })).unwrap();
        assert_eq!(e.generation, Some(Generation(3)));
        let bad = serde_json::from_value::<Endpoint>(json!({
            "endpoint_type": "external", "sd_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60",
            "img_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f61", "vol_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f62"
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn job_info_omits_absent_progress_and_error() {
        let info = JobInfo {
            id: Uuid::new_v4(),
            status: JobStatus::Pending,
            description: "copy_data".into(),
            job_type: "storage".into(),
            progress: None,
            error: None,
            bytes_done: 0,
            bytes_total: 0,
            rate_bps: 0,
            eta_s: None,
            aborting: false,
            result: None,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert!(
            v.get("progress").is_none() && v.get("error").is_none() && v.get("aborting").is_none()
        );
        let with = JobInfo {
            progress: Some(100.0),
            ..info
        };
        assert!(serde_json::to_value(&with).unwrap()["progress"].is_f64());
    }
}
