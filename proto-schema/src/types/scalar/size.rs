//! Byte sizes and the other decimal-string numbers built on them (capacities, timestamps).

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::super::MAX_SIZE;
use super::truncate_for_message;

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
