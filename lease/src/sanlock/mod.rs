//! Shared-storage leases through the local sanlock daemon.
//!
//! Model (the same one VDSM uses):
//! * A domain is a sanlock *lockspace* named after its UUID, stored in `dom_md/ids`; a host
//!   joins it with its host id (a delta lease, renewed by the daemon).
//! * A volume lease is a paxos *resource* named after the volume UUID, in the lockspace of
//!   its domain, stored at offset 0 of `<vol>.lease`.
//! * The process registers once with the daemon; every lease it acquires is tied to that
//!   registration, and the daemon releases them all if the process exits or is killed.
//!
//! # Which daemon: `SANLOCK_RUN_DIR`
//! libsanlock finds the daemon's socket as `$SANLOCK_RUN_DIR/sanlock.sock` (default
//! `/run/sanlock`). It reads the variable once, on its first connection, and keeps that
//! directory for the life of the process, so one process can only ever talk to one daemon.
//! [`SanlockLeases::new`] therefore binds the whole process to one run dir: the first call
//! sets `SANLOCK_RUN_DIR` (when `run_dir` is given) before anything connects, and later
//! calls asking for a different directory fail with `Invalid` instead of silently talking to
//! the wrong daemon. Create the first `SanlockLeases` early (before spawning threads that
//! read the environment), and do not call libsanlock from elsewhere in the process.

mod ffi;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::local::{ensure_file, LEASE_FILE_MODE};
use crate::{
    Held as LeaseHeld, Lease, LeaseBackend, LeaseError, LeaseErrorKind, LeaseStatus, MAX_HOST_ID,
    SDM_LEASE_OFFSET, SDM_RESOURCE,
};

/// Where the system sanlock daemon listens when `SANLOCK_RUN_DIR` is not set.
pub const DEFAULT_RUN_DIR: &str = "/run/sanlock";

/// Lockspaces and leases formatted by sdm: 1 MiB areas of 512-byte sectors (max 2000 hosts).
const RES_FLAGS: u32 = ffi::SANLK_RES_ALIGN1M | ffi::SANLK_RES_SECTOR512;
const LS_FLAGS: u32 = ffi::SANLK_LSF_ALIGN1M | ffi::SANLK_LSF_SECTOR512;

/// How [`SanlockLeases`] reaches the daemon and joins lockspaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanlockOptions {
    /// io_timeout (seconds) passed to `add_lockspace`; a join takes about 3× this, and
    /// other hosts may take our leases `8 × io_timeout + 60` s after we stop renewing.
    /// 0 means the daemon's default. Production domains use 10 (VDSM's value); tests use 1.
    pub io_timeout_s: u32,
    /// `SANLOCK_RUN_DIR` of the daemon to talk to; `None` = the environment's
    /// `SANLOCK_RUN_DIR`, else [`DEFAULT_RUN_DIR`]. Binds the whole process (see module docs).
    pub run_dir: Option<PathBuf>,
}

impl Default for SanlockOptions {
    fn default() -> Self {
        SanlockOptions {
            io_timeout_s: 10,
            run_dir: None,
        }
    }
}

/// The process-wide link to one sanlock daemon.
struct Client {
    run_dir: PathBuf,
    /// The registered connection. Every call that uses it (acquire, release) holds this lock:
    /// libsanlock sends a request and reads the reply on the socket with no framing that
    /// would survive two threads interleaving.
    reg: Mutex<Registration>,
}

#[derive(Default)]
struct Registration {
    fd: Option<OwnedFd>,
    /// Bumped on every (re-)registration, so a lease taken under a lost registration is
    /// recognised as already dropped by the daemon.
    generation: u64,
}

static CLIENT: OnceLock<Client> = OnceLock::new();

/// Whether the crate was linked against libsanlock.
pub(crate) fn linked() -> bool {
    ffi::LINKED
}

fn effective_run_dir(requested: Option<&Path>) -> PathBuf {
    match requested {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SANLOCK_RUN_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
    }
}

/// Binds this process to the daemon in `requested` (see the module docs for why it is
/// once per process).
fn client_for(requested: Option<&Path>) -> Result<&'static Client, LeaseError> {
    let want = effective_run_dir(requested);
    let client = CLIENT.get_or_init(|| {
        if std::env::var_os("SANLOCK_RUN_DIR").as_deref() != Some(want.as_os_str()) {
            // SAFETY: setenv races with concurrent getenv in other threads. This runs once
            // per process, before libsanlock's first connection (its only reader of the
            // variable); callers are told to create the first SanlockLeases early.
            unsafe { std::env::set_var("SANLOCK_RUN_DIR", &want) };
        }
        Client {
            run_dir: want.clone(),
            reg: Mutex::new(Registration::default()),
        }
    });
    if client.run_dir != want {
        return Err(LeaseError::new(
            LeaseErrorKind::Invalid,
            format!(
                "this process already uses the sanlock daemon in {} and cannot switch to {}",
                client.run_dir.display(),
                want.display()
            ),
        ));
    }
    Ok(client)
}

impl Client {
    fn lock(&self) -> MutexGuard<'_, Registration> {
        // A panic while holding the lock cannot leave the registration half-updated.
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn socket_path(&self) -> PathBuf {
        self.run_dir.join("sanlock.sock")
    }
}

impl Registration {
    fn ensure(&mut self, client: &Client) -> Result<BorrowedFd<'_>, LeaseError> {
        if self.fd.is_none() {
            let fd = ffi::register().map_err(|rc| {
                let mut e = map_rc(client, "register with sanlock", rc);
                // Any registration failure means we cannot hold leases at all.
                e.kind = LeaseErrorKind::Daemon;
                e
            })?;
            // Children (qemu-img, helpers) must not inherit the registration: a leaked copy
            // would keep the daemon from noticing that the agent died.
            set_cloexec(fd.as_fd()).map_err(|e| {
                LeaseError::new(LeaseErrorKind::Daemon, format!("set FD_CLOEXEC: {e}"))
            })?;
            self.generation += 1;
            tracing::info!(
                run_dir = %client.run_dir.display(),
                generation = self.generation,
                "registered with sanlock"
            );
            self.fd = Some(fd);
        }
        Ok(self
            .fd
            .as_ref()
            .map(|f| f.as_fd())
            .expect("registered above"))
    }

    /// The daemon closed our connection (it restarted or dropped us): every lease it was
    /// tracking for us is gone. The next acquire registers again.
    fn lost(&mut self, why: i32) {
        if self.fd.take().is_some() {
            tracing::error!(
                rc = why,
                "sanlock registration lost; the daemon has released this process's leases"
            );
        }
    }
}

fn set_cloexec(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFD/F_SETFD only touch the descriptor flags of an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Return codes that mean the daemon connection itself is gone.
fn is_connection_error(rc: i32) -> bool {
    [
        libc::EPIPE,
        libc::ECONNRESET,
        libc::ENOTCONN,
        libc::ECONNREFUSED,
        libc::EBADF,
    ]
    .iter()
    .any(|e| rc == -e)
}

fn kind_of(client: &Client, rc: i32) -> LeaseErrorKind {
    use LeaseErrorKind::*;
    match rc {
        _ if is_connection_error(rc) => Daemon,
        _ if rc == -libc::ENOSYS => Daemon,
        // libsanlock reports a missing socket as -ENOENT too.
        _ if rc == -libc::ENOENT && !client.socket_path().exists() => Daemon,
        _ if rc == -libc::ENOENT => NotFound,
        _ if rc == -libc::EEXIST || rc == -libc::EBUSY || rc == -libc::EAGAIN => Busy,
        ffi::SANLK_ACQUIRE_IDLIVE
        | ffi::SANLK_ACQUIRE_OWNED
        | ffi::SANLK_ACQUIRE_OTHER
        | ffi::SANLK_ACQUIRE_SHRETRY
        | ffi::SANLK_ACQUIRE_OWNED_RETRY
        | ffi::SANLK_ACQUIRE_LVER
        | ffi::SANLK_HOSTID_BUSY => Busy,
        ffi::SANLK_LEADER_MAGIC | ffi::SANLK_ACQUIRE_LOCKSPACE => NotFound,
        ffi::SANLK_AIO_TIMEOUT => Io,
        // acquire in a lockspace this host has not joined
        _ if rc == -libc::ENOSPC => NotFound,
        ffi::SANLK_LEADER_LOCKSPACE
        | ffi::SANLK_LEADER_RESOURCE
        | ffi::SANLK_ADDLS_INVALID_HOSTID => Invalid,
        _ if rc == -libc::EINVAL || rc == -libc::ENAMETOOLONG => Invalid,
        // -EIO, -ETIMEDOUT, SANLK_AIO_TIMEOUT, DBLOCK/LEADER read/write/checksum errors, and
        // anything new: the storage did not answer as expected.
        _ => Io,
    }
}

fn map_rc(client: &Client, what: &str, rc: i32) -> LeaseError {
    let kind = kind_of(client, rc);
    let mut msg = format!("{what}: {} ({rc})", ffi::strerror(rc));
    if kind == LeaseErrorKind::Daemon {
        msg.push_str(&format!(
            " [daemon socket {}]",
            client.socket_path().display()
        ));
    }
    LeaseError::with_code(kind, msg, rc)
}

fn check_name(what: &str, name: &str) -> Result<(), LeaseError> {
    if name.is_empty() || name.len() > ffi::SANLK_NAME_LEN || name.contains('\0') {
        return Err(LeaseError::new(
            LeaseErrorKind::Invalid,
            format!(
                "{what} {name:?} must be 1..={} bytes without NUL",
                ffi::SANLK_NAME_LEN
            ),
        ));
    }
    Ok(())
}

/// The path bytes sanlock gets: absolute (the daemon has its own cwd), no NUL, and short
/// enough that sanlock's escaped form (':' '\\' ' ' doubled) still fits its 1024-byte field.
fn check_path(path: &Path) -> Result<Vec<u8>, LeaseError> {
    let abs = std::path::absolute(path).map_err(|e| LeaseError::io("resolve", path, e))?;
    let bytes = abs.as_os_str().as_bytes().to_vec();
    let escaped = bytes.len()
        + bytes
            .iter()
            .filter(|b| matches!(b, b':' | b'\\' | b' '))
            .count();
    if bytes.contains(&0) || escaped >= ffi::SANLK_PATH_LEN {
        return Err(LeaseError::new(
            LeaseErrorKind::Invalid,
            format!("path {} is too long for sanlock", path.display()),
        ));
    }
    Ok(bytes)
}

/// sanlock leases for shared-storage domains.
#[derive(Debug, Clone)]
pub struct SanlockLeases {
    host_id: u64,
    io_timeout_s: u32,
    client: &'static Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SanlockClient");
        d.field("run_dir", &self.run_dir);
        // try_lock: Debug may be called while this thread holds the registration.
        if let Ok(reg) = self.reg.try_lock() {
            d.field("registered", &reg.fd.is_some())
                .field("generation", &reg.generation);
        }
        d.finish()
    }
}

impl SanlockLeases {
    /// Binds the process to the daemon in `opts.run_dir` (see the module docs) and registers
    /// with it, once per process. Fails with `Daemon` when the daemon is unreachable.
    pub fn new(host_id: u64, opts: SanlockOptions) -> Result<Self, LeaseError> {
        if !ffi::LINKED {
            return Err(LeaseError::new(
                LeaseErrorKind::Daemon,
                "sdm-lease was built without libsanlock (install libsanlock-dev and rebuild)",
            ));
        }
        if host_id == 0 || host_id > MAX_HOST_ID {
            return Err(LeaseError::new(
                LeaseErrorKind::Invalid,
                format!("host id {host_id} is outside 1..={MAX_HOST_ID}"),
            ));
        }
        let client = client_for(opts.run_dir.as_deref())?;
        client.lock().ensure(client)?;
        Ok(SanlockLeases {
            host_id,
            io_timeout_s: opts.io_timeout_s,
            client,
        })
    }

    pub fn host_id(&self) -> u64 {
        self.host_id
    }

    /// The daemon run dir this process is bound to.
    pub fn run_dir(&self) -> &Path {
        &self.client.run_dir
    }

    fn c(&self) -> &'static Client {
        self.client
    }

    fn lockspace(&self, sd_id: &str, ids_path: &Path) -> Result<ffi::SanlkLockspace, LeaseError> {
        check_name("lockspace", sd_id)?;
        let path = check_path(ids_path)?;
        Ok(ffi::SanlkLockspace::new(sd_id, self.host_id, &path, 0, 0))
    }

    fn resource(
        sd_id: &str,
        name: &str,
        path: &Path,
        offset: u64,
        flags: u32,
    ) -> Result<ffi::SanlkResource1, LeaseError> {
        check_name("lockspace", sd_id)?;
        check_name("resource", name)?;
        let bytes = check_path(path)?;
        Ok(ffi::SanlkResource1::new(sd_id, name, &bytes, offset, flags))
    }

    /// Waits for an add/remove of this lockspace that someone else started; returns the
    /// final inq result (0 = joined, -ENOENT = not joined).
    fn wait_lockspace(&self, ls: &mut ffi::SanlkLockspace) -> i32 {
        ffi::inq_lockspace(ls, ffi::SANLK_INQ_WAIT)
    }
}

impl LeaseBackend for SanlockLeases {
    fn kind(&self) -> &'static str {
        "sanlock"
    }

    fn format_domain(
        &self,
        sd_id: &str,
        ids_path: &Path,
        leases_path: &Path,
        io_timeout_s: u32,
    ) -> Result<(), LeaseError> {
        let c = self.c();
        let mut ls = self.lockspace(sd_id, ids_path)?;
        ls.host_id = 0; // the whole area is formatted, not one host's record
        ls.flags = LS_FLAGS;
        let mut sdm = Self::resource(
            sd_id,
            SDM_RESOURCE,
            leases_path,
            SDM_LEASE_OFFSET,
            RES_FLAGS,
        )?;
        ensure_file(ids_path)?;
        ensure_file(leases_path)?;
        let rc = ffi::write_lockspace(&mut ls, io_timeout_s);
        if rc < 0 {
            return Err(map_rc(
                c,
                &format!("write lockspace {sd_id} to {}", ids_path.display()),
                rc,
            ));
        }
        let rc = ffi::write_resource(&mut sdm);
        if rc < 0 {
            return Err(map_rc(
                c,
                &format!("write {SDM_RESOURCE} lease to {}", leases_path.display()),
                rc,
            ));
        }
        Ok(())
    }

    fn join(&self, sd_id: &str, ids_path: &Path) -> Result<(), LeaseError> {
        let c = self.c();
        let mut ls = self.lockspace(sd_id, ids_path)?;
        let what = format!("join lockspace {sd_id} as host {}", self.host_id);
        let start = Instant::now();
        // A concurrent leave makes add return -EAGAIN until the removal is done.
        for _ in 0..60 {
            let rc = ffi::add_lockspace(&mut ls, self.io_timeout_s);
            let rc = match rc {
                0 => {
                    tracing::info!(sd_id, host_id = self.host_id, elapsed = ?start.elapsed(), "joined lockspace");
                    return Ok(());
                }
                _ if rc == -libc::EEXIST => return Ok(()),
                // Someone else (another thread) is joining: wait for its result.
                _ if rc == -libc::EINPROGRESS => match self.wait_lockspace(&mut ls) {
                    0 => return Ok(()),
                    rc if rc == -libc::ENOENT => continue, // their join failed; try ourselves
                    rc => rc,
                },
                _ if rc == -libc::EAGAIN => {
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
                rc => rc,
            };
            return Err(map_rc(c, &what, rc));
        }
        Err(LeaseError::new(
            LeaseErrorKind::Busy,
            format!("{what}: lockspace stays busy"),
        ))
    }

    fn leave(&self, sd_id: &str, ids_path: &Path) -> Result<(), LeaseError> {
        let c = self.c();
        let mut ls = self.lockspace(sd_id, ids_path)?;
        // UNUSED: refuse while leases are held. Without it the daemon would kill this process
        // (every registered holder of the lockspace) to free them.
        let rc = ffi::rem_lockspace(&mut ls, ffi::SANLK_REM_UNUSED);
        let rc = match rc {
            0 => 0,
            _ if rc == -libc::ENOENT => 0,
            _ if rc == -libc::EINPROGRESS => match self.wait_lockspace(&mut ls) {
                rc if rc == -libc::ENOENT => 0,
                0 => -libc::EBUSY, // a join won the race; the lockspace is still joined
                rc => rc,
            },
            rc => rc,
        };
        if rc < 0 {
            let mut e = map_rc(c, &format!("leave lockspace {sd_id}"), rc);
            if rc == -libc::EBUSY {
                e.message = format!("leave lockspace {sd_id}: leases are still held in it");
            }
            return Err(e);
        }
        tracing::info!(sd_id, host_id = self.host_id, "left lockspace");
        Ok(())
    }

    fn init_volume_lease(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
    ) -> Result<(), LeaseError> {
        let c = self.c();
        let mut res = Self::resource(sd_id, vol_id, lease_path, 0, RES_FLAGS)?;
        // Like VDSM: start from an empty file so a re-init never keeps stale tail bytes.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(lease_path)
            .map_err(|e| LeaseError::io("create lease", lease_path, e))?;
        f.set_permissions(std::fs::Permissions::from_mode(LEASE_FILE_MODE))
            .map_err(|e| LeaseError::io("chmod", lease_path, e))?;
        drop(f);
        let rc = ffi::write_resource(&mut res);
        if rc < 0 {
            return Err(map_rc(
                c,
                &format!("write lease {vol_id} to {}", lease_path.display()),
                rc,
            ));
        }
        Ok(())
    }

    fn acquire(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
        offset: u64,
    ) -> Result<Lease, LeaseError> {
        let c = self.c();
        // No ALIGN/SECTOR flags: sanlock reads them from the leader record.
        let mut res = Self::resource(sd_id, vol_id, lease_path, offset, 0)?;
        let what = format!(
            "acquire {sd_id}:{vol_id} at {}:{offset}",
            lease_path.display()
        );
        let mut reg = c.lock();
        let fd = reg.ensure(c)?;
        // OWNER_NOWAIT: fail at once (-243/-247) when a live host owns it instead of waiting
        // for that host to die; a second acquire by this process fails with -EEXIST.
        let rc = ffi::acquire(fd, &mut res, ffi::SANLK_ACQUIRE_OWNER_NOWAIT);
        if rc < 0 {
            if is_connection_error(rc) {
                reg.lost(rc);
            }
            return Err(map_rc(c, &what, rc));
        }
        let generation = reg.generation;
        drop(reg);
        // The version the acquire wrote, for `verify`: a later owner would move it on.
        let mut probe = res;
        let lver = match ffi::read_resource_owners(&mut probe) {
            Ok(owners) if owners.iter().any(|o| o.host_id == self.host_id) => probe.res.lver,
            Ok(owners) => {
                tracing::warn!(
                    sd_id,
                    vol_id,
                    ?owners,
                    "an acquired lease does not name this host"
                );
                0
            }
            Err(rc) => {
                tracing::warn!(sd_id, vol_id, error = %ffi::strerror(rc), "reading an acquired lease failed");
                0
            }
        };
        let held = Held {
            client: c,
            res: Box::new(res),
            generation,
            host_id: self.host_id,
            lver,
        };
        tracing::debug!(sd_id, vol_id, path = %lease_path.display(), offset, "acquired sanlock lease");
        Ok(Lease::new(
            sd_id,
            vol_id,
            lease_path,
            offset,
            LeaseHeld::Sanlock(held),
        ))
    }

    fn status(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
        offset: u64,
    ) -> Result<LeaseStatus, LeaseError> {
        let c = self.c();
        let mut res = Self::resource(sd_id, vol_id, lease_path, offset, 0)?;
        let what = format!(
            "read lease {sd_id}:{vol_id} at {}:{offset}",
            lease_path.display()
        );
        let owners = ffi::read_resource_owners(&mut res).map_err(|rc| map_rc(c, &what, rc))?;
        let lver = res.res.lver;
        let live = if owners.is_empty() {
            Vec::new()
        } else {
            match ffi::get_hosts(&ffi::c_name(sd_id)) {
                Ok(hosts) => live_owners(&owners, &hosts),
                // Right after a join the daemon has not checked the other hosts yet (until
                // its first renewal, 2×io_timeout). Like an UNKNOWN host, the recorded owner
                // keeps the lease until we know better.
                Err(rc) if rc == -libc::EAGAIN => {
                    let mut ids: Vec<u64> = owners.iter().map(|o| o.host_id).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                }
                Err(rc) => {
                    let mut e = map_rc(c, &format!("hosts of lockspace {sd_id}"), rc);
                    if e.kind == LeaseErrorKind::NotFound {
                        e.message = format!(
                            "lockspace {sd_id} is not joined on this host; owner liveness unknown"
                        );
                    }
                    return Err(e);
                }
            }
        };
        Ok(LeaseStatus {
            owners: live,
            version: (lver != 0).then_some(lver),
        })
    }
}

/// The owners that still hold the lease, judged like VDSM's `inspect` (and sanlock's
/// `test_resource_owners`): an owner is free if this daemon has never seen its host, if the
/// host restarted since (generation differs), or if the host is FREE or DEAD. LIVE, FAIL and
/// UNKNOWN (just joined, cannot tell yet) count as holding it.
fn live_owners(owners: &[ffi::SanlkHost], hosts: &[ffi::SanlkHost]) -> Vec<u64> {
    let mut out: Vec<u64> = owners
        .iter()
        .filter(|o| {
            hosts.iter().any(|h| {
                h.host_id == o.host_id
                    && h.generation == o.generation
                    && !matches!(
                        h.flags & ffi::SANLK_HOST_MASK,
                        ffi::SANLK_HOST_FREE | ffi::SANLK_HOST_DEAD
                    )
            })
        })
        .map(|o| o.host_id)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A lease held through this process's registration.
pub(crate) struct Held {
    client: &'static Client,
    // Boxed: the struct is 1.2 KiB and every Lease carries one.
    res: Box<ffi::SanlkResource1>,
    generation: u64,
    host_id: u64,
    /// Lease version right after the acquire (0: unknown, then only the owner is checked).
    lver: u64,
}

impl Held {
    pub(crate) fn verify(&self) -> Result<(), LeaseError> {
        let c = self.client;
        {
            let reg = c.lock();
            if reg.fd.is_none() || reg.generation != self.generation {
                return Err(LeaseError::new(
                    LeaseErrorKind::Lost,
                    "sanlock registration was lost; the daemon released this lease",
                ));
            }
        }
        let mut res = *self.res;
        let owners =
            ffi::read_resource_owners(&mut res).map_err(|rc| map_rc(c, "read lease", rc))?;
        let ours = owners.iter().any(|o| o.host_id == self.host_id);
        if !ours || (self.lver != 0 && res.res.lver != self.lver) {
            let hosts: Vec<u64> = owners.iter().map(|o| o.host_id).collect();
            return Err(LeaseError::new(
                LeaseErrorKind::Lost,
                format!(
                    "the lease is no longer held by host {}: owners {hosts:?}, version {} (was {})",
                    self.host_id, res.res.lver, self.lver
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn release(mut self) -> Result<(), LeaseError> {
        let c = self.client;
        let mut reg = c.lock();
        let fd = match (&reg.fd, reg.generation == self.generation) {
            (Some(fd), true) => fd.as_fd(),
            _ => {
                return Err(LeaseError::new(
                    LeaseErrorKind::Daemon,
                    "sanlock registration was lost; the daemon already released this lease",
                ))
            }
        };
        let rc = ffi::release(fd, &mut self.res);
        if rc < 0 {
            if is_connection_error(rc) {
                reg.lost(rc);
            }
            return Err(map_rc(c, "release sanlock lease", rc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: u64, generation: u64, flags: u32) -> ffi::SanlkHost {
        ffi::SanlkHost {
            host_id: id,
            generation,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn owner_liveness_like_vdsm_inspect() {
        let owner = [host(2, 5, 0)];
        // Never seen -> free.
        assert!(live_owners(&owner, &[host(1, 1, ffi::SANLK_HOST_LIVE)]).is_empty());
        // Restarted since (generation moved on) -> free.
        assert!(live_owners(&owner, &[host(2, 6, ffi::SANLK_HOST_LIVE)]).is_empty());
        // FREE / DEAD -> free.
        assert!(live_owners(&owner, &[host(2, 5, ffi::SANLK_HOST_DEAD)]).is_empty());
        assert!(live_owners(&owner, &[host(2, 5, ffi::SANLK_HOST_FREE)]).is_empty());
        // LIVE / FAIL / UNKNOWN -> owned.
        for f in [
            ffi::SANLK_HOST_LIVE,
            ffi::SANLK_HOST_FAIL,
            ffi::SANLK_HOST_UNKNOWN,
        ] {
            assert_eq!(live_owners(&owner, &[host(2, 5, f | 0x100)]), vec![2]);
        }
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("lockspace", &"a".repeat(48)).is_ok());
        assert_eq!(
            check_name("x", &"a".repeat(49)).unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
        assert_eq!(
            check_name("x", "").unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
        assert_eq!(
            check_name("x", "a\0b").unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
        let rel = check_path(Path::new("rel/x.lease")).unwrap();
        assert_eq!(rel[0], b'/');
        let long = format!("/{}", ":".repeat(600));
        assert_eq!(
            check_path(Path::new(&long)).unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
    }

    #[test]
    fn return_codes_map_to_kinds() {
        let c = Client {
            run_dir: PathBuf::from("/nonexistent-run-dir"),
            reg: Mutex::default(),
        };
        let k = |rc| kind_of(&c, rc);
        assert_eq!(k(-libc::EEXIST), LeaseErrorKind::Busy);
        assert_eq!(k(ffi::SANLK_ACQUIRE_IDLIVE), LeaseErrorKind::Busy);
        assert_eq!(k(ffi::SANLK_ACQUIRE_OWNED_RETRY), LeaseErrorKind::Busy);
        assert_eq!(k(ffi::SANLK_LEADER_MAGIC), LeaseErrorKind::NotFound);
        assert_eq!(k(ffi::SANLK_AIO_TIMEOUT), LeaseErrorKind::Io);
        assert_eq!(k(-libc::EPIPE), LeaseErrorKind::Daemon);
        assert_eq!(k(-libc::ECONNREFUSED), LeaseErrorKind::Daemon);
        // -ENOENT with no socket means "no daemon", not "no lease".
        assert_eq!(k(-libc::ENOENT), LeaseErrorKind::Daemon);
        assert_eq!(k(ffi::SANLK_LEADER_LOCKSPACE), LeaseErrorKind::Invalid);
    }

    #[test]
    fn bad_host_id_is_invalid() {
        let e = SanlockLeases::new(0, SanlockOptions::default()).unwrap_err();
        assert_eq!(
            e.kind(),
            if ffi::LINKED {
                LeaseErrorKind::Invalid
            } else {
                LeaseErrorKind::Daemon
            }
        );
        let e = SanlockLeases::new(MAX_HOST_ID + 1, SanlockOptions::default()).unwrap_err();
        assert_eq!(
            e.kind(),
            if ffi::LINKED {
                LeaseErrorKind::Invalid
            } else {
                LeaseErrorKind::Daemon
            }
        );
    }
}
