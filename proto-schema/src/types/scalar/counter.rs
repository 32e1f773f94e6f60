//! Ranged counters of a volume: its generation (0–999, wraps) and its chain sequence.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::super::MAX_GENERATION;
use super::{parse_size, truncate_for_message};

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
