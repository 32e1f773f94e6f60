//! The process's link to its sanlock daemon: one registration per lockspace in which it holds
//! leases, and the acquire and release commands on them.
//!
//! # Why one registration per lockspace, not per process
//! The daemon runs one acquire/release/inquire at a time per registration: a second command
//! for a registration that has one in flight gets -EBUSY at once (`cmd_active` in sanlock's
//! `process_cmd_thread_registered`), whether it comes on the registered socket or on a fresh
//! connection naming the pid (`sanlock_acquire(-1, pid, ...)`). With one registration per
//! process, an acquire stuck on slow storage would therefore hold up the release of every
//! other lease of the process. Storage is slow per domain, so each lockspace gets its own
//! registration: a slow acquire delays the commands of its own lockspace only (whose storage
//! is the slow one anyway), and [`crate::Lease::verify`] needs no registration at all.
//!
//! A registration is opened by the first acquire in its lockspace and closed when its last
//! lease is released. So a process holding leases in one lockspace has exactly one
//! registration, which is what `sanlock client release|inquire -p PID` reach: the daemon sends
//! those to the first registration of that pid it finds.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::api::{self, Api};
use super::bounded::NoAnswer;
use super::errors::{is_connection_error, map_rc};
use super::ffi;
use super::watch::{Registration, Watch};
use crate::{LeaseError, LeaseErrorKind};

/// Where the system sanlock daemon listens when `SANLOCK_RUN_DIR` is not set.
pub const DEFAULT_RUN_DIR: &str = "/run/sanlock";

/// The process-wide link to one sanlock daemon.
pub(crate) struct Client {
    pub(crate) run_dir: PathBuf,
    pub(crate) api: &'static Api,
    spaces: Mutex<HashMap<String, Arc<Space>>>,
    pub(crate) watch: Watch,
}

/// The registration of one lockspace and the leases held through it.
pub(crate) struct Space {
    /// Held for every registered command of the lockspace: the daemon refuses a second one
    /// while one runs, and libsanlock reads each reply on the shared socket.
    state: Mutex<SpaceState>,
}

#[derive(Default)]
struct SpaceState {
    reg: Option<Arc<Registration>>,
    /// Leases held through `reg`, by resource name, each with the flag that tells its
    /// [`Lease`](crate::Lease) it was superseded.
    held: HashMap<String, Arc<AtomicBool>>,
}

/// A lease the daemon now holds for us, before the owner record is checked.
pub(crate) struct Acquired {
    pub(crate) space: Arc<Space>,
    pub(crate) reg: Arc<Registration>,
    pub(crate) revoked: Arc<AtomicBool>,
}

static CLIENT: OnceLock<Client> = OnceLock::new();

fn effective_run_dir(requested: Option<&Path>) -> PathBuf {
    match requested {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SANLOCK_RUN_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
    }
}

/// The error of a host without libsanlock.
pub(crate) fn unavailable(why: &str) -> LeaseError {
    LeaseError::new(
        LeaseErrorKind::Unavailable,
        format!(
            "the sanlock lease backend is unavailable: {why}; install the sanlock package \
             (Debian: sanlock, which brings libsanlock1; Fedora/EL: sanlock and sanlock-lib)"
        ),
    )
}

/// Loads libsanlock and binds this process to the daemon in `requested` (see the module docs
/// of `sanlock` for why it is once per process).
pub(crate) fn client_for(requested: Option<&Path>) -> Result<&'static Client, LeaseError> {
    let api = api::get().map_err(unavailable)?;
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
            api,
            spaces: Mutex::new(HashMap::new()),
            watch: Watch::new(),
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

fn set_cloexec(fd: BorrowedFd<'_>) -> std::io::Result<()> {
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

impl Space {
    fn lock(&self) -> MutexGuard<'_, SpaceState> {
        // Every update below is a single assignment or map operation: a panic elsewhere
        // cannot leave the state half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Client {
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.run_dir.join("sanlock.sock")
    }

    pub(crate) fn err(&self, what: &str, rc: i32) -> LeaseError {
        map_rc(self.api, &self.socket_path(), what, rc)
    }

    /// The error of a daemon call for `lockspace` that got no answer (`bounded::call`). A
    /// daemon that does not answer is frozen or hung: it renews nothing, so the leases of the
    /// lockspace are given up here at once (the registration is shut down, which fences the
    /// jobs holding them and lets the daemon drop them when it runs again). Always `Lost`: the
    /// caller holds nothing it could count on (the agent's AcquireLockFailure, 651).
    pub(crate) fn no_answer(&self, lockspace: &str, what: &str, why: &NoAnswer) -> LeaseError {
        let msg = format!(
            "the sanlock daemon at {} did not answer ({what}): {why}; it is frozen or hung, \
             so this host's leases in lockspace {lockspace} are given up",
            self.socket_path().display()
        );
        self.watch.abandon(lockspace, &msg);
        LeaseError::new(LeaseErrorKind::Lost, msg)
    }

    /// Fails with `Daemon` unless the daemon's socket accepts connections (what every
    /// libsanlock call does first).
    pub(crate) fn check_daemon(&self) -> Result<(), LeaseError> {
        std::os::unix::net::UnixStream::connect(self.socket_path())
            .map(drop)
            .map_err(|e| {
                LeaseError::new(
                    LeaseErrorKind::Daemon,
                    format!(
                        "cannot reach the sanlock daemon at {}: {e}",
                        self.socket_path().display()
                    ),
                )
            })
    }

    fn space(&self, lockspace: &str) -> Arc<Space> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        spaces
            .entry(lockspace.to_string())
            .or_insert_with(|| {
                Arc::new(Space {
                    state: Mutex::new(SpaceState::default()),
                })
            })
            .clone()
    }

    fn register(&self, lockspace: &str) -> Result<Arc<Registration>, LeaseError> {
        let fd = self.api.register().map_err(|rc| {
            let mut e = self.err("register with sanlock", rc);
            // Any registration failure means we cannot hold leases at all.
            e.kind = LeaseErrorKind::Daemon;
            e
        })?;
        // Children (qemu-img, helpers) must not inherit the registration: a leaked copy
        // would keep the daemon from noticing that the agent died.
        set_cloexec(fd.as_fd())
            .map_err(|e| LeaseError::new(LeaseErrorKind::Daemon, format!("set FD_CLOEXEC: {e}")))?;
        let reg = Registration::new(fd, lockspace);
        self.watch
            .add(&reg)
            .map_err(|e| LeaseError::new(LeaseErrorKind::Daemon, e))?;
        tracing::debug!(lockspace, run_dir = %self.run_dir.display(), "registered with sanlock");
        Ok(reg)
    }

    /// Closes the lockspace's registration once nothing is held through it, so that a
    /// process with leases in one lockspace keeps exactly one registration.
    fn close_if_idle(&self, st: &mut SpaceState) {
        if st.held.is_empty() {
            if let Some(reg) = st.reg.take() {
                self.watch.remove(&reg);
            }
        }
    }

    fn lost(&self, reg: &Registration, rc: i32) {
        if is_connection_error(rc) {
            self.watch.mark_lost(
                reg,
                &format!(
                    "a command on the registration failed: {} ({rc})",
                    self.api.strerror(rc)
                ),
            );
        }
    }

    /// Acquires `res` (resource `name` of lockspace `lockspace`) through the lockspace's
    /// registration, then runs `check` (reading what was acquired) under the same command
    /// lock; when `check` fails the lease is released again and nothing is held.
    pub(crate) fn acquire<T>(
        &self,
        lockspace: &str,
        name: &str,
        res: &mut ffi::SanlkResource1,
        what: &str,
        check: impl FnOnce(&mut ffi::SanlkResource1) -> Result<T, LeaseError>,
    ) -> Result<(Acquired, T), LeaseError> {
        let space = self.space(lockspace);
        let mut st = space.lock();
        let reg = match &st.reg {
            Some(r) if !r.is_lost() => r.clone(),
            _ => {
                // A lost registration's leases are gone with it; the watcher reports it.
                st.held.clear();
                st.reg = None;
                let r = self.register(lockspace)?;
                st.reg = Some(r.clone());
                r
            }
        };
        // OWNER_NOWAIT: fail at once (-243/-247) when a live host owns it instead of waiting
        // for that host to die; a second acquire by this host fails with -EEXIST.
        let rc = self
            .api
            .acquire(reg.fd(), res, ffi::SANLK_ACQUIRE_OWNER_NOWAIT);
        if rc < 0 {
            self.lost(&reg, rc);
            self.close_if_idle(&mut st);
            return Err(self.err(what, rc));
        }
        let checked = match check(res) {
            Ok(v) => v,
            Err(e) => {
                let rc = self.api.release(reg.fd(), res);
                if rc < 0 {
                    self.lost(&reg, rc);
                    tracing::error!(
                        lockspace,
                        name,
                        error = %self.err("release", rc),
                        "could not release a lease whose acquire failed its check; it stays held until the registration closes"
                    );
                    if st.held.is_empty() {
                        // Closing the registration makes the daemon drop it.
                        st.reg = None;
                        self.watch.remove(&reg);
                    }
                } else {
                    self.close_if_idle(&mut st);
                }
                return Err(e);
            }
        };
        let revoked = Arc::new(AtomicBool::new(false));
        // A lease still recorded under this name was released behind its holder's back (the
        // daemon would have refused a second acquire otherwise): that holder must not release
        // the new one.
        if let Some(old) = st.held.insert(name.to_string(), revoked.clone()) {
            old.store(true, Ordering::Release);
        }
        drop(st);
        Ok((
            Acquired {
                space,
                reg,
                revoked,
            },
            checked,
        ))
    }

    /// Releases a lease acquired by [`Client::acquire`].
    pub(crate) fn release(
        &self,
        a: &Acquired,
        name: &str,
        res: &mut ffi::SanlkResource1,
    ) -> Result<(), LeaseError> {
        let mut st = a.space.lock();
        let current = st.reg.as_ref().is_some_and(|r| Arc::ptr_eq(r, &a.reg));
        if a.reg.is_lost() || !current {
            return Err(LeaseError::new(
                LeaseErrorKind::Daemon,
                format!(
                    "sanlock registration was lost ({}); the daemon already released this lease",
                    a.reg.reason()
                ),
            ));
        }
        if a.revoked.load(Ordering::Acquire) {
            return Err(LeaseError::new(
                LeaseErrorKind::Lost,
                "the lease was released behind this holder's back and is now held by another \
                 holder in this process; left to that holder",
            ));
        }
        let rc = self.api.release(a.reg.fd(), res);
        st.held.remove(name);
        if rc < 0 {
            self.lost(&a.reg, rc);
        }
        self.close_if_idle(&mut st);
        if rc < 0 {
            return Err(self.err("release sanlock lease", rc));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SanlockClient")
            .field("run_dir", &self.run_dir)
            .field("registrations_lost", &self.watch.losses())
            .finish()
    }
}
