//! Single-host leases: an OFD write lock (`F_OFD_SETLK`) on the whole `<vol>.lease` file, or,
//! for a lease at a non-zero offset of a shared area (a block domain's `leases` LV), on that
//! lease's 1 MiB byte range only, so that the leases sharing the area stay independent.
//!
//! OFD locks belong to an open file description, not to a process, so two jobs (threads) of
//! one agent exclude each other just like two processes do, and the kernel drops the lock
//! when the last descriptor closes, including when the agent is killed. They say nothing to
//! other hosts.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{
    Held as LeaseHeld, Lease, LeaseBackend, LeaseError, LeaseErrorKind, LeaseStatus, ALIGNMENT,
};

/// Mode of lease files and `dom_md/{ids,leases}`, as VDSM creates them.
pub(crate) const LEASE_FILE_MODE: u32 = 0o660;

/// OFD-lock leases for single-host domains. Works unprivileged and without sanlock.
#[derive(Debug, Clone)]
pub struct LocalLeases {
    host_id: u64,
}

impl LocalLeases {
    /// `host_id` is what `status` reports as the owner while a lease is held.
    pub fn new(host_id: u64) -> Self {
        LocalLeases { host_id }
    }

    pub fn host_id(&self) -> u64 {
        self.host_id
    }
}

/// The open file description that carries the lock.
pub(crate) struct Held {
    file: File,
    offset: u64,
}

impl Held {
    pub(crate) fn release(self) {
        // Unlock explicitly before closing: if the descriptor was ever duplicated into a
        // child (fork without exec), closing ours alone would not end the lock.
        if let Err(e) = ofd_setlk(
            self.file.as_fd(),
            libc::F_UNLCK as libc::c_short,
            self.offset,
        ) {
            tracing::warn!(error = %e, "unlocking local lease failed; closing it anyway");
        }
    }
}

/// Creates `path` with mode 0660 if it does not exist; leaves an existing file untouched.
pub(crate) fn ensure_file(path: &Path) -> Result<(), LeaseError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(LEASE_FILE_MODE)
        .open(path)
    {
        Ok(f) => {
            // The umask may have cleared group bits; the sanlock daemon (another user in
            // production) needs them.
            f.set_permissions(std::fs::Permissions::from_mode(LEASE_FILE_MODE))
                .map_err(|e| LeaseError::io("chmod", path, e))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(LeaseError::io("create", path, e)),
    }
}

/// The lock of the lease at `offset`: the whole file for a lease file (offset 0), the lease's
/// own 1 MiB slot in a shared area.
fn lease_lock(l_type: libc::c_short, offset: u64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers (plus padding on some ABIs) for which
    // all-zero bytes are a valid value; OFD commands require l_pid == 0.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    if offset == 0 {
        fl.l_start = 0;
        fl.l_len = 0; // to end of file, however large it grows
    } else {
        fl.l_start = offset as libc::off_t;
        fl.l_len = ALIGNMENT as libc::off_t;
    }
    fl
}

/// `fcntl(fd, F_OFD_SETLK, the lease's range)`: never blocks; EAGAIN/EACCES when someone holds
/// it.
fn ofd_setlk(fd: BorrowedFd<'_>, l_type: libc::c_short, offset: u64) -> io::Result<()> {
    let fl = lease_lock(l_type, offset);
    // SAFETY: `fd` is open for the call and `fl` is a valid flock the kernel only reads.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fcntl(fd, F_OFD_GETLK)`: would a write lock on the lease's range conflict? Returns the
/// lock type found (`F_UNLCK` when free).
fn ofd_getlk(fd: BorrowedFd<'_>, offset: u64) -> io::Result<libc::c_short> {
    let mut fl = lease_lock(libc::F_WRLCK as libc::c_short, offset);
    // SAFETY: `fd` is open for the call and `fl` is a valid flock the kernel overwrites.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type)
}

impl LeaseBackend for LocalLeases {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn format_domain(
        &self,
        _sd_id: &str,
        ids_path: &Path,
        leases_path: &Path,
        _io_timeout_s: u32,
    ) -> Result<(), LeaseError> {
        ensure_file(ids_path)?;
        ensure_file(leases_path)
    }

    fn join(&self, _sd_id: &str, _ids_path: &Path) -> Result<(), LeaseError> {
        Ok(())
    }

    fn leave(&self, _sd_id: &str, _ids_path: &Path) -> Result<(), LeaseError> {
        Ok(())
    }

    fn init_volume_lease(
        &self,
        _sd_id: &str,
        _vol_id: &str,
        lease_path: &Path,
    ) -> Result<(), LeaseError> {
        ensure_file(lease_path)
    }

    fn init_lease_at(
        &self,
        _sd_id: &str,
        _vol_id: &str,
        path: &Path,
        _offset: u64,
    ) -> Result<(), LeaseError> {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| LeaseError::io("lease area", path, e))
    }

    fn acquire(
        &self,
        sd_id: &str,
        vol_id: &str,
        lease_path: &Path,
        offset: u64,
    ) -> Result<Lease, LeaseError> {
        // A fresh open file description per acquire: that is what makes two jobs of this
        // process exclude each other. The file is only a lock anchor, so a missing one (oVirt's
        // LOCALFS domains have no `.lease` files) is created.
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o660)
            .open(lease_path)
            .map_err(|e| LeaseError::io("open lease", lease_path, e))?;
        match ofd_setlk(file.as_fd(), libc::F_WRLCK as libc::c_short, offset) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                return Err(LeaseError::with_code(
                    LeaseErrorKind::Busy,
                    format!("lease {} is held on this host", lease_path.display()),
                    -e.raw_os_error().unwrap_or(libc::EAGAIN),
                ));
            }
            Err(e) => return Err(LeaseError::io("lock lease", lease_path, e)),
        }
        Ok(Lease::new(
            sd_id,
            vol_id,
            lease_path,
            offset,
            LeaseHeld::Local(Held { file, offset }),
        ))
    }

    fn status(
        &self,
        _sd_id: &str,
        _vol_id: &str,
        lease_path: &Path,
        offset: u64,
    ) -> Result<LeaseStatus, LeaseError> {
        // Ask from a separate open file description so that our own holders show up too.
        let file = match File::open(lease_path) {
            Ok(f) => f,
            // Nobody can hold a lock on a file that does not exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LeaseStatus {
                    owners: vec![],
                    version: None,
                })
            }
            Err(e) => return Err(LeaseError::io("open lease", lease_path, e)),
        };
        let found = ofd_getlk(file.as_fd(), offset)
            .map_err(|e| LeaseError::io("query lease", lease_path, e))?;
        let owners = if found == libc::F_UNLCK as libc::c_short {
            vec![]
        } else {
            vec![self.host_id]
        };
        Ok(LeaseStatus {
            owners,
            version: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, LocalLeases) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.lease");
        let leases = LocalLeases::new(7);
        leases.init_volume_lease("sd", "vol", &path).unwrap();
        (dir, path, leases)
    }

    #[test]
    fn acquire_busy_release_status() {
        let (_dir, path, leases) = setup();
        assert_eq!(
            leases.status("sd", "vol", &path, 0).unwrap(),
            LeaseStatus::default()
        );

        let lease = leases.acquire("sd", "vol", &path, 0).unwrap();
        assert_eq!(lease.kind(), "local");
        assert_eq!(lease.vol_id(), "vol");
        assert_eq!(
            leases.status("sd", "vol", &path, 0).unwrap(),
            LeaseStatus {
                owners: vec![7],
                version: None
            }
        );

        let err = leases.acquire("sd", "vol", &path, 0).unwrap_err();
        assert_eq!(err.kind(), LeaseErrorKind::Busy, "{err}");

        lease.release().unwrap();
        assert!(leases
            .status("sd", "vol", &path, 0)
            .unwrap()
            .owners
            .is_empty());
        // Free again: a new acquire works, and dropping releases it.
        drop(leases.acquire("sd", "vol", &path, 0).unwrap());
        assert!(leases
            .status("sd", "vol", &path, 0)
            .unwrap()
            .owners
            .is_empty());
    }

    #[test]
    fn init_creates_0660_and_keeps_existing() {
        let dir = tempfile::tempdir().unwrap();
        let leases = LocalLeases::new(1);
        let ids = dir.path().join("ids");
        let lpath = dir.path().join("leases");
        leases.format_domain("sd", &ids, &lpath, 10).unwrap();
        for p in [&ids, &lpath] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o660, "{}", p.display());
        }
        std::fs::write(&ids, b"keep").unwrap();
        leases.format_domain("sd", &ids, &lpath, 10).unwrap();
        assert_eq!(std::fs::read(&ids).unwrap(), b"keep");
        leases.join("sd", &ids).unwrap();
        leases.leave("sd", &ids).unwrap();
    }

    #[test]
    fn missing_lease_file_is_free_and_created_on_acquire() {
        // oVirt LOCALFS domains have no `.lease` files: such a volume is free, and taking its
        // lease creates the anchor file.
        let dir = tempfile::tempdir().unwrap();
        let leases = LocalLeases::new(1);
        let p = dir.path().join("nope.lease");
        assert_eq!(
            leases.status("sd", "v", &p, 0).unwrap().owners,
            Vec::<u64>::new()
        );
        let held = leases.acquire("sd", "v", &p, 0).unwrap();
        assert!(p.exists());
        assert_eq!(leases.status("sd", "v", &p, 0).unwrap().owners, vec![1]);
        held.release().unwrap();
        let p = dir.path().join("no-dir").join("v.lease");
        assert_eq!(
            leases.init_volume_lease("sd", "v", &p).unwrap_err().kind(),
            LeaseErrorKind::NotFound
        );
        assert_eq!(
            leases.acquire("sd", "v", &p, 0).unwrap_err().kind(),
            LeaseErrorKind::NotFound
        );
    }

    #[test]
    fn concurrent_acquires_exactly_one_wins() {
        let (_dir, path, leases) = setup();
        let leases = Arc::new(leases);
        const N: usize = 16;
        for _round in 0..5 {
            let barrier = Arc::new(Barrier::new(N));
            let handles: Vec<_> = (0..N)
                .map(|_| {
                    let (leases, path, barrier) = (leases.clone(), path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        leases.acquire("sd", "vol", &path, 0)
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(winners, 1);
            assert!(results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| e.is_busy()));
            // The winner's lease is dropped here, so the next round starts free.
        }
        assert!(leases
            .status("sd", "vol", &path, 0)
            .unwrap()
            .owners
            .is_empty());
    }

    #[test]
    fn leases_at_offsets_of_one_area_are_independent() {
        // A block domain's `leases` LV holds every volume's lease at its own 1 MiB slot.
        let dir = tempfile::tempdir().unwrap();
        let area = dir.path().join("leases");
        std::fs::File::create(&area)
            .unwrap()
            .set_len(200 * ALIGNMENT)
            .unwrap();
        let leases = LocalLeases::new(3);
        leases
            .init_lease_at("sd", "a", &area, 101 * ALIGNMENT)
            .unwrap();
        let a = leases.acquire("sd", "a", &area, 101 * ALIGNMENT).unwrap();
        let b = leases.acquire("sd", "b", &area, 102 * ALIGNMENT).unwrap();
        let again = leases
            .acquire("sd", "a", &area, 101 * ALIGNMENT)
            .unwrap_err();
        assert!(again.is_busy(), "{again}");
        assert_eq!(
            leases
                .status("sd", "a", &area, 101 * ALIGNMENT)
                .unwrap()
                .owners,
            vec![3]
        );
        assert!(leases
            .status("sd", "c", &area, 103 * ALIGNMENT)
            .unwrap()
            .owners
            .is_empty());
        drop(a);
        assert!(leases
            .status("sd", "a", &area, 101 * ALIGNMENT)
            .unwrap()
            .owners
            .is_empty());
        b.release().unwrap();
        assert_eq!(
            leases
                .init_lease_at("sd", "x", &dir.path().join("nope"), ALIGNMENT)
                .unwrap_err()
                .kind(),
            LeaseErrorKind::NotFound
        );
    }

    #[test]
    fn lease_moves_between_threads() {
        let (_dir, path, leases) = setup();
        let lease = leases.acquire("sd", "vol", &path, 0).unwrap();
        std::thread::spawn(move || lease.release().unwrap())
            .join()
            .unwrap();
        assert!(leases
            .status("sd", "vol", &path, 0)
            .unwrap()
            .owners
            .is_empty());
    }
}
