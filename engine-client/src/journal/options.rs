//! How a journal is named ([`JournalUrl`]: a file or a PostgreSQL database) and the settings of
//! a shared journal ([`JournalOptions`]: who the engine is, its lease, its patience with the
//! database).

use std::path::PathBuf;
use std::time::Duration;

use super::error::JournalError;

/// Default lease of an operation's owner: another engine may take the operation over this long
/// after the owner's last renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default renewal interval: three renewals fit in one lease, so one or two lost renewals (a
/// slow statement, a database restart) do not cost the operation.
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(3);

/// Settings of a shared (database) journal; the file journal ignores them.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// This engine instance's id, recorded as the owner of its operations (None: host name,
    /// pid and a random suffix, unique per process). Two live processes must never share
    /// one.
    pub owner: Option<String>,
    /// How long an owner's claim lasts without renewal.
    pub lease: Duration,
    /// How often owned operations are renewed (well below `lease`).
    pub renew_every: Duration,
    /// How long to wait for the database to accept a connection.
    pub connect_timeout: Duration,
    /// How long one statement or transaction may take before the connection is given up as
    /// lost (a frozen network answers nothing at all).
    pub statement_timeout: Duration,
    /// How long a journal write retries an unreachable database before the operation stops
    /// (it stays in the journal; its lease expires and another engine takes it up).
    pub retry_for: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            owner: None,
            lease: DEFAULT_LEASE,
            renew_every: DEFAULT_RENEW_EVERY,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(60),
        }
    }
}

impl JournalOptions {
    /// The owner id to use: the configured one, or one made unique to this process.
    pub fn owner_id(&self) -> String {
        if let Some(o) = &self.owner {
            return o.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "engine".into());
        let salt = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}/{}/{}", std::process::id(), &salt[..8])
    }

    /// Refuses settings under which owners would lose healthy operations.
    pub fn check(&self) -> Result<(), JournalError> {
        if self.renew_every.is_zero() || self.renew_every * 2 > self.lease {
            return Err(JournalError::Options(format!(
                "the renewal interval ({:?}) must be positive and at most half the lease ({:?})",
                self.renew_every, self.lease
            )));
        }
        Ok(())
    }
}

/// Where a journal lives, parsed from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalUrl {
    /// `file:PATH`, or a plain path: the file journal.
    File(PathBuf),
    /// `postgres://…` or `postgresql://…`: the shared PostgreSQL journal (the URL as given,
    /// with its credentials).
    Postgres(String),
}

impl JournalUrl {
    /// Parses `file:PATH`, `postgres://…`, `postgresql://…` or a path without a scheme.
    pub fn parse(url: &str) -> Result<JournalUrl, JournalError> {
        let bad = |reason: &str| JournalError::Url {
            url: url.to_string(),
            reason: reason.into(),
        };
        if url.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(JournalUrl::File(path.into()));
        }
        if let Some(path) = url.strip_prefix("file:") {
            if path.is_empty() {
                return Err(bad("file: needs a path"));
            }
            return Ok(JournalUrl::File(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(JournalUrl::Postgres(url.to_string()));
        }
        match url.split_once("://") {
            Some((scheme, _)) => Err(bad(&format!(
                "unknown scheme {scheme:?}: use file:PATH or postgres://USER@HOST:PORT/DB"
            ))),
            None => Ok(JournalUrl::File(url.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_store() {
        let f = |p: &str| JournalUrl::File(p.into());
        assert_eq!(JournalUrl::parse("file:/var/j").unwrap(), f("/var/j"));
        assert_eq!(JournalUrl::parse("file:///var/j").unwrap(), f("/var/j"));
        assert_eq!(JournalUrl::parse("rel/j").unwrap(), f("rel/j"));
        assert_eq!(
            JournalUrl::parse("postgres://u@h:5432/db").unwrap(),
            JournalUrl::Postgres("postgres://u@h:5432/db".into())
        );
        assert!(JournalUrl::parse("postgresql://h/db").is_ok());
        for bad in ["", "file:", "mysql://h/db"] {
            assert!(
                matches!(JournalUrl::parse(bad), Err(JournalError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_renewal_slower_than_half_the_lease_is_refused() {
        let mut o = JournalOptions::default();
        assert!(o.check().is_ok());
        o.renew_every = o.lease;
        assert!(o.check().is_err());
        o.renew_every = Duration::ZERO;
        assert!(o.check().is_err());
        assert_ne!(
            JournalOptions::default().owner_id(),
            JournalOptions::default().owner_id()
        );
    }
}
