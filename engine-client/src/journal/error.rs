//! The journal's one error type.

use std::path::PathBuf;

use sdm_proto::Uuid;

use super::record::JOURNAL_VERSION;

/// Journal failures. Any of them stops the operation that tried to record: acting without a
/// durable record would break resumption.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal or its directory could not be opened or created.
    #[error("cannot open journal {path}")]
    Open {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error("journal {path} is in use by another process")]
    Locked {
        /// The journal.
        path: PathBuf,
    },
    /// Reading the journal failed.
    #[error("cannot read journal {path}")]
    Read {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing or syncing a record failed.
    #[error("cannot write journal {path}")]
    Write {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode a journal record")]
    Encode(#[source] serde_json::Error),
    /// A record names an operation the journal has no beginning for.
    #[error("journal has no operation {0}")]
    UnknownOp(Uuid),
    /// The task that writes or reads the journal failed (it panicked or its runtime is
    /// shutting down); the record may or may not be stored.
    #[error("journal writer failed: {0}")]
    Writer(String),
    /// The journal was written by a newer client.
    #[error("journal {path} has records of version {version}; this client reads version {JOURNAL_VERSION}")]
    Version {
        /// The journal.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
}
