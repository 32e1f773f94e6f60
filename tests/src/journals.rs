//! One engine test, two journal backends: a [`Backend`] (the file journal, or a private
//! PostgreSQL server) makes [`TestJournal`]s, each an empty journal with its URL, a way to open
//! it as an engine would, and a way to read back every record for assertions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_client::journal::{read_entries, Entry, JournalOptions};
use sdm_client::Journal;
use tokio_postgres::types::Json;

use crate::postgres::{server_or_skip, PgServer};

/// Where a test's journals live.
pub enum Backend {
    /// Journal files in temporary directories.
    File,
    /// Databases of one private PostgreSQL server.
    Postgres(Arc<PgServer>),
}

/// Lease settings for tests: a dead owner's operation is free within a second.
pub fn test_journal_options() -> JournalOptions {
    JournalOptions {
        lease: Duration::from_millis(1500),
        renew_every: Duration::from_millis(400),
        statement_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retry_for: Duration::from_secs(60),
        owner: None,
    }
}

impl Backend {
    /// The PostgreSQL backend, or None (with the reason printed) where no server can run.
    pub fn postgres_or_skip(test: &str) -> Option<Backend> {
        server_or_skip(test).map(|s| Backend::Postgres(Arc::new(s)))
    }

    /// "file" or "postgres".
    pub fn name(&self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A new, empty journal.
    pub async fn journal(&self) -> TestJournal {
        let dir = tempfile::tempdir().expect("tempdir");
        match self {
            Backend::File => TestJournal {
                url: dir.path().join("engine.journal").display().to_string(),
                pg: None,
                _dir: dir,
            },
            Backend::Postgres(server) => {
                let db = format!("j{}", uuid::Uuid::new_v4().simple());
                let url = server.create_db(&db).await;
                // The schema exists from the start, so that checks can read before engines write.
                Journal::open_url(&url, &test_journal_options())
                    .await
                    .expect("create the journal schema");
                TestJournal {
                    url,
                    pg: Some((server.clone(), db)),
                    _dir: dir,
                }
            }
        }
    }
}

/// One journal of a test.
pub struct TestJournal {
    /// The URL engines open (a path for the file journal).
    pub url: String,
    pg: Option<(Arc<PgServer>, String)>,
    _dir: tempfile::TempDir,
}

impl TestJournal {
    /// True for a PostgreSQL journal.
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
    }

    /// Opens the journal as a new engine would (test lease settings); a file journal whose
    /// dying owner still holds its lock is waited for.
    pub async fn open(&self) -> Arc<Journal> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Journal::open_url(&self.url, &test_journal_options()).await {
                Ok(j) => return Arc::new(j),
                Err(sdm_client::JournalError::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("open journal {}: {e}", self.url),
            }
        }
    }

    /// Every stored record, operations in order of beginning, each operation's records in
    /// order (the whole file for the file journal).
    pub async fn entries(&self) -> Vec<Entry> {
        let Some((server, db)) = &self.pg else {
            return read_entries(&self.url).expect("read journal");
        };
        let c = server.client(db).await;
        let rows = c
            .query(
                "SELECT r.entry FROM sdm.records r JOIN sdm.operations o USING (op)
                 ORDER BY o.created_at, r.op, r.seq",
                &[],
            )
            .await
            .expect("read records");
        rows.iter().map(|r| r.get::<_, Json<Entry>>(0).0).collect()
    }

    /// A connection to a PostgreSQL journal's database (None for a file).
    pub async fn db(&self) -> Option<tokio_postgres::Client> {
        match &self.pg {
            Some((server, db)) => Some(server.client(db).await),
            None => None,
        }
    }

    /// Waits until no unfinished operation of a shared journal has a live owner (a crashed
    /// owner's lease ran out), at most `limit`; returns how long that took. Nothing to wait
    /// for with a file journal.
    pub async fn wait_unowned(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        let Some(c) = self.db().await else {
            return Duration::ZERO;
        };
        loop {
            let live: i64 = c
                .query_one(
                    "SELECT count(*) FROM sdm.operations WHERE NOT ended AND expires_at > now()",
                    &[],
                )
                .await
                .expect("count owned")
                .get(0);
            if live == 0 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "operations still owned after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no engine of this process has the journal open any more (an in-process
    /// "crash" drops the engine, but an append already in flight still lands): the file's lock
    /// is free, or the database has no `sdm-client` connection left.
    pub async fn wait_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let closed = match &self.pg {
                None => {
                    let lock = format!("{}.lock", self.url);
                    match std::fs::File::open(&lock) {
                        Err(_) => true,
                        Ok(f) => {
                            use std::os::fd::AsRawFd;
                            // SAFETY: flock(2) on a descriptor owned by `f`, alive for the call.
                            let rc = unsafe {
                                libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)
                            };
                            rc == 0
                        }
                    }
                }
                Some((server, db)) => {
                    let c = server.client("postgres").await;
                    let n: i64 = c
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'sdm-client'",
                            &[db],
                        )
                        .await
                        .expect("count connections")
                        .get(0);
                    n == 0
                }
            };
            if closed {
                return;
            }
            assert!(Instant::now() < deadline, "journal still open after 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `--journal URL` and the test lease settings, for an `sdmctl` command line.
    pub fn sdmctl_args(&self) -> Vec<String> {
        let o = test_journal_options();
        vec![
            "--journal".into(),
            self.url.clone(),
            "--journal-lease".into(),
            o.lease.as_secs_f64().to_string(),
            "--journal-renew".into(),
            o.renew_every.as_secs_f64().to_string(),
        ]
    }
}

/// A `Disks` over the agents at `urls`, on `journal`, with test settings.
pub async fn engine_on(urls: &[String], journal: &TestJournal) -> sdm_client::Disks {
    sdm_client::Disks::new(crate::cluster::test_pool(urls), journal.open().await)
        .with_follow_options(crate::cluster::test_follow())
}
