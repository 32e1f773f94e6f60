//! The PostgreSQL journal: a [`JournalStore`] shared by several engine processes.
//!
//! # Records
//!
//! Each operation is a row of `sdm.operations` (see `pg_schema.rs`); each record a row of
//! `sdm.records` keyed by (operation, sequence number), holding the same JSON [`Entry`] the
//! file journal writes, so replay is the same code (`state.rs`). Every append is one
//! transaction: the operation's row is updated (its next sequence number, whether it ended)
//! under the condition that this engine still owns it at its epoch, and the record is
//! inserted.
//!
//! # Ownership
//!
//! A `Begin` makes its engine the owner at epoch 1 with a lease of `lease` by the database's
//! clock (`now()`, never the engine's). A background task renews the leases of the operations
//! this engine holds every `renew_every`, again conditional on the epoch. An engine that finds
//! an unfinished operation whose lease expired claims it: owner and epoch+1 in one conditional
//! update, then reads its records in the same transaction. From then on the old owner's
//! writes match no row and are refused ([`JournalError::Fenced`]): it can change nothing in the
//! journal, and it stops. No lock is held between statements, so engines never wait for each
//! other on a healthy operation.
//!
//! Why not advisory locks: a session-level advisory lock lives as long as the server keeps the
//! session. A partitioned owner's session stays open on the server until TCP keepalives or
//! `idle_session_timeout` end it (minutes by default), so the operation is stuck for that long;
//! and when the server does end it, the owner is not told: it goes on acting without the lock
//! and without anything that could refuse its writes. An epoch checked by every write refuses
//! them whatever the network did.
//!
//! # Retries
//!
//! A lost connection is retried (`retry_for`); a retried write first looks whether its lost
//! attempt committed (the record at its sequence number is its own), so a database restart
//! neither loses nor doubles a record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::future::BoxFuture;
use sdm_proto::Uuid;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Config};

use super::error::JournalError;
use super::options::JournalOptions;
use super::pg_conn::{connect_error, db_once, db_retrying, describe, session_limits, Conn, Fail};
use super::pg_schema::{migrate, MigrateError, SCHEMA_VERSION};
use super::record::{Entry, Record};
use super::store::{Claim, JournalStore, Listed, Listing, Stored};

/// An operation this engine holds: the epoch of its claim and its next sequence number.
#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: i64,
    next_seq: i32,
    /// A renewal found it taken over: no more renewals; the next write tells its driver.
    lost: bool,
}

pub(super) struct Inner {
    pub(super) conn: Conn,
    pub(super) owner: String,
    held: Mutex<HashMap<Uuid, Held>>,
}

/// The shared PostgreSQL journal (see the module documentation).
pub struct PgStore {
    inner: Arc<Inner>,
    renewer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.inner.conn.location)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

pub(super) fn uuid(u: &Uuid) -> uuid::Uuid {
    // sdm_proto::Uuid is canonical by construction.
    uuid::Uuid::parse_str(u.as_str()).unwrap_or_default()
}

pub(super) fn sdm_uuid(u: uuid::Uuid) -> Uuid {
    Uuid::parse(&u.hyphenated().to_string()).unwrap_or_else(|_| Uuid::blank())
}

/// `user@host:port/db` of a connection string: where the journal is, without credentials.
fn location_of(cfg: &Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        cfg.get_user().unwrap_or(""),
        cfg.get_dbname().unwrap_or("")
    )
}

impl PgStore {
    /// Connects to the database at `url`, creates or migrates the schema, and starts renewing
    /// the leases of the operations this engine will hold. Fails at once, writing nothing, on
    /// an unreachable database, refused credentials or a schema newer than this client.
    pub async fn connect(url: &str, opts: &JournalOptions) -> Result<PgStore, JournalError> {
        opts.check()?;
        let mut cfg: Config = url.parse().map_err(|e| JournalError::Url {
            url: redact(url),
            reason: format!("{e}"),
        })?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(opts.connect_timeout);
        }
        cfg.application_name("sdm-client");
        let limits = session_limits(opts);
        let options = match cfg.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {limits}"),
            _ => limits,
        };
        cfg.options(&options);
        let location = location_of(&cfg);
        let conn = Conn::new(cfg, location.clone(), opts.clone());
        let mut client = conn
            .connect()
            .await
            .map_err(|f| connect_error(&location, f))?;
        match migrate(&mut client).await {
            Ok(()) => {}
            Err(MigrateError::TooNew(found)) => {
                return Err(JournalError::SchemaTooNew {
                    location,
                    found,
                    known: SCHEMA_VERSION,
                })
            }
            Err(MigrateError::Fail(f)) => return Err(connect_error(&location, f)),
        }
        drop(client);
        let inner = Arc::new(Inner {
            conn,
            owner: opts.owner_id(),
            held: Mutex::new(HashMap::new()),
        });
        let renewer = tokio::spawn(renew_loop(Arc::downgrade(&inner)));
        tracing::info!(journal = %location, owner = %inner.owner, "journal database ready");
        Ok(PgStore { inner, renewer })
    }

    /// The operations this engine holds now.
    pub fn held(&self) -> Vec<Uuid> {
        self.inner.held().keys().cloned().collect()
    }
}

/// `url` with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lease_ms(&self) -> f64 {
        self.conn.opts.lease.as_secs_f64() * 1000.0
    }

    async fn append(&self, entry: &Entry) -> Result<Stored, JournalError> {
        let op = entry.rec.op().clone();
        if let Record::Begin { image, kind, .. } = &entry.rec {
            let kind = kind.to_string();
            db_retrying!(&self.conn, "recording a new operation", |c| {
                self.begin(c, &op, image, &kind, entry).await
            })?;
            self.held().insert(
                op,
                Held {
                    epoch: 1,
                    next_seq: 1,
                    lost: false,
                },
            );
            return Ok(Stored::Appended);
        }
        let Some(held) = self.held().get(&op).copied() else {
            return Err(JournalError::NotHeld(op));
        };
        let r = db_retrying!(&self.conn, "recording a phase", |c| {
            self.write(c, &op, held, entry).await
        });
        let mut map = self.held();
        match r {
            Ok(()) => {
                if matches!(entry.rec, Record::End { .. }) {
                    map.remove(&op);
                    return Ok(Stored::Compacted);
                }
                if let Some(h) = map.get_mut(&op).filter(|h| h.epoch == held.epoch) {
                    h.next_seq = held.next_seq + 1;
                }
                Ok(Stored::Appended)
            }
            Err(e) => {
                if matches!(e, JournalError::Fenced { .. }) {
                    map.remove(&op);
                }
                Err(e)
            }
        }
    }

    /// One attempt at recording a `Begin`: the operation's row (refused by the one-per-image
    /// index when another operation of the image is unfinished) and its first record.
    async fn begin(
        &self,
        c: &mut Client,
        op: &Uuid,
        image: &Uuid,
        kind: &str,
        entry: &Entry,
    ) -> Result<(), Fail> {
        let (op_u, image_u) = (uuid(op), uuid(image));
        let tx = c.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO sdm.operations (op, image, kind, owner, epoch, expires_at, next_seq)
                 VALUES ($1, $2, $3, $4, 1, now() + $5 * interval '1 millisecond', 1)",
                &[&op_u, &image_u, &kind, &self.owner, &self.lease_ms()],
            )
            .await;
        match inserted {
            Ok(_) => {
                tx.execute(
                    "INSERT INTO sdm.records (op, seq, epoch, owner, entry) VALUES ($1, 0, 1, $2, $3)",
                    &[&op_u, &self.owner, &Json(entry)],
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                drop(tx);
                // Our own lost commit (a retry), or another operation of the image.
                let mine = c
                    .query_opt(
                        "SELECT 1 FROM sdm.records WHERE op = $1 AND seq = 0 AND owner = $2 AND entry = $3",
                        &[&op_u, &self.owner, &Json(entry)],
                    )
                    .await?;
                if mine.is_some() {
                    return Ok(());
                }
                let row = c
                    .query_opt(
                        "SELECT op, owner FROM sdm.operations WHERE image = $1 AND NOT ended",
                        &[&image_u],
                    )
                    .await?;
                match row {
                    Some(r) => Err(Fail::Journal(JournalError::InProgress {
                        image: image.clone(),
                        op: sdm_uuid(r.get(0)),
                        owner: r.get(1),
                    })),
                    // It ended meanwhile: the retry may insert.
                    None => Err(Fail::Conn(describe(&e))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One attempt at recording a phase of an operation this engine holds at `held`.
    async fn write(
        &self,
        c: &mut Client,
        op: &Uuid,
        held: Held,
        entry: &Entry,
    ) -> Result<(), Fail> {
        let op_u = uuid(op);
        let (ended, outcome) = match &entry.rec {
            Record::End { outcome, .. } => (true, Some(outcome.to_string())),
            _ => (false, None),
        };
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE sdm.operations
                 SET next_seq = next_seq + 1, ended = $4, outcome = coalesce($5, outcome), updated_at = now()
                 WHERE op = $1 AND epoch = $2 AND next_seq = $3 AND NOT ended",
                &[&op_u, &held.epoch, &held.next_seq, &ended, &outcome],
            )
            .await?;
        if n == 1 {
            tx.execute(
                "INSERT INTO sdm.records (op, seq, epoch, owner, entry) VALUES ($1, $2, $3, $4, $5)",
                &[&op_u, &held.next_seq, &held.epoch, &self.owner, &Json(entry)],
            )
            .await?;
            tx.commit().await?;
            return Ok(());
        }
        drop(tx);
        let row = c
            .query_opt(
                "SELECT o.owner, o.epoch, o.next_seq,
                        EXISTS (SELECT 1 FROM sdm.records r WHERE r.op = o.op AND r.seq = $2 AND r.epoch = $3 AND r.entry = $4)
                 FROM sdm.operations o WHERE o.op = $1",
                &[&op_u, &held.next_seq, &held.epoch, &Json(entry)],
            )
            .await?;
        let Some(row) = row else {
            return Err(Fail::Journal(JournalError::UnknownOp(op.clone())));
        };
        let (owner, epoch, next_seq, ours): (String, i64, i32, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if ours {
            // The lost attempt committed.
            return Ok(());
        }
        if epoch != held.epoch {
            return Err(Fail::Journal(JournalError::Fenced {
                op: op.clone(),
                owner,
                epoch,
            }));
        }
        Err(Fail::Db(format!(
            "operation {op} is at record {next_seq}, this engine expected {}",
            held.next_seq
        )))
    }

    async fn claim(&self, op: &Uuid) -> Result<Claim, JournalError> {
        let op_u = uuid(op);
        let (claim, held) = db_retrying!(&self.conn, "claiming an operation", |c| {
            let tx = c.transaction().await?;
            let row = tx
                .query_opt(
                    "SELECT owner, epoch, next_seq, ended, expires_at <= now() FROM sdm.operations
                         WHERE op = $1 FOR UPDATE",
                    &[&op_u],
                )
                .await?
                .ok_or_else(|| Fail::Journal(JournalError::UnknownOp(op.clone())))?;
            let (owner, mut epoch, next_seq, ended, expired): (String, i64, i32, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            if ended {
                return Err(Fail::Journal(JournalError::UnknownOp(op.clone())));
            }
            let previous_owner = (owner != self.owner).then(|| owner.clone());
            if expired {
                let row = tx
                    .query_one(
                        "UPDATE sdm.operations
                             SET owner = $2, epoch = epoch + 1,
                                 expires_at = now() + $3 * interval '1 millisecond',
                                 takeovers = takeovers + (owner <> $2)::int, updated_at = now()
                             WHERE op = $1 RETURNING epoch",
                        &[&op_u, &self.owner, &self.lease_ms()],
                    )
                    .await?;
                epoch = row.get(0);
            } else if owner != self.owner {
                return Err(Fail::Journal(JournalError::Busy {
                    op: op.clone(),
                    owner,
                }));
            }
            // Live and ours: this process claimed it already (a retried claim whose commit
            // was lost, or a second call); owner ids are unique per process.
            let rows = tx
                .query(
                    "SELECT entry FROM sdm.records WHERE op = $1 ORDER BY seq",
                    &[&op_u],
                )
                .await?;
            tx.commit().await?;
            let entries = rows.iter().map(|r| r.get::<_, Json<Entry>>(0).0).collect();
            let claim = Claim {
                previous_owner,
                epoch: epoch as u64,
                entries: Some(entries),
            };
            Ok((
                claim,
                Held {
                    epoch,
                    next_seq,
                    lost: false,
                },
            ))
        })?;
        self.held().insert(op.clone(), held);
        Ok(claim)
    }

    async fn release(&self, op: Uuid, epoch: i64) {
        let op_u = uuid(&op);
        let r = db_once!(&self.conn, |c| {
            c.execute(
                "UPDATE sdm.operations SET expires_at = now(), updated_at = now()
                 WHERE op = $1 AND epoch = $2 AND NOT ended",
                &[&op_u, &epoch],
            )
            .await
            .map_err(Fail::from)
        });
        if let Err(e) = r {
            tracing::warn!(op = %op, error = ?e, "releasing an operation failed; its lease will expire");
        }
    }

    /// Renews every held operation's lease at its epoch; those no longer held at that epoch
    /// (taken over) are dropped from the held set.
    async fn renew(&self) {
        let held: Vec<(Uuid, Held)> = self.held().iter().map(|(k, v)| (k.clone(), *v)).collect();
        if held.is_empty() {
            return;
        }
        let ops: Vec<uuid::Uuid> = held.iter().map(|(o, _)| uuid(o)).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, h)| h.epoch).collect();
        let lease = self.lease_ms();
        let r = db_once!(&self.conn, |c| {
            c.query(
                "UPDATE sdm.operations o
                     SET expires_at = now() + $3 * interval '1 millisecond'
                     FROM unnest($1::uuid[], $2::bigint[]) AS m(op, epoch)
                     WHERE o.op = m.op AND o.epoch = m.epoch AND NOT o.ended
                     RETURNING o.op",
                &[&ops, &epochs, &lease],
            )
            .await
            .map_err(Fail::from)
        });
        let rows = match r {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(journal = %self.conn.location, error = ?e, "renewing leases failed; retrying at the next interval");
                return;
            }
        };
        let renewed: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
        let mut map = self.held();
        for (op, h) in held {
            if renewed.contains(&uuid(&op)) {
                continue;
            }
            if let Some(m) = map.get_mut(&op).filter(|m| m.epoch == h.epoch) {
                tracing::warn!(op = %op, epoch = h.epoch, "lost ownership of an operation (taken over elsewhere); its next write will be refused");
                m.lost = true;
            }
        }
    }
}

async fn renew_loop(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => i.conn.opts.renew_every,
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(i) = inner.upgrade() else { return };
        i.renew().await;
    }
}

impl JournalStore for PgStore {
    fn location(&self) -> String {
        self.inner.conn.location.clone()
    }

    fn owner(&self) -> String {
        self.inner.owner.clone()
    }

    fn append<'a>(&'a self, entry: &'a Entry) -> BoxFuture<'a, Result<Stored, JournalError>> {
        Box::pin(self.inner.append(entry))
    }

    /// None: a new engine owns nothing until it claims.
    fn load(&self) -> BoxFuture<'_, Result<Vec<Entry>, JournalError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn claimable(&self) -> BoxFuture<'_, Result<Vec<Uuid>, JournalError>> {
        Box::pin(self.inner.claimable())
    }

    fn claim<'a>(&'a self, op: &'a Uuid) -> BoxFuture<'a, Result<Claim, JournalError>> {
        Box::pin(self.inner.claim(op))
    }

    fn release<'a>(&'a self, op: &'a Uuid) -> BoxFuture<'a, ()> {
        let held = self.inner.held().remove(op);
        let inner = self.inner.clone();
        let op = op.clone();
        Box::pin(async move {
            if let Some(h) = held {
                inner.release(op, h.epoch).await;
            }
        })
    }

    fn in_progress<'a>(
        &'a self,
        image: &'a Uuid,
    ) -> BoxFuture<'a, Result<Option<Listed>, JournalError>> {
        Box::pin(self.inner.in_progress(image))
    }

    fn list(&self) -> BoxFuture<'_, Result<Listing, JournalError>> {
        Box::pin(self.inner.list())
    }

    fn prune(&self, older_than: std::time::Duration) -> BoxFuture<'_, Result<u64, JournalError>> {
        Box::pin(self.inner.prune(older_than))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_messages_carry_no_password() {
        let cfg: Config = "postgres://sdm:secret@db.example:5433/engine"
            .parse()
            .unwrap();
        assert_eq!(location_of(&cfg), "postgres://sdm@db.example:5433/engine");
        assert_eq!(
            redact("postgres://sdm:secret@h/db"),
            "postgres://sdm:***@h/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn uuids_convert_both_ways() {
        let u = Uuid::new_v4();
        assert_eq!(sdm_uuid(uuid(&u)), u);
    }
}
