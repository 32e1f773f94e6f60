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
    /// The journal URL is not one this client knows (`file:PATH`, a path, `postgres://…`).
    #[error("bad journal URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Journal settings that cannot work (a renewal slower than half the lease).
    #[error("bad journal settings: {0}")]
    Options(String),
    /// The journal database could not be reached or refused the connection (unreachable
    /// host, wrong credentials, no such database).
    #[error("cannot connect to journal database {location}: {message}")]
    Connect {
        /// The database, without credentials.
        location: String,
        /// The driver's or the server's reason.
        message: String,
    },
    /// The journal database has a newer schema than this client knows; nothing was written.
    #[error("journal database {location} has schema version {found}; this client knows versions up to {known}: upgrade the engine")]
    SchemaTooNew {
        /// The database, without credentials.
        location: String,
        /// The version found.
        found: i32,
        /// The newest version this client knows.
        known: i32,
    },
    /// The journal database failed a statement (not a lost connection).
    #[error("journal database {location}: {message}")]
    Db {
        /// The database, without credentials.
        location: String,
        /// The server's reason.
        message: String,
    },
    /// The journal database stayed unreachable longer than the client retries; the record may
    /// or may not be stored, and the caller does not act on it.
    #[error("journal database {location} unreachable for {secs:.0} s: {message}")]
    Unavailable {
        /// The database, without credentials.
        location: String,
        /// How long it was retried.
        secs: f64,
        /// The last failure.
        message: String,
    },
    /// Another engine took the operation over (its epoch is higher than this engine's): the
    /// record was refused, and this engine must stop driving the operation.
    #[error("operation {op} was taken over by engine {owner} (epoch {epoch}); this engine's write was refused and it stops driving the operation")]
    Fenced {
        /// The operation.
        op: Uuid,
        /// Its owner now.
        owner: String,
        /// Its epoch now.
        epoch: i64,
    },
    /// This engine does not hold the operation (it released it, or never began or claimed
    /// it): it may not write its records.
    #[error("this engine does not hold operation {0}; claim it first")]
    NotHeld(Uuid),
    /// The operation is owned by another engine whose lease is live.
    #[error("operation {op} is owned by engine {owner}, whose lease is live")]
    Busy {
        /// The operation.
        op: Uuid,
        /// Its owner.
        owner: String,
    },
    /// Another operation on the same image has not ended (a shared journal's unique
    /// constraint refused the new one).
    #[error("image {image} is already in progress by engine {owner} (operation {op})")]
    InProgress {
        /// The image.
        image: Uuid,
        /// The operation in progress.
        op: Uuid,
        /// Its owner.
        owner: String,
    },
    /// The journal was written by a newer client.
    #[error("journal {path} has records of version {version}; this client reads version {JOURNAL_VERSION}")]
    Version {
        /// The journal.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
}
