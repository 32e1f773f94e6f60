//! Volumes as files: `.meta` reads and durable writes, creation and removal.
//!
//! Creation happens under the volume's own lease, and in this order: the lease (made whole in a
//! temporary file, then linked to `<vol>.lease`, so that name is always a lease that can be
//! taken), the lease taken, the data, and the metadata last (durably). A crash in between
//! leaves a half-made volume — data and lease without `.meta` — which `StorageDomain.check`
//! reports, never a volume that looks complete but is not; no engine can believe in it. The
//! next `Volume.create` of that volume takes it over under its lease: whoever is creating it
//! right now holds that lease (651 then), so a free lease means its creator is gone.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use sdm_lease::{Lease, LeaseBackend};
use sdm_proto::{Preallocation, Uuid, VolumeFormat};

use super::paths::{list_volumes_in, volume_paths_in, VolumePaths};
use crate::durable;
use crate::storage::backend::Creation;
use crate::storage::md::{VolumeMetadata, CAPACITY_ALIGN};
use crate::storage::{qemu, StorageError};

/// Reads a `.meta` file.
pub fn read_metadata_at(meta: &Path) -> Result<VolumeMetadata, StorageError> {
    let raw = durable::read_direct(meta)?;
    VolumeMetadata::parse(&raw)
}

/// Writes a volume's metadata as it is, atomically and durably.
pub fn store_metadata(paths: &VolumePaths, md: &VolumeMetadata) -> Result<(), StorageError> {
    let bytes = md.to_bytes()?;
    durable::replace(&paths.meta, &bytes)?;
    Ok(())
}

/// Creates an image directory (one that another creator made meanwhile is fine).
pub fn make_image_dir(dir: &Path) -> Result<(), StorageError> {
    match fs::DirBuilder::new().mode(0o775).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(StorageError::io("mkdir", dir, e))
        }
        _ => Ok(()),
    }
}

/// Creates a volume in the (existing, checked) image directory `img_dir` under its lease, or
/// takes over a half-made one (see the module documentation): VolumeExists when its `.meta`
/// exists, 651 (lease busy) while another job or host creates it.
pub fn create(
    sd_id: &Uuid,
    img_dir: &Path,
    leases: &dyn LeaseBackend,
    c: &Creation<'_>,
) -> Result<(), StorageError> {
    let paths = volume_paths_in(img_dir, c.vol);
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    if exists(&paths.meta) {
        return Err(StorageError::VolumeExists(c.vol.to_string()));
    }
    make_lease(sd_id, c.vol, &paths.lease, leases)?;
    let lease = leases.acquire(sd_id.as_str(), c.vol.as_str(), &paths.lease, 0)?;
    // Under the lease: made meanwhile by the creator that held it before us.
    if exists(&paths.meta) {
        return Err(StorageError::VolumeExists(c.vol.to_string()));
    }
    let stale = remove_half_made(img_dir, c.vol)?;
    if !stale.is_empty() {
        tracing::info!(sd_id = %sd_id, vol_id = %c.vol, files = ?stale, "taking over a half-made volume whose creator is gone");
    }
    if let Err(e) = create_data(img_dir, &paths, c) {
        abandon(&paths, lease);
        return Err(e);
    }
    lease.verify()?;
    if let Err(e) = store_metadata(&paths, c.md) {
        // No `.meta` (the write is atomic): the volume never existed, so nothing of it stays.
        if !exists(&paths.meta) {
            abandon(&paths, lease);
        }
        return Err(e);
    }
    durable::sync_dir(img_dir)?;
    if let Err(e) = lease.release() {
        tracing::warn!(vol_id = %c.vol, error = %e, "releasing a new volume's lease failed");
    }
    Ok(())
}

/// Removes what a refused creation made — its data, then its lease file — while still
/// holding the lease, then releases it: a refused `Volume.create` leaves no half-made volume
/// behind (nothing would report it as anything but an orphan). The lease file goes before the
/// release, so no other creator can take this lease and start on files we then remove; one
/// that comes meanwhile makes a new lease file and works on its own.
fn abandon(paths: &VolumePaths, lease: Lease) {
    for p in [&paths.data, &paths.lease] {
        if let Err(e) = fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "removing a refused creation's file failed; it stays as an orphan");
            }
        }
    }
    if let Err(e) = lease.release() {
        tracing::warn!(path = %paths.lease.display(), error = %e, "releasing a refused creation's lease failed");
    }
}

/// Makes `<vol>.lease` a valid lease unless it exists: initialized in a temporary file of this
/// writer's own, then linked to its name. A link never replaces a file, so two creators end
/// with one lease (the acquire then decides between them), and the name never shows a lease
/// that is half written. Where the file system has no hard links, the lease file is created
/// exclusively and initialized in place.
fn make_lease(
    sd_id: &Uuid,
    vol: &Uuid,
    lease: &Path,
    leases: &dyn LeaseBackend,
) -> Result<(), StorageError> {
    match fs::symlink_metadata(lease) {
        Ok(m) if m.is_file() => return Ok(()),
        // A link planted in the domain: the lease backend would write through it.
        Ok(_) => {
            return Err(StorageError::Invalid(format!(
                "{} is not a regular file; refusing to use it",
                lease.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("stat", lease, e)),
    }
    let tmp = durable::temp_path(lease);
    let linked = leases
        .init_volume_lease(sd_id.as_str(), vol.as_str(), &tmp)
        .map_err(StorageError::from)
        .map(|()| fs::hard_link(&tmp, lease));
    let _ = fs::remove_file(&tmp);
    match linked? {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)
            ) =>
        {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o660)
                .open(lease)
            {
                Ok(_) => Ok(leases.init_volume_lease(sd_id.as_str(), vol.as_str(), lease)?),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(StorageError::io("create", lease, e)),
            }
        }
        Err(e) => Err(StorageError::io("link", lease, e)),
    }
}

/// Removes what an earlier creator of `vol` left, with the volume's lease held: its data and
/// the temporary files of its metadata writes (every metadata writer holds the lease, so
/// these writers are gone). Returns the names removed.
fn remove_half_made(img_dir: &Path, vol: &Uuid) -> Result<Vec<String>, StorageError> {
    let meta_temp = format!("{vol}.meta{}", durable::TEMP_MARK);
    let mut removed = Vec::new();
    for e in fs::read_dir(img_dir).map_err(|e| StorageError::io("list", img_dir, e))? {
        let e = e.map_err(|e| StorageError::io("list", img_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name == vol.as_str()
            || name == format!("{vol}.new")
            || name == format!("{vol}.meta.new")
            || (name.starts_with(&meta_temp) && durable::is_temp_name(&name));
        if !ours {
            continue;
        }
        let p = e.path();
        match fs::remove_file(&p) {
            Ok(()) => removed.push(name),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(StorageError::io("remove", &p, err)),
        }
    }
    if !removed.is_empty() {
        durable::sync_dir(img_dir)?;
    }
    Ok(removed)
}

fn create_data(img_dir: &Path, paths: &VolumePaths, c: &Creation<'_>) -> Result<(), StorageError> {
    let capacity = c.md.capacity;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(&paths.data)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StorageError::VolumeExists(c.vol.to_string()),
            _ => StorageError::io("create", &paths.data, e),
        })?;
    match c.md.format {
        VolumeFormat::Raw => {
            f.set_len(capacity)
                .map_err(|e| StorageError::io("truncate", &paths.data, e))?;
            if c.md.allocation == Preallocation::Preallocated {
                preallocate(&f, &paths.data, 0, capacity)?;
            }
        }
        VolumeFormat::Cow => {
            drop(f);
            let mut cmd = Command::new("qemu-img");
            cmd.current_dir(img_dir)
                .args(["create", "-q", "-f", "qcow2", "-o", "compat=1.1"]);
            if let Some((pid, pmd)) = c.parent {
                // The backing file is the bare parent UUID, relative to the image directory, as
                // oVirt writes it; -u because the size is given and the parent need not be opened.
                cmd.args([
                    "-b",
                    pid.as_str(),
                    "-F",
                    qemu::format_name(pmd.format),
                    "-u",
                ]);
            }
            cmd.arg(c.vol.as_str()).arg(capacity.to_string());
            qemu::run(&mut cmd)?;
            if c.md.allocation == Preallocation::Preallocated {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&paths.data)
                    .map_err(|e| StorageError::io("open", &paths.data, e))?;
                let start = f
                    .metadata()
                    .map_err(|e| StorageError::io("stat", &paths.data, e))?
                    .len()
                    .next_multiple_of(CAPACITY_ALIGN);
                if start < capacity {
                    preallocate(&f, &paths.data, start, capacity - start)?;
                }
            }
        }
    }
    let f = OpenOptions::new()
        .write(true)
        .open(&paths.data)
        .map_err(|e| StorageError::io("open", &paths.data, e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("fsync", &paths.data, e))
}

/// Allocates `[offset, offset+len)`: fallocate, or zero writes where the file system has no
/// fallocate (EOPNOTSUPP).
fn preallocate(f: &fs::File, path: &Path, offset: u64, len: u64) -> Result<(), StorageError> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid open fd; no memory is passed.
    let rc =
        unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(StorageError::io("fallocate", path, err));
    }
    let zeros = vec![0u8; 1 << 20];
    let mut w = f;
    use std::io::{Seek, SeekFrom};
    w.seek(SeekFrom::Start(offset))
        .map_err(|e| StorageError::io("seek", path, e))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        w.write_all(&zeros[..n])
            .map_err(|e| StorageError::io("write", path, e))?;
        left -= n as u64;
    }
    Ok(())
}

/// Removes volume `vol` of image directory `dir`, whose lease the caller holds: metadata first
/// (once it is gone the volume no longer exists; the rest are orphans at worst), the data, then
/// the lease file after the lease is released; the directory goes with its last file.
pub fn remove(dir: &Path, vol: &Uuid, lease: Lease) -> Result<(), StorageError> {
    let p = volume_paths_in(dir, vol);
    for f in [&p.meta, &p.data, &p.checkpoint] {
        match fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", f, e)),
        }
    }
    // The lease file goes while the lease is held: released first, the name could be taken by
    // a creator of the same volume id (the file exists, so it is used as it is) and then
    // unlinked under it, leaving that creator holding a lease nobody else can find.
    let _ = fs::remove_file(&p.lease);
    drop(lease);
    durable::sync_dir(dir)?;
    if list_volumes_in(dir).map(|v| v.is_empty()).unwrap_or(false)
        && fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}
