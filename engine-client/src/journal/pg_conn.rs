//! The PostgreSQL journal's connection: one client per engine, connected lazily, replaced
//! when it breaks; every statement bounded by a client-side timeout (a frozen network must not
//! hang the engine); failures sorted into "retry on a new connection" and "the server said no".

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use super::error::JournalError;
use super::options::JournalOptions;

/// Why one attempt at a database call failed.
#[derive(Debug)]
pub(super) enum Fail {
    /// The connection broke, timed out or the server is restarting: retry on a new one.
    Conn(String),
    /// The server refused the statement: retrying would not help.
    Db(String),
    /// A journal-level answer (fenced, busy, in progress...): return it as it is.
    Journal(JournalError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        if e.is_closed() {
            return Fail::Conn(e.to_string());
        }
        match e.code() {
            None => Fail::Conn(describe(&e)),
            Some(code) if retryable(code) => Fail::Conn(describe(&e)),
            Some(_) => Fail::Db(describe(&e)),
        }
    }
}

impl From<JournalError> for Fail {
    fn from(e: JournalError) -> Fail {
        Fail::Journal(e)
    }
}

/// Server-side limits every session of the journal runs under (the `options` startup
/// parameter). The client-side timeout alone is not enough: an engine partitioned in the
/// middle of a transaction leaves its session open on the server, holding the row locks of
/// the operations it was updating, until TCP gives up (hours by default). Every other engine
/// wanting to take those operations over would queue behind the locks. So a transaction left
/// idle is ended by the server, a statement waiting on a lock gives up (and is retried), and
/// no statement outlives the client's patience.
pub(super) fn session_limits(opts: &JournalOptions) -> String {
    let idle = (opts.lease / 2)
        .min(opts.statement_timeout)
        .max(Duration::from_secs(1));
    format!(
        "-c idle_in_transaction_session_timeout={} -c lock_timeout={} -c statement_timeout={}",
        idle.as_millis(),
        idle.as_millis(),
        opts.statement_timeout.as_millis()
    )
}

/// Server states worth another attempt: connection exceptions (class 08), the server shutting
/// down or starting up (57P01..57P03), transaction conflicts (40001, 40P01), and the
/// server-side limits of [`session_limits`]: a lock held by a stalled session (55P03) or a
/// statement cancelled by its timeout (57014).
fn retryable(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(code)
}

/// The server's message when there is one (the driver's `Display` says only "db error"), else
/// the driver's error and its cause.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// The one connection of a store, and how to make a new one.
pub(super) struct Conn {
    cfg: Config,
    pub(super) location: String,
    pub(super) opts: JournalOptions,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Conn {
    pub(super) fn new(cfg: Config, location: String, opts: JournalOptions) -> Conn {
        Conn {
            cfg,
            location,
            opts,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// Connects once (for open: a failure here is reported as it is, not retried).
    pub(super) async fn connect(&self) -> Result<Client, Fail> {
        let connecting = self.cfg.connect(NoTls);
        let (client, connection) = tokio::time::timeout(self.opts.connect_timeout, connecting)
            .await
            .map_err(|_| Fail::Conn(format!("no answer within {:?}", self.opts.connect_timeout)))?
            .map_err(|e| match e.code() {
                // The server answered and refused: wrong credentials, no such database.
                Some(c) if !retryable(c) => Fail::Db(describe(&e)),
                _ => Fail::Conn(describe(&e)),
            })?;
        let location = self.location.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(journal = %location, error = %describe(&e), "journal database connection lost");
            }
        });
        Ok(client)
    }

    /// The connection slot; held for one statement or transaction at a time.
    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<Client>> {
        self.client.lock().await
    }

    /// Connects when the slot is empty or its connection closed.
    pub(super) async fn ensure(&self, slot: &mut Option<Client>) -> Result<(), Fail> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = None;
            *slot = Some(self.connect().await?);
        }
        Ok(())
    }
}

/// Runs `$body` (an expression using `$c: &mut Client`, evaluating to `Result<T, Fail>`)
/// once on the connection, connecting first when needed, bounded by the statement timeout.
macro_rules! db_once {
    ($conn:expr, |$c:ident| $body:expr) => {{
        let conn: &$crate::journal::pg_conn::Conn = $conn;
        let mut guard = conn.lock().await;
        match conn.ensure(&mut guard).await {
            Ok(()) => {
                let attempt = async {
                    let $c: &mut tokio_postgres::Client = guard.as_mut().expect("connected");
                    $body
                };
                let r = match tokio::time::timeout(conn.opts.statement_timeout, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err($crate::journal::pg_conn::Fail::Conn(format!(
                        "no answer within {:?}",
                        conn.opts.statement_timeout
                    ))),
                };
                if matches!(r, Err($crate::journal::pg_conn::Fail::Conn(_))) {
                    *guard = None;
                }
                r
            }
            Err(e) => Err(e),
        }
    }};
}

/// Like [`db_once!`], retrying lost connections with a growing pause until the options'
/// `retry_for` has passed; evaluates to `Result<T, JournalError>`. The body must be safe to
/// repeat: the store's writes check on a retry whether the lost attempt committed.
macro_rules! db_retrying {
    ($conn:expr, $what:expr, |$c:ident| $body:expr) => {{
        let conn: &$crate::journal::pg_conn::Conn = $conn;
        let mut tries = $crate::journal::pg_conn::Tries::new();
        loop {
            let r = db_once!(conn, |$c| $body);
            match tries.settle(conn, $what, r).await {
                Some(done) => break done,
                None => continue,
            }
        }
    }};
}

pub(super) use {db_once, db_retrying};

/// The retry budget of one call.
pub(super) struct Tries {
    start: Instant,
    pause: Duration,
}

impl Tries {
    pub(super) fn new() -> Tries {
        Tries {
            start: Instant::now(),
            pause: Duration::from_millis(100),
        }
    }

    /// The call's result, or None after a pause when a lost connection may be retried.
    pub(super) async fn settle<T>(
        &mut self,
        conn: &Conn,
        what: &str,
        r: Result<T, Fail>,
    ) -> Option<Result<T, JournalError>> {
        match r {
            Ok(v) => Some(Ok(v)),
            Err(Fail::Journal(e)) => Some(Err(e)),
            Err(Fail::Db(message)) => Some(Err(JournalError::Db {
                location: conn.location.clone(),
                message: format!("{what}: {message}"),
            })),
            Err(Fail::Conn(message)) => {
                if self.start.elapsed() >= conn.opts.retry_for {
                    return Some(Err(JournalError::Unavailable {
                        location: conn.location.clone(),
                        secs: self.start.elapsed().as_secs_f64(),
                        message: format!("{what}: {message}"),
                    }));
                }
                tracing::warn!(journal = %conn.location, what, error = %message, "journal database unavailable; retrying");
                tokio::time::sleep(self.pause).await;
                self.pause = (self.pause * 2).min(Duration::from_secs(2));
                None
            }
        }
    }
}

/// The error of a connection that failed at open.
pub(super) fn connect_error(location: &str, f: Fail) -> JournalError {
    match f {
        Fail::Journal(e) => e,
        Fail::Conn(message) | Fail::Db(message) => JournalError::Connect {
            location: location.to_string(),
            message,
        },
    }
}
