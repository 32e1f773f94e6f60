//! Canonical lowercase UUIDs: the only form allowed to become a path component.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::super::BLANK_UUID;

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
