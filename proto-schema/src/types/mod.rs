//! Wire types of CONTRACT §3.
//!
//! Decoding is tolerant where engines are known to be loose (booleans as "true"/"false" strings,
//! sizes as decimal strings, `operation` as 1/2 or words, unknown fields ignored) and strict
//! where a loose value could reach the disk: UUIDs must be canonical lowercase before they can
//! ever become a path component, generations must be 0–999, and free text may not carry control
//! characters (it is stored as one `KEY=VALUE` line). A decoding failure is reported by the
//! server as InvalidParameterException (1000).
//!
//! The types are split by kind: `scalar` (UUIDs, sizes, generations, flags, descriptions),
//! `enums` (the string enumerations), `params` (structured parameters) and `results`.

/// An enum whose variants travel as fixed strings, with `as_str`, `FromStr` and `Display`.
macro_rules! wire_enum {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
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

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

/// A [`wire_enum!`] that VDSM also sends as integer codes (`volFormat` 4/5, `preallocate` 1/2):
/// decoded from its words or its codes, always encoded as words.
macro_rules! coded_wire_enum {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal / $code:literal),* $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ::serde::Serialize)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// The wire spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// VDSM's integer code.
            pub const fn code(self) -> u64 {
                match self { $($name::$variant => $code,)* }
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

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({
                    "description": concat!($(stringify!($name), " ", $text, " = VDSM code ", $code, "; "),*),
                    "oneOf": [
                        {"type": "string", "enum": [$($text),*]},
                        {"type": "integer", "enum": [$($code),*]}
                    ]
                })
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                struct V;
                impl ::serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!($("\"", $text, "\" or ", $code, ", "),*))
                    }
                    fn visit_u64<E: ::serde::de::Error>(self, v: u64) -> Result<$name, E> {
                        match v {
                            $($code => Ok($name::$variant),)*
                            _ => Err(E::custom(format!(concat!("invalid ", stringify!($name), " code {}"), v))),
                        }
                    }
                    fn visit_i64<E: ::serde::de::Error>(self, v: i64) -> Result<$name, E> {
                        match u64::try_from(v) {
                            Ok(v) => self.visit_u64(v),
                            Err(_) => Err(E::custom(format!(concat!("invalid ", stringify!($name), " code {}"), v))),
                        }
                    }
                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

mod enums;
mod params;
mod results;
mod scalar;
#[cfg(test)]
mod tests;

pub use enums::*;
pub use params::*;
pub use results::*;
pub use scalar::*;

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
