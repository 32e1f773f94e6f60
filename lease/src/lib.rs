//! Volume leases for sdm.
//!
//! One small trait, [`LeaseBackend`], with two real implementations chosen per storage domain:
//!
//! * [`SanlockLeases`]: sanlock delta leases (host ids, `dom_md/ids`) and paxos leases
//!   (`<vol>.lease`, `dom_md/leases`) on shared storage, through libsanlock and the local
//!   sanlock daemon. Safe across hosts.
//! * [`LocalLeases`]: OFD locks on `<vol>.lease`. Exclusive between processes and threads of
//!   one host only; the embedded default for single-host domains.
//!
//! Acquiring never waits for another owner: a lease held elsewhere fails at once with
//! [`LeaseErrorKind::Busy`] (the agent's AcquireLockFailure, 651). A held [`Lease`] is
//! released when dropped. See `docs/leases.md` for what each backend guarantees.
//!
//! A holder checks its lease before work only the holder may do: [`Lease::verify`] reads the
//! lease on storage, [`Lease::verify_fast`] (no I/O, for copy loops) only checks that the
//! sanlock registration behind it is still alive. [`SanlockLeases::on_registration_lost`]
//! tells at once when that registration is lost.

use std::fmt;
use std::path::{Path, PathBuf};

mod local;
mod sanlock;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use local::LocalLeases;
pub use sanlock::{
    LostSubscription, RegistrationLost, SanlockLeases, SanlockOptions, DEFAULT_RUN_DIR,
};

/// Size of one lease slot on storage: sanlock's align size for 512-byte sectors.
pub const ALIGNMENT: u64 = 1 << 20;
/// Sector size used for every lockspace and lease that sdm formats.
pub const SECTOR_SIZE: u64 = 512;
/// Resource name of the domain-wide lease in `dom_md/leases`.
pub const SDM_RESOURCE: &str = "SDM";
/// Offset of the `SDM` resource in `dom_md/leases` (slot 1; slot 0 is the legacy SPM hole).
pub const SDM_LEASE_OFFSET: u64 = ALIGNMENT;
/// Highest host id a 1 MiB / 512-byte lockspace supports.
pub const MAX_HOST_ID: u64 = 2000;

/// Whether libsanlock (`libsanlock.so.1`) can be loaded on this host. The library is
/// loaded at run time, so the same binary runs with and without it; without it
/// [`SanlockLeases::new`] fails with [`LeaseErrorKind::Unavailable`], naming the package to
/// install. The agent can check this when validating a config that asks for sanlock.
pub fn libsanlock_available() -> bool {
    sanlock::available()
}

/// Old name of [`libsanlock_available`]: the library is no longer linked at build time.
#[deprecated(note = "libsanlock is loaded at run time; use libsanlock_available()")]
pub fn libsanlock_linked() -> bool {
    libsanlock_available()
}

/// Who holds a lease right now, as reported by `Volume.getInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseStatus {
    /// Host ids of live owners; empty when the lease is free. Owners whose host is dead,
    /// has restarted since acquiring, or has left the lockspace count as free.
    pub owners: Vec<u64>,
    /// sanlock's lease version (`lver`, bumped by every acquire); `None` for a lease that was
    /// never acquired, and always `None` for the local backend.
    pub version: Option<u64>,
}

/// Stable error classes; the agent maps `Busy` to AcquireLockFailure (651), the rest to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseErrorKind {
    /// Held by another host, by another job on this host, or the lockspace is in use.
    Busy,
    /// Lease file, lease record or lockspace does not exist (or is not joined).
    NotFound,
    /// sanlock daemon unreachable, or this process's registration with it was lost.
    Daemon,
    /// Storage I/O failed or timed out.
    Io,
    /// Bad arguments or on-disk records that do not match them.
    Invalid,
    /// A lease this process acquired is no longer held by it (released behind its back, or
    /// taken over by another host after this host's lockspace lease expired).
    Lost,
    /// The backend cannot work on this host at all: libsanlock is not installed.
    Unavailable,
}

impl fmt::Display for LeaseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseErrorKind::Busy => "busy",
            LeaseErrorKind::NotFound => "not found",
            LeaseErrorKind::Daemon => "sanlock daemon",
            LeaseErrorKind::Io => "i/o",
            LeaseErrorKind::Invalid => "invalid",
            LeaseErrorKind::Lost => "lost",
            LeaseErrorKind::Unavailable => "unavailable",
        })
    }
}

/// A failed lease operation: a stable [`kind`](LeaseError::kind), a short message and, for
/// sanlock and OS failures, the raw negative return code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LeaseError {
    kind: LeaseErrorKind,
    message: String,
    code: Option<i32>,
}

impl LeaseError {
    /// A new error; public so that fakes in other crates can produce every kind.
    pub fn new(kind: LeaseErrorKind, message: impl Into<String>) -> Self {
        LeaseError {
            kind,
            message: message.into(),
            code: None,
        }
    }

    pub(crate) fn with_code(kind: LeaseErrorKind, message: impl Into<String>, code: i32) -> Self {
        LeaseError {
            kind,
            message: message.into(),
            code: Some(code),
        }
    }

    pub(crate) fn io(what: impl fmt::Display, path: &Path, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => LeaseErrorKind::NotFound,
            _ => LeaseErrorKind::Io,
        };
        let code = err.raw_os_error().map(|e| -e);
        LeaseError {
            kind,
            message: format!("{what} {}: {err}", path.display()),
            code,
        }
    }

    pub fn kind(&self) -> LeaseErrorKind {
        self.kind
    }

    /// The raw failure code when there is one: `-errno`, or a negative `SANLK_*` code
    /// (e.g. -243 when a live host owns the lease).
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    pub fn is_busy(&self) -> bool {
        self.kind == LeaseErrorKind::Busy
    }
}

/// A lease implementation. Both backends are cheap to share (`Arc<dyn LeaseBackend>`) and
/// safe to call from many threads at once.
pub trait LeaseBackend: Send + Sync + fmt::Debug {
    /// `"local"` or `"sanlock"`.
    fn kind(&self) -> &'static str;

    /// Domain creation. sanlock formats the lockspace `sd_id` in `ids_path` at offset 0 with
    /// `io_timeout_s`, and the domain's `SDM` resource in `leases_path` at
    /// [`SDM_LEASE_OFFSET`]; local only makes sure both files exist (mode 0660).
    fn format_domain(
        &self,
        sd_id: &str,
        ids_path: &Path,
        leases_path: &Path,
        io_timeout_s: u32,
    ) -> Result<(), LeaseError>;

    /// Domain attach: join the lockspace with this host's id (sanlock; already joined is
    /// success). Blocks for the join, about 3×io_timeout. Local: no-op.
    fn join(&self, sd_id: &str, ids_path: &Path) -> Result<(), LeaseError>;

    /// Domain detach: leave the lockspace (sanlock; not joined is success, leases still held
    /// in it give `Busy`). Local: no-op.
    fn leave(&self, sd_id: &str, ids_path: &Path) -> Result<(), LeaseError>;

    /// `Volume.create`: (re)initialise `<vol>.lease` (sanlock: the resource `vol_id` in
    /// lockspace `sd_id` at offset 0, 1 MiB align, 512-byte sectors). Creates the file (0660).
    fn init_volume_lease(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
    ) -> Result<(), LeaseError>;

    /// Block domains: (re)initialise the resource `vol_id` in lockspace `sd_id` at `offset` of
    /// `path`, an area shared by many leases (the `leases` LV at (100 + slot) MiB). Written in
    /// place: the device is neither created nor truncated. sanlock writes the resource (1 MiB
    /// align, 512-byte sectors); local only checks that `path` exists, since its lock is the
    /// byte range [`offset`, `offset` + [`ALIGNMENT`]) taken at acquire.
    fn init_lease_at(
        &self,
        sd_id: &str,
        vol_id: &str,
        path: &Path,
        offset: u64,
    ) -> Result<(), LeaseError>;

    /// Exclusive acquire that never waits for another owner: a lease held by another host or
    /// by another job on this host fails at once with [`LeaseErrorKind::Busy`].
    /// sanlock reads the lease back and records its version and owner generation for
    /// [`Lease::verify`]; when that read fails the lease is released again and the acquire
    /// fails.
    fn acquire(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
        offset: u64,
    ) -> Result<Lease, LeaseError>;

    /// Current live owners (host ids) and version of a lease, for `Volume.getInfo`.
    fn status(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
        offset: u64,
    ) -> Result<LeaseStatus, LeaseError>;
}

/// A held lease. Released by [`Lease::release`] or, failing that, on drop (errors are
/// logged). Dropping the whole process releases it too: the kernel drops OFD locks and the
/// sanlock daemon releases the leases of a registered process that exits.
pub struct Lease {
    sd_id: String,
    vol_id: String,
    path: PathBuf,
    offset: u64,
    held: Option<Held>,
}

enum Held {
    Local(local::Held),
    Sanlock(sanlock::Held),
}

impl Lease {
    fn new(sd_id: &str, vol_id: &str, path: &Path, offset: u64, held: Held) -> Self {
        Lease {
            sd_id: sd_id.to_string(),
            vol_id: vol_id.to_string(),
            path: path.to_path_buf(),
            offset,
            held: Some(held),
        }
    }

    pub fn sd_id(&self) -> &str {
        &self.sd_id
    }

    pub fn vol_id(&self) -> &str {
        &self.vol_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Backend that holds it: `"local"` or `"sanlock"`.
    pub fn kind(&self) -> &'static str {
        match self.held {
            Some(Held::Local(_)) => "local",
            Some(Held::Sanlock(_)) => "sanlock",
            None => "released",
        }
    }

    /// Checks that the lease is still this process's, right before work that only its holder
    /// may do (the final metadata write that makes a volume LEGAL). Local: an OFD lock lasts as
    /// long as its descriptor, which the lease owns, so it always holds. sanlock: everything
    /// [`verify_fast`](Self::verify_fast) checks, and the lease on storage still names this
    /// host with the lockspace generation and the version (`lver`) recorded at acquire (so a
    /// re-join of the lockspace or any acquire since, also our own, is caught). Reads the
    /// lease from storage, so it takes as long as one sector read.
    /// [`LeaseErrorKind::Lost`] when the lease is gone; other kinds when the check itself
    /// could not be made (e.g. `Io`), which a caller must treat as "not verified".
    pub fn verify(&self) -> Result<(), LeaseError> {
        match &self.held {
            None => Err(LeaseError::new(
                LeaseErrorKind::Lost,
                "the lease was released",
            )),
            Some(Held::Local(_)) => Ok(()),
            Some(Held::Sanlock(h)) => h.verify(),
        }
    }

    /// The cheap check, for a copy loop every few seconds: no I/O, no lock, no daemon call.
    /// Local: always holds. sanlock: the registration the lease was acquired through has not
    /// been lost (daemon exit or restart, a dropped connection) and no other holder in this
    /// process has acquired the lease since. It cannot see a release by an outside tool or a
    /// takeover by another host; [`verify`](Self::verify) does. [`LeaseErrorKind::Lost`]
    /// otherwise.
    pub fn verify_fast(&self) -> Result<(), LeaseError> {
        match &self.held {
            None => Err(LeaseError::new(
                LeaseErrorKind::Lost,
                "the lease was released",
            )),
            Some(Held::Local(_)) => Ok(()),
            Some(Held::Sanlock(h)) => h.verify_fast(),
        }
    }

    /// Releases the lease now and reports failures (Drop can only log them).
    pub fn release(mut self) -> Result<(), LeaseError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), LeaseError> {
        match self.held.take() {
            None => Ok(()),
            Some(Held::Local(h)) => {
                h.release();
                Ok(())
            }
            Some(Held::Sanlock(h)) => h.release(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            tracing::error!(
                sd_id = %self.sd_id,
                vol_id = %self.vol_id,
                path = %self.path.display(),
                error = %e,
                "releasing volume lease on drop failed"
            );
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("kind", &self.kind())
            .field("sd_id", &self.sd_id)
            .field("vol_id", &self.vol_id)
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn public_types_are_thread_safe() {
        assert_send::<Lease>();
        assert_send_sync::<LeaseError>();
        assert_send_sync::<LocalLeases>();
        assert_send_sync::<SanlockLeases>();
        assert_send_sync::<LostSubscription>();
        assert_send_sync::<RegistrationLost>();
        let _: Box<dyn LeaseBackend> = Box::new(LocalLeases::new(1));
    }

    #[test]
    fn error_accessors() {
        let e = LeaseError::new(LeaseErrorKind::Busy, "held by host 2");
        assert!(e.is_busy());
        assert_eq!(e.kind(), LeaseErrorKind::Busy);
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "held by host 2");
        let e = LeaseError::io(
            "open",
            Path::new("/nonexistent"),
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.kind(), LeaseErrorKind::NotFound);
        assert_eq!(e.code(), Some(-libc::ENOENT));
    }
}
