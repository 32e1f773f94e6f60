//! The cases the generator makes: what a case attacks, what the agent must answer, and the
//! paths and ids it aims at.

use std::path::PathBuf;

/// What a case attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A value of the wrong JSON type.
    WrongType,
    /// A required or optional field left out.
    Missing,
    /// An unknown field next to the known ones.
    Extra,
    /// The same field twice.
    Duplicate,
    /// Strings, arrays and objects of hundreds of kilobytes.
    Huge,
    /// Arrays and objects nested up to 100 000 levels.
    Nested,
    /// Integers and numeric strings beyond u16, u64, i64 and f64 ranges.
    Overflow,
    /// Non-canonical UUIDs.
    BadId,
    /// Path traversal and absolute paths aimed at the sentinel directory.
    Traversal,
    /// Control characters (and line separators) in strings.
    Control,
    /// Parameters that are not an object (absent, null, array, scalar).
    Shape,
    /// The JSON-RPC envelope itself (version, id, method).
    Envelope,
    /// Batch requests.
    Batch,
    /// Bodies that are not JSON or not UTF-8.
    Garbage,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 14] = [
        Kind::WrongType,
        Kind::Missing,
        Kind::Extra,
        Kind::Duplicate,
        Kind::Huge,
        Kind::Nested,
        Kind::Overflow,
        Kind::BadId,
        Kind::Traversal,
        Kind::Control,
        Kind::Shape,
        Kind::Envelope,
        Kind::Batch,
        Kind::Garbage,
    ];
}

/// What the agent must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The parameters do not decode: InvalidParameterException (1000).
    Invalid,
    /// They decode: a result, or an error whose code is in the contract's table.
    Answer,
    /// A success (methods without parameters ignore whatever they are sent).
    Ok,
    /// A JSON-RPC error with this code.
    Code(i64),
    /// Any JSON-RPC error with an integer code.
    AnyError,
    /// A batch answer: an array of `n` answers, each a result or a coded error.
    BatchOf(usize),
    /// A notification: no answer, or an error.
    NoAnswer,
    /// Any JSON-RPC answer: a result or an error with an integer code.
    Any,
}

/// One request.
#[derive(Clone, Debug)]
pub struct Case {
    /// What it attacks.
    pub kind: Kind,
    /// The method (empty for envelope-level cases).
    pub method: String,
    /// Human label: method, field and value.
    pub label: String,
    /// The whole JSON-RPC body.
    pub body: Vec<u8>,
    /// What the agent must answer.
    pub expect: Expect,
    /// Part of the quick form (the normal `cargo test` run).
    pub quick: bool,
}

/// Paths and ids the generator aims at.
#[derive(Clone, Debug)]
pub struct Targets {
    /// A directory outside every domain that traversal payloads point at.
    pub sentinel: PathBuf,
    /// The directory domains are created in (`<state>/domains`).
    pub domain_root: PathBuf,
}
