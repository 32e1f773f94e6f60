//! Volumes as files: `.meta` reads and durable writes, creation and removal.
//!
//! Creation makes the data file and the lease first and writes the metadata last (durably), so a
//! crash in between leaves only an orphaned data or lease file, which `StorageDomain.check`
//! reports, never a volume that looks complete but is not.

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

/// Creates an image directory.
pub fn make_image_dir(dir: &Path) -> Result<(), StorageError> {
    fs::DirBuilder::new()
        .mode(0o775)
        .create(dir)
        .map_err(|e| StorageError::io("mkdir", dir, e))
}

/// Creates a volume in the (existing, checked) image directory `img_dir`: data, lease, then
/// metadata.
pub fn create(
    sd_id: &Uuid,
    img_dir: &Path,
    leases: &dyn LeaseBackend,
    c: &Creation<'_>,
) -> Result<(), StorageError> {
    let paths = volume_paths_in(img_dir, c.vol);
    if paths.meta.exists() || paths.data.exists() {
        return Err(StorageError::VolumeExists(c.vol.to_string()));
    }
    if let Err(e) = create_data(img_dir, &paths, c) {
        let _ = fs::remove_file(&paths.data);
        return Err(e);
    }
    leases
        .init_volume_lease(sd_id.as_str(), c.vol.as_str(), &paths.lease)
        .inspect_err(|_| {
            let _ = fs::remove_file(&paths.data);
        })?;
    store_metadata(&paths, c.md)?;
    durable::sync_dir(img_dir)?;
    Ok(())
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
    drop(lease);
    let _ = fs::remove_file(&p.lease);
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
