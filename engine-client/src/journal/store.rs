//! The seam between the journal's logic (records, replay, the state in memory) and its storage:
//! a [`JournalStore`] keeps entries and gives them back. The file journal
//! ([`FileStore`](super::FileStore)) is the first implementation; a database shared by several
//! engines is the next.

use futures::future::BoxFuture;

use super::error::JournalError;
use super::record::Entry;

/// What a store did with an appended entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The entry is stored.
    Appended,
    /// The entry is stored, and the store dropped the entries of ended operations: the
    /// journal then forgets all but the most recently ended ones in memory too.
    Compacted,
}

/// Where a journal's entries are kept: the seam between the journal's logic (records, replay,
/// the state in memory) and its storage. A store only keeps entries and gives them back; it
/// never interprets them beyond what it needs to drop ended operations.
pub trait JournalStore: Send + Sync + std::fmt::Debug {
    /// Where the entries live, for messages (a path, a URL without credentials).
    fn location(&self) -> String;

    /// Stores `entry` durably: once this resolves Ok the entry survives a crash of the process
    /// and of the machine. Appends come one at a time, in order. On Err nothing may be assumed
    /// stored, and the caller does not act on the record.
    fn append<'a>(&'a self, entry: &'a Entry) -> BoxFuture<'a, Result<Stored, JournalError>>;

    /// The stored entries of every operation that has not ended, in the order they were
    /// stored (what a journal replays when it starts).
    fn load(&self) -> BoxFuture<'_, Result<Vec<Entry>, JournalError>>;
}
