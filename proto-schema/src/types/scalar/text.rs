//! Free text stored as one `KEY=VALUE` line: descriptions and bitmap names.

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

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
