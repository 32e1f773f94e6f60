//! Scalars: UUIDs, flags, sizes, generations and descriptions.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{BLANK_UUID, MAX_GENERATION, MAX_SIZE};

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

pub(crate) fn truncate_for_message(s: &str) -> String {
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

/// A time in seconds since the epoch, sent as a decimal string as VDSM sends `ctime` and
/// `mtime`; accepted as an integer or a decimal string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        Size::deserialize(d).map(|s| Timestamp(s.0))
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Seconds since the epoch, as a decimal string",
            "type": "string",
            "pattern": "^[0-9]{1,19}$"
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
        self.advance(1)
    }

    /// `n` generations on, wrapping after 999 as the agent's generations do.
    pub fn advance(self, n: u16) -> Generation {
        Generation(((u32::from(self.0) + u32::from(n)) % (u32::from(MAX_GENERATION) + 1)) as u16)
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
// Bitmap names

/// The name of a persistent dirty bitmap (qcow2): 1 to 1023 bytes of text without control
/// characters, not starting with '-' (it is passed to qemu-img as an argument).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(transparent)]
pub struct BitmapName(pub String);

/// Longest bitmap name qcow2 stores.
pub const MAX_BITMAP_NAME_BYTES: usize = 1023;

impl BitmapName {
    /// Validates a bitmap name.
    pub fn parse(s: &str) -> Result<BitmapName, String> {
        if s.is_empty() || s.len() > MAX_BITMAP_NAME_BYTES {
            return Err(format!(
                "bitmap name must be 1 to {MAX_BITMAP_NAME_BYTES} bytes, got {}",
                s.len()
            ));
        }
        if s.starts_with('-') {
            return Err("bitmap name must not start with '-'".into());
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(format!("bitmap name contains the control character {c:?}"));
        }
        Ok(BitmapName(s.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BitmapName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BitmapName, D::Error> {
        let s = String::deserialize(d)?;
        BitmapName::parse(&s).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Sequence

/// The largest sequence number (VDSM's MAX_SEQUENCE).
pub const MAX_SEQUENCE: u64 = u32::MAX as u64;

/// A volume's place in its chain (VDSM's SEQ: a newer volume has a higher number), 0 to
/// 2^32-1. Accepted as an integer or a decimal string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Sequence(pub u64);

impl Sequence {
    /// Checks the range.
    pub fn new(v: u64) -> Result<Sequence, String> {
        if v > MAX_SEQUENCE {
            Err(format!("sequence {v} is outside 0-{MAX_SEQUENCE}"))
        } else {
            Ok(Sequence(v))
        }
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Sequence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sequence, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Sequence;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a sequence number 0-{MAX_SEQUENCE}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Sequence, E> {
                Sequence::new(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Sequence, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("sequence {v} is outside 0-{MAX_SEQUENCE}")))
                    .and_then(|v| Sequence::new(v).map_err(E::custom))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Sequence, E> {
                Err(E::custom(format!(
                    "sequence {v} is not an integer 0-{MAX_SEQUENCE}"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Sequence, E> {
                let n = parse_size(v).map_err(|_| {
                    E::custom(format!("invalid sequence {:?}", truncate_for_message(v)))
                })?;
                Sequence::new(n).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Sequence {
    fn schema_name() -> Cow<'static, str> {
        "Sequence".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE,
            "description": "Chain order of a volume (VDSM's SEQ): a newer volume has a higher number"})
    }
}
