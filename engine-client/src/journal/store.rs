//! The seam between the journal's logic (records, replay, the state in memory) and its storage:
//! a [`JournalStore`] keeps entries, gives them back, and says who may write an operation's
//! next record. The file journal ([`FileStore`](super::FileStore)) is the embedded default, a
//! store for one engine process; the PostgreSQL journal ([`PgStore`](super::PgStore)) is shared
//! by several engines, each operation owned by one of them at a time.

use futures::future::BoxFuture;
use sdm_proto::Uuid;
use serde::Serialize;

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

/// An operation this store's engine took up with [`JournalStore::claim`].
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The engine that held it before, when it was another one (a takeover).
    pub previous_owner: Option<String>,
    /// The ownership epoch now held; every later write is conditional on it.
    pub epoch: u64,
    /// The operation's entries as stored, read after the claim (None: the journal's memory is
    /// already current, as with a store only this process writes).
    pub entries: Option<Vec<Entry>>,
}

/// An unfinished operation as a listing shows it: who holds it, and its entries.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Operation id.
    pub op: Uuid,
    /// The engine that owns it (None: a store without owners, or released).
    pub owner: Option<String>,
    /// Ownership epoch (0 for a store without owners).
    pub epoch: u64,
    /// Milliseconds until its owner's lease expires (negative: expired), as the store's clock
    /// says; None for a store without leases.
    pub expires_in_ms: Option<i64>,
}

/// Every unfinished operation with its owner, and the entries of all of them.
pub type Listing = (Vec<Listed>, Vec<Entry>);

/// Where a journal's entries are kept: the seam between the journal's logic (records, replay,
/// the state in memory) and its storage. A store keeps entries and gives them back, and decides
/// who may write: it never interprets entries beyond what it needs to drop ended operations and
/// to know an operation's image.
///
/// Ownership: a `Begin` appended through a store makes its engine the owner of the new
/// operation. Any other record is stored only while the appending engine still owns the
/// operation at the epoch it claimed; otherwise the append fails with
/// [`JournalError::Fenced`] and nothing is stored. A store for one process (the file) owns
/// everything it holds.
pub trait JournalStore: Send + Sync + std::fmt::Debug {
    /// Where the entries live, for messages (a path, a URL without credentials).
    fn location(&self) -> String;

    /// Who this store writes as (the engine instance id).
    fn owner(&self) -> String;

    /// Stores `entry` durably: once this resolves Ok the entry survives a crash of the process
    /// and of the machine. Appends come one at a time, in order. On Err nothing may be assumed
    /// stored, and the caller does not act on the record.
    fn append<'a>(&'a self, entry: &'a Entry) -> BoxFuture<'a, Result<Stored, JournalError>>;

    /// The stored entries of every unfinished operation this engine owns from the start, in the
    /// order they were stored (what a journal replays when it opens): all of them for the
    /// file, none for a shared store, whose operations are taken up one by one with
    /// [`claim`](Self::claim).
    fn load(&self) -> BoxFuture<'_, Result<Vec<Entry>, JournalError>>;

    /// Unfinished operations this engine may take up now, oldest first: for a shared store,
    /// those whose owner's lease expired or that were released; for the file, every unfinished
    /// one.
    fn claimable(&self) -> BoxFuture<'_, Result<Vec<Uuid>, JournalError>>;

    /// Takes up `op`: a shared store makes this engine its owner with a higher epoch, if its
    /// owner's lease expired ([`JournalError::Busy`] otherwise), and returns its entries.
    fn claim<'a>(&'a self, op: &'a Uuid) -> BoxFuture<'a, Result<Claim, JournalError>>;

    /// Stops holding `op` (its driver stopped without ending it): no more renewals, and others
    /// may take it up at once. Best effort; the lease expires anyway.
    fn release<'a>(&'a self, op: &'a Uuid) -> BoxFuture<'a, ()>;

    /// The unfinished operation of `image` another engine holds, if the store knows one (the
    /// file: never, its operations are all in the journal's memory).
    fn in_progress<'a>(
        &'a self,
        image: &'a Uuid,
    ) -> BoxFuture<'a, Result<Option<Listed>, JournalError>>;

    /// Every unfinished operation with its owner, and the entries of all of them, for
    /// inspection (`sdmctl resume --list`); takes nothing up.
    fn list(&self) -> BoxFuture<'_, Result<Listing, JournalError>>;

    /// Forgets operations that ended more than `older_than` ago, with their records, and
    /// answers how many. Unfinished operations are never touched. A shared store keeps ended
    /// operations for audit until pruned; the file drops them itself when it compacts, so
    /// there is nothing older to forget there.
    fn prune(&self, older_than: std::time::Duration) -> BoxFuture<'_, Result<u64, JournalError>>;
}
