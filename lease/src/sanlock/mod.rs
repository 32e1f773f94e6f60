//! Shared-storage leases through the local sanlock daemon.
//!
//! Model (the same one VDSM uses):
//! * A domain is a sanlock *lockspace* named after its UUID, stored in `dom_md/ids`; a host
//!   joins it with its host id (a delta lease, renewed by the daemon).
//! * A volume lease is a paxos *resource* named after the volume UUID, in the lockspace of
//!   its domain, stored at offset 0 of `<vol>.lease`.
//! * Every lease is tied to a registration of this process with the daemon, which releases
//!   them all if the process exits or is killed. There is one registration per lockspace in
//!   which the process holds leases (`registry.rs` says why), watched by a thread that notices
//!   at once when the daemon drops it ([`SanlockLeases::on_registration_lost`]).
//! * libsanlock is loaded at run time (`api.rs`): without it, [`SanlockLeases::new`] fails
//!   with [`LeaseErrorKind::Unavailable`] and the local backend still works.
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

mod api;
mod bounded;
mod errors;
mod ffi;
mod held;
mod registry;
mod watch;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::local::{ensure_file, LEASE_FILE_MODE};
use crate::{
    Held as LeaseHeld, Lease, LeaseBackend, LeaseError, LeaseErrorKind, LeaseStatus, MAX_HOST_ID,
    SDM_LEASE_OFFSET, SDM_RESOURCE,
};
use errors::{check_name, check_path};
use registry::Client;

pub(crate) use held::Held;
pub use registry::DEFAULT_RUN_DIR;
pub use watch::{LostSubscription, RegistrationLost};

/// Lockspaces and leases formatted by sdm: 1 MiB areas of 512-byte sectors (max 2000 hosts).
const RES_FLAGS: u32 = ffi::SANLK_RES_ALIGN1M | ffi::SANLK_RES_SECTOR512;
const LS_FLAGS: u32 = ffi::SANLK_LSF_ALIGN1M | ffi::SANLK_LSF_SECTOR512;

#[cfg(feature = "test-support")]
pub(crate) fn set_fail_next_acquired_read(rc: i32) {
    held::FAIL_NEXT_ACQUIRED_READ.store(rc, std::sync::atomic::Ordering::Release);
}

/// Whether libsanlock can be loaded (see [`crate::libsanlock_available`]).
pub(crate) fn available() -> bool {
    api::get().is_ok()
}

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

/// sanlock leases for shared-storage domains.
#[derive(Debug, Clone)]
pub struct SanlockLeases {
    host_id: u64,
    io_timeout_s: u32,
    client: &'static Client,
}

impl SanlockLeases {
    /// Loads libsanlock, binds the process to the daemon in `opts.run_dir` (see the module
    /// docs) and checks that the daemon answers. Fails with `Unavailable` when libsanlock is
    /// not installed, `Daemon` when the daemon is unreachable. Registrations are made by the
    /// first acquire in each lockspace.
    pub fn new(host_id: u64, opts: SanlockOptions) -> Result<Self, LeaseError> {
        if host_id == 0 || host_id > MAX_HOST_ID {
            return Err(LeaseError::new(
                LeaseErrorKind::Invalid,
                format!("host id {host_id} is outside 1..={MAX_HOST_ID}"),
            ));
        }
        let client = registry::client_for(opts.run_dir.as_deref())?;
        client.check_daemon()?;
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

    /// Calls `f` (on the watcher thread) each time this process loses a registration: the
    /// daemon exited, restarted or dropped the connection, and with it every lease of this
    /// process in [`RegistrationLost::lockspace`]. Jobs holding such leases must stop writing;
    /// their [`Lease::verify_fast`] fails from then on. Keep `f` short and non-blocking (send
    /// to a channel, set a flag). Dropping the returned handle unsubscribes.
    pub fn on_registration_lost(
        &self,
        f: impl Fn(&RegistrationLost) + Send + Sync + 'static,
    ) -> LostSubscription {
        self.client.watch.subscribe(f)
    }

    /// How many registrations this process has lost so far; a cheap generation number to
    /// compare before and after a piece of work.
    pub fn registrations_lost(&self) -> u64 {
        self.client.watch.losses()
    }

    /// How long a job waits for one call into the daemon (see `bounded.rs`).
    fn call_timeout(&self) -> Duration {
        bounded::call_timeout(self.io_timeout_s)
    }

    /// Daemon calls given up on (no answer in time) that still wait for the daemon in the
    /// background; at most a small fixed number, past which new calls fail at once.
    pub fn stuck_calls(&self) -> usize {
        bounded::stuck_calls()
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
        self.client.api.inq_lockspace(ls, ffi::SANLK_INQ_WAIT)
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
        let rc = c.api.write_lockspace(&mut ls, io_timeout_s);
        if rc < 0 {
            return Err(c.err(
                &format!("write lockspace {sd_id} to {}", ids_path.display()),
                rc,
            ));
        }
        let rc = c.api.write_resource(&mut sdm);
        if rc < 0 {
            return Err(c.err(
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
            let rc = c.api.add_lockspace(&mut ls, self.io_timeout_s);
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
            return Err(c.err(&what, rc));
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
        let rc = c.api.rem_lockspace(&mut ls, ffi::SANLK_REM_UNUSED);
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
            let mut e = c.err(&format!("leave lockspace {sd_id}"), rc);
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
        let rc = c.api.write_resource(&mut res);
        if rc < 0 {
            return Err(c.err(
                &format!("write lease {vol_id} to {}", lease_path.display()),
                rc,
            ));
        }
        Ok(())
    }

    fn init_lease_at(
        &self,
        sd_id: &str,
        vol_id: &str,
        path: &Path,
        offset: u64,
    ) -> Result<(), LeaseError> {
        let c = self.c();
        let mut res = Self::resource(sd_id, vol_id, path, offset, RES_FLAGS)?;
        let rc = c.api.write_resource(&mut res);
        if rc < 0 {
            return Err(c.err(
                &format!("write lease {vol_id} to {}:{offset}", path.display()),
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
        let res = Self::resource(sd_id, vol_id, lease_path, offset, 0)?;
        let what = format!(
            "acquire {sd_id}:{vol_id} at {}:{offset}",
            lease_path.display()
        );
        let host_id = self.host_id;
        let (ls, name, w) = (sd_id.to_string(), vol_id.to_string(), what.clone());
        let late_name = name.clone();
        // An acquire is a few paxos rounds on the lease area: twice a single call's bound.
        let got = bounded::call(
            &what,
            2 * self.call_timeout(),
            move || {
                let mut res = res;
                c.acquire(&ls, &name, &mut res, &w, |res| {
                    held::read_stamp(c, res, host_id, &w)
                })
                .map(|(a, stamp)| (a, stamp, res))
            },
            // Acquired after the caller gave up: nobody holds it, so it goes back at once
            // (the registration was shut down meanwhile, which releases it anyway).
            move |late| {
                if let Ok((a, _, mut res)) = late {
                    if let Err(e) = c.release(&a, &late_name, &mut res) {
                        tracing::debug!(name = %late_name, error = %e, "releasing a lease acquired after its caller gave up");
                    }
                }
            },
        );
        let (acquired, stamp, res) = match got {
            Ok(r) => r?,
            Err(why) => return Err(c.no_answer(sd_id, &what, &why)),
        };
        tracing::debug!(sd_id, vol_id, path = %lease_path.display(), offset, lver = stamp.lver, generation = stamp.generation, "acquired sanlock lease");
        let held = Held {
            client: c,
            acquired,
            name: vol_id.to_string(),
            res: Box::new(res),
            host_id: self.host_id,
            stamp,
            timeout: self.call_timeout(),
        };
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
        let sd = sd_id.to_string();
        let w = what.clone();
        // Volume.getInfo, not a job: a frozen daemon fails the call without giving leases up.
        bounded::call(
            &what,
            self.call_timeout(),
            move || status_of(c, &sd, &mut res, &w),
            |_| {},
        )
        .unwrap_or_else(|why| {
            Err(LeaseError::new(
                LeaseErrorKind::Daemon,
                format!(
                    "the sanlock daemon at {} did not answer ({what}): {why}",
                    c.socket_path().display()
                ),
            ))
        })
    }
}

/// Owners and version of a lease, and which owners are alive (see [`live_owners`]).
fn status_of(
    c: &Client,
    sd_id: &str,
    res: &mut ffi::SanlkResource1,
    what: &str,
) -> Result<LeaseStatus, LeaseError> {
    let owners = c
        .api
        .read_resource_owners(res)
        .map_err(|rc| c.err(what, rc))?;
    let lver = res.res.lver;
    let live = if owners.is_empty() {
        Vec::new()
    } else {
        match c.api.get_hosts(&api::c_name(sd_id)) {
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
                let mut e = c.err(&format!("hosts of lockspace {sd_id}"), rc);
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
    fn bad_host_id_is_invalid() {
        for id in [0, MAX_HOST_ID + 1] {
            let e = SanlockLeases::new(id, SanlockOptions::default()).unwrap_err();
            assert_eq!(e.kind(), LeaseErrorKind::Invalid, "{e}");
        }
    }

    #[test]
    fn without_libsanlock_the_error_names_library_and_package() {
        let e = registry::unavailable("cannot load libsanlock.so.1: not found");
        assert_eq!(e.kind(), LeaseErrorKind::Unavailable);
        let msg = e.to_string();
        assert!(msg.contains("libsanlock.so.1"), "{msg}");
        assert!(
            msg.contains("libsanlock1") && msg.contains("sanlock package"),
            "{msg}"
        );
    }
}
