//! The engine journal: the durable record of every phase of every disk operation, written
//! before the phase acts, so that after an engine crash [`crate::Disks::resume`] knows where
//! each unfinished operation stood.
//!
//! * `record.rs`: what is written ([`Record`], one per phase, stored as an [`Entry`]);
//! * `state.rs`: what the records add up to ([`OpState`]), replayed by pure logic;
//! * `store.rs`: where entries are kept and who may write them ([`JournalStore`]).
//!   [`FileStore`] (`file.rs`, with its line format in `codec.rs`) is the embedded default, for
//!   one engine process; [`PgStore`] (`pg.rs`, with its connection in `pg_conn.rs` and its
//!   schema in `pg_schema.rs`, its listings in `pg_read.rs`) is shared by several engines, each operation owned by one of
//!   them under a lease with an epoch that fences its writes. [`Journal::open_url`] picks
//!   the store from a URL (`options.rs`); any store plugs in with [`Journal::with_store`];
//! * this file: [`Journal`], what the disk operations use: appends through its store, keeps the
//!   replayed state of the operations it drives current in memory; `error.rs`:
//!   [`JournalError`].

mod codec;
mod error;
mod file;
mod options;
mod pg;
mod pg_conn;
mod pg_read;
mod pg_schema;
mod record;
mod state;
mod store;

use std::sync::{Arc, Mutex};

use sdm_proto::Uuid;

pub use codec::crc32;
pub use error::JournalError;
pub use file::{read_entries, FileStore, COMPACT_AT_BYTES};
pub use options::{JournalOptions, JournalUrl, DEFAULT_LEASE, DEFAULT_RENEW_EVERY};
pub use pg::PgStore;
pub use pg_schema::SCHEMA_VERSION;
pub use record::{now_ms, Entry, Record, JOURNAL_VERSION};
pub use state::{replay, AttemptState, CopyState, DeleteState, OpState};
pub use store::{Claim, JournalStore, Listed, Listing, Stored};

use state::Ops;

/// Ended operations kept readable in memory after a store drops them (a caller that just ended
/// one still builds its report from it).
const KEEP_ENDED_IN_MEMORY: usize = 256;

struct Shared {
    store: Box<dyn JournalStore>,
    ops: Mutex<Ops>,
    /// One append at a time, so that records reach the store and the state in the same order.
    writer: tokio::sync::Mutex<()>,
}

impl Shared {
    fn ops(&self) -> std::sync::MutexGuard<'_, Ops> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn append(&self, rec: Record) -> Result<(), JournalError> {
        let _turn = self.writer.lock().await;
        let entry = Entry {
            v: JOURNAL_VERSION,
            at_ms: now_ms(),
            rec,
        };
        let is_begin = matches!(entry.rec, Record::Begin { .. });
        if !is_begin && !self.ops().knows(entry.rec.op()) {
            return Err(JournalError::UnknownOp(entry.rec.op().clone()));
        }
        let stored = self.store.append(&entry).await?;
        {
            let mut ops = self.ops();
            ops.apply(&entry);
            if stored == Stored::Compacted {
                ops.forget_ended(KEEP_ENDED_IN_MEMORY);
            }
        }
        failpoint_after(entry.rec.name());
        Ok(())
    }
}

/// `sdm_client::journal::after_<record>`: lets the engine fault tests stop an engine right
/// after a record is stored (feature `failpoints`).
#[cfg(feature = "failpoints")]
fn failpoint_after(name: &str) {
    fail::eval(&format!("sdm_client::journal::after_{name}"), |_| ());
}

#[cfg(not(feature = "failpoints"))]
fn failpoint_after(_name: &str) {}

/// Reads `FAILPOINTS` from the environment once per process (feature `failpoints`; without
/// it, nothing). Binaries built on `sdm-client` call it at start so that the engine fault
/// tests can stop them at a chosen record.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // The scenario holds fail's global lock for the process's life, on purpose.
        ONCE.call_once(|| std::mem::forget(fail::FailScenario::setup()));
    }
}

/// An open journal: a [`JournalStore`] and the replayed state of its operations.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("store", &self.shared.store)
            .finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal file at `path` ([`FileStore`]): locks it, cuts a
    /// torn tail, drops finished operations and replays the rest.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Journal, JournalError> {
        let (store, entries) = FileStore::open(path)?;
        Ok(Journal::over(Box::new(store), &entries))
    }

    /// Opens the journal named by `url` (see [`JournalUrl`]): `file:PATH` or a plain path opens
    /// the file journal ([`Journal::open`]); `postgres://…` connects to the shared journal
    /// ([`PgStore::connect`]: schema migrated, leases renewed with `opts`).
    pub async fn open_url(url: &str, opts: &JournalOptions) -> Result<Journal, JournalError> {
        match JournalUrl::parse(url)? {
            JournalUrl::File(path) => Journal::open(path),
            JournalUrl::Postgres(url) => {
                let store = PgStore::connect(&url, opts).await?;
                Journal::with_store(Box::new(store)).await
            }
        }
    }

    /// A journal kept in `store`, starting from what it holds.
    pub async fn with_store(store: Box<dyn JournalStore>) -> Result<Journal, JournalError> {
        let entries = store.load().await?;
        Ok(Journal::over(store, &entries))
    }

    fn over(store: Box<dyn JournalStore>, entries: &[Entry]) -> Journal {
        Journal {
            shared: Arc::new(Shared {
                store,
                ops: Mutex::new(Ops::unfinished_of(entries)),
                writer: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Where the journal is kept.
    pub fn location(&self) -> String {
        self.shared.store.location()
    }

    /// Appends `rec` durably and applies it to the replayed state. On failure the record is not
    /// in the journal and the caller must not act on it. The append runs to its end even when
    /// the returned future is dropped, so the store and the state never disagree.
    pub async fn append(&self, rec: Record) -> Result<(), JournalError> {
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.append(rec).await })
            .await
            .map_err(|e| JournalError::Writer(e.to_string()))?
    }

    /// The operation `op` as recorded (unfinished ones, and those finished since open).
    pub fn op(&self, op: &Uuid) -> Option<OpState> {
        self.shared.ops().get(op)
    }

    /// Every operation with something left to do that this journal knows, in order of
    /// beginning (with a shared store: those this engine began or claimed).
    pub fn unfinished(&self) -> Vec<OpState> {
        self.shared.ops().unfinished()
    }

    /// Who this journal writes as (the engine instance id).
    pub fn owner(&self) -> String {
        self.shared.store.owner()
    }

    /// Unfinished operations this engine may take up now (see [`JournalStore::claimable`]),
    /// those known in memory in their order of beginning first.
    pub async fn claimable(&self) -> Result<Vec<Uuid>, JournalError> {
        let mut ids = self.shared.store.claimable().await?;
        let order: Vec<Uuid> = self
            .shared
            .ops()
            .unfinished()
            .into_iter()
            .map(|o| o.op)
            .collect();
        ids.sort_by_key(|id| order.iter().position(|o| o == id).unwrap_or(usize::MAX));
        Ok(ids)
    }

    /// Takes up `op` (see [`JournalStore::claim`]) and replays what the store holds of it.
    pub async fn claim(&self, op: &Uuid) -> Result<Claim, JournalError> {
        let _turn = self.shared.writer.lock().await;
        let claim = self.shared.store.claim(op).await?;
        if let Some(entries) = &claim.entries {
            self.shared.ops().replace(op, entries);
        }
        Ok(claim)
    }

    /// Stops holding `op` (see [`JournalStore::release`]).
    pub async fn release(&self, op: &Uuid) {
        self.shared.store.release(op).await
    }

    /// The unfinished operation of `image` the store knows beyond this journal's memory (one
    /// another engine holds), if any.
    pub async fn in_progress(&self, image: &Uuid) -> Result<Option<Listed>, JournalError> {
        self.shared.store.in_progress(image).await
    }

    /// Every unfinished operation in the store with its owner, and their replayed states (for
    /// inspection; takes nothing up).
    pub async fn list(&self) -> Result<(Vec<Listed>, Vec<OpState>), JournalError> {
        let (listed, entries) = self.shared.store.list().await?;
        Ok((listed, replay(&entries)))
    }

    /// Forgets operations that ended more than `older_than` ago (see [`JournalStore::prune`]);
    /// answers how many went.
    pub async fn prune(&self, older_than: std::time::Duration) -> Result<u64, JournalError> {
        self.shared.store.prune(older_than).await
    }
}

#[cfg(test)]
mod tests {
    use super::codec::encode_line;
    use super::record::sample_begin as begin;
    use super::*;
    use crate::op::Outcome;

    #[tokio::test]
    async fn records_survive_reopen_and_finished_ops_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let j = Journal::open(&path).unwrap();
            j.append(begin(&a)).await.unwrap();
            j.append(begin(&b)).await.unwrap();
            j.append(Record::Cloned { op: a.clone() }).await.unwrap();
            j.append(Record::End {
                op: b.clone(),
                outcome: Outcome::Committed,
                message: None,
            })
            .await
            .unwrap();
            assert_eq!(j.unfinished().len(), 1);
            assert!(matches!(
                Journal::open(&path),
                Err(JournalError::Locked { .. })
            ));
            assert!(matches!(
                j.append(Record::Cloned { op: Uuid::new_v4() }).await,
                Err(JournalError::UnknownOp(_))
            ));
        }
        let j = Journal::open(&path).unwrap();
        let ops = j.unfinished();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, a);
        assert!(ops[0].cloned);
        // b was dropped from the file.
        let entries = read_entries(&path).unwrap();
        assert!(entries.iter().all(|e| e.rec.op() == &a), "{entries:?}");
        assert_eq!(entries.len(), 2);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_appends_continue_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let a = Uuid::new_v4();
        {
            let j = Journal::open(&path).unwrap();
            j.append(begin(&a)).await.unwrap();
            j.append(Record::Cloned { op: a.clone() }).await.unwrap();
        }
        let good = std::fs::read(&path).unwrap();
        // Every possible torn append of a third record, and a zero-filled tail.
        let third = encode_line(&Entry {
            v: 1,
            at_ms: 1,
            rec: Record::Commit { op: a.clone() },
        })
        .unwrap();
        let mut tails: Vec<Vec<u8>> = (1..third.len()).map(|n| third[..n].to_vec()).collect();
        tails.push(vec![0u8; 300]);
        tails.push(b"00000000 {\"v\":1}\n".to_vec());
        for tail in tails {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            let j = Journal::open(&path).unwrap();
            let st = j.op(&a).unwrap();
            assert!(st.cloned && !st.committed(), "tail {tail:?}");
            assert_eq!(std::fs::read(&path).unwrap(), good, "torn tail is cut");
            j.append(Record::Commit { op: a.clone() }).await.unwrap();
            drop(j);
            let j = Journal::open(&path).unwrap();
            assert!(j.op(&a).unwrap().committed());
            drop(j);
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[tokio::test]
    async fn a_long_journal_is_compacted_when_an_operation_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::open(&path).unwrap();
        let open_op = Uuid::new_v4();
        j.append(begin(&open_op)).await.unwrap();
        let mut last = None;
        while std::fs::metadata(&path).unwrap().len() <= COMPACT_AT_BYTES {
            let op = Uuid::new_v4();
            j.append(begin(&op)).await.unwrap();
            last = Some(op);
        }
        let last = last.unwrap();
        j.append(Record::End {
            op: last.clone(),
            outcome: Outcome::Committed,
            message: None,
        })
        .await
        .unwrap();
        // Everything but the still-open operations left the file...
        let entries = read_entries(&path).unwrap();
        assert!(!entries.iter().any(|e| e.rec.op() == &last));
        assert!(entries.iter().any(|e| e.rec.op() == &open_op));
        assert!(
            std::fs::metadata(&path).unwrap().len() > COMPACT_AT_BYTES / 2,
            "unfinished ops kept"
        );
        // ...the ended one is still readable in memory, and appends go on.
        assert!(j.op(&last).unwrap().end.is_some());
        j.append(Record::Cloned {
            op: open_op.clone(),
        })
        .await
        .unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.op(&open_op).unwrap().cloned);
        assert!(j.op(&last).is_none());
    }

    #[tokio::test]
    async fn damage_in_the_middle_keeps_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let a = Uuid::new_v4();
        {
            let j = Journal::open(&path).unwrap();
            j.append(begin(&a)).await.unwrap();
            j.append(Record::Cloned { op: a.clone() }).await.unwrap();
            j.append(Record::Commit { op: a.clone() }).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let damaged = format!("{}\nffffffff garbage\n{}\n", lines[0], lines[2]);
        std::fs::write(&path, damaged).unwrap();
        let j = Journal::open(&path).unwrap();
        let st = j.op(&a).unwrap();
        assert!(!st.cloned && st.committed());
    }
}
