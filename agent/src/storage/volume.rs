//! Volumes of a file domain: creation, metadata reads and writes, and `Volume.getInfo`.
//!
//! A volume exists once its `.meta` exists: creation makes the data file and the lease first and
//! writes the metadata last (durably), so a crash in between leaves only an orphaned data or
//! lease file, which `StorageDomain.check` reports, never a volume that looks complete but is not.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use sdm_proto::{
    LeaseInfo, Legality, Preallocation, Size, Uuid, VolumeFormat, VolumeInfo, VolumeRole,
};

use super::domain::{Domain, VolumePaths};
use super::md::VolumeMetadata;
use super::StorageError;
use crate::durable;

/// Granularity capacities are rounded up to, as oVirt does.
pub const CAPACITY_ALIGN: u64 = 4096;

/// What `Volume.create` asks for.
#[derive(Clone, Debug)]
pub struct NewVolume {
    /// Image (created if missing).
    pub img: Uuid,
    /// Volume.
    pub vol: Uuid,
    /// Virtual size in bytes (rounded up to 4 KiB).
    pub capacity: u64,
    /// RAW or COW.
    pub format: VolumeFormat,
    /// SPARSE or PREALLOCATED.
    pub allocation: Preallocation,
    /// Parent in the same image (COW only).
    pub parent: Option<Uuid>,
    /// Description.
    pub description: String,
    /// Legality written at creation (ILLEGAL for copy destinations).
    pub legality: Legality,
    /// Disk type (DATA unless copying another volume's).
    pub disktype: String,
}

/// Reads a volume's metadata.
pub fn read_metadata(dom: &Domain, img: &Uuid, vol: &Uuid) -> Result<VolumeMetadata, StorageError> {
    let paths = dom.volume_paths(img, vol);
    read_metadata_at(&paths.meta).map_err(|e| match e {
        StorageError::Durable(d) if d.is_not_found() => {
            if dom.image_dir(img).is_dir() {
                StorageError::VolumeNotFound {
                    sd: dom.sd_id.to_string(),
                    img: img.to_string(),
                    vol: vol.to_string(),
                }
            } else {
                StorageError::ImageNotFound {
                    sd: dom.sd_id.to_string(),
                    img: img.to_string(),
                }
            }
        }
        e => e,
    })
}

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

/// Writes a changed volume's metadata atomically and durably, bumping its sequence number (so
/// every version on disk is distinguishable). The caller holds the image lock.
pub fn update_metadata(paths: &VolumePaths, md: &mut VolumeMetadata) -> Result<(), StorageError> {
    md.sequence = (md.sequence + 1) % (1 << 32);
    store_metadata(paths, md)
}

fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates a volume. The caller holds the domain (shared) and image (exclusive) locks.
pub fn create(dom: &Domain, req: &NewVolume) -> Result<(), StorageError> {
    if req.parent.is_some() && req.format != VolumeFormat::Cow {
        return Err(StorageError::Invalid(
            "a volume with a parent must be COW".into(),
        ));
    }
    // Rounded up to 4 KiB, it must still fit a file size (i64).
    let capacity = req
        .capacity
        .checked_next_multiple_of(CAPACITY_ALIGN)
        .filter(|c| *c <= i64::MAX as u64)
        .ok_or_else(|| StorageError::Invalid(format!("capacity {} is too large", req.capacity)))?;
    let img_dir = dom.image_dir(&req.img);
    let paths = dom.volume_paths(&req.img, &req.vol);
    let parent_md = match &req.parent {
        Some(p) if p.is_blank() => None,
        Some(p) => {
            if p == &req.vol {
                return Err(StorageError::Invalid(
                    "a volume cannot be its own parent".into(),
                ));
            }
            let md = read_metadata(dom, &req.img, p).map_err(|e| match e {
                StorageError::VolumeNotFound { .. } | StorageError::ImageNotFound { .. } => {
                    StorageError::Invalid(format!(
                        "parent volume {p} does not exist in image {}",
                        req.img
                    ))
                }
                e => e,
            })?;
            // A LEGAL volume cannot sit on an untrusted parent; an ILLEGAL one (a copy
            // destination being built parents first) may.
            if md.legality != Legality::Legal && req.legality == Legality::Legal {
                return Err(StorageError::Invalid(format!(
                    "parent volume {p} is {}",
                    md.legality
                )));
            }
            if capacity < md.capacity {
                return Err(StorageError::Invalid(format!(
                    "capacity {capacity} is smaller than the parent's {}",
                    md.capacity
                )));
            }
            Some((p.clone(), md))
        }
        None => None,
    };
    if !img_dir.exists() {
        fs::DirBuilder::new()
            .mode(0o775)
            .create(&img_dir)
            .map_err(|e| StorageError::io("mkdir", &img_dir, e))?;
        durable::sync_dir(&dom.images_dir())?;
    }
    dom.check_real_dir(&img_dir)?;
    if paths.meta.exists() || paths.data.exists() {
        return Err(StorageError::VolumeExists(req.vol.to_string()));
    }
    if let Err(e) = create_data(&img_dir, &paths, capacity, req, parent_md.as_ref()) {
        let _ = fs::remove_file(&paths.data);
        return Err(e);
    }
    dom.leases
        .init_volume_lease(dom.sd_id.as_str(), req.vol.as_str(), &paths.lease)
        .inspect_err(|_| {
            let _ = fs::remove_file(&paths.data);
        })?;
    let md = VolumeMetadata {
        capacity,
        ctime: now_epoch(),
        description: req.description.clone(),
        disktype: req.disktype.clone(),
        domain: dom.sd_id.to_string(),
        image: req.img.to_string(),
        format: req.format,
        generation: 0,
        legality: req.legality,
        parent: parent_md
            .as_ref()
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| Uuid::blank().to_string()),
        sequence: 0,
        allocation: req.allocation,
        role: VolumeRole::Leaf,
    };
    store_metadata(&paths, &md)?;
    durable::sync_dir(&img_dir)?;
    if let Some((p, mut pmd)) = parent_md {
        if pmd.role == VolumeRole::Leaf {
            pmd.role = VolumeRole::Internal;
            update_metadata(&dom.volume_paths(&req.img, &p), &mut pmd)?;
        }
    }
    Ok(())
}

fn create_data(
    img_dir: &Path,
    paths: &VolumePaths,
    capacity: u64,
    req: &NewVolume,
    parent: Option<&(Uuid, VolumeMetadata)>,
) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(&paths.data)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StorageError::VolumeExists(req.vol.to_string()),
            _ => StorageError::io("create", &paths.data, e),
        })?;
    match req.format {
        VolumeFormat::Raw => {
            f.set_len(capacity)
                .map_err(|e| StorageError::io("truncate", &paths.data, e))?;
            if req.allocation == Preallocation::Preallocated {
                preallocate(&f, &paths.data, 0, capacity)?;
            }
        }
        VolumeFormat::Cow => {
            drop(f);
            let mut cmd = Command::new("qemu-img");
            cmd.current_dir(img_dir)
                .args(["create", "-q", "-f", "qcow2", "-o", "compat=1.1"]);
            if let Some((pid, pmd)) = parent {
                // The backing file is the bare parent UUID, relative to the image directory, as
                // oVirt writes it; -u because the size is given and the parent need not be opened.
                let pfmt = match pmd.format {
                    VolumeFormat::Raw => "raw",
                    VolumeFormat::Cow => "qcow2",
                };
                cmd.args(["-b", pid.as_str(), "-F", pfmt, "-u"]);
            }
            cmd.arg(req.vol.as_str()).arg(capacity.to_string());
            run_qemu_img(&mut cmd)?;
            if req.allocation == Preallocation::Preallocated {
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

/// Runs qemu-img, turning a failure into an error carrying its stderr.
pub fn run_qemu_img(cmd: &mut Command) -> Result<String, StorageError> {
    die_with_parent(cmd);
    let out = cmd
        .output()
        .map_err(|e| StorageError::QemuImg(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No space left on device") {
            return Err(StorageError::io(
                "qemu-img create",
                "",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        return Err(StorageError::QemuImg(format!(
            "{}: {}",
            out.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes a child process die with the agent: a helper that kept writing after the agent died
/// would write without the lease that sanlock released with the agent.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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

/// `Volume.getInfo`.
pub fn info(dom: &Domain, img: &Uuid, vol: &Uuid) -> Result<VolumeInfo, StorageError> {
    let md = read_metadata(dom, img, vol)?;
    let paths = dom.volume_paths(img, vol);
    let st = fs::metadata(&paths.data).map_err(|e| StorageError::io("stat", &paths.data, e))?;
    let lease = dom
        .leases
        .status(dom.sd_id.as_str(), vol.as_str(), &paths.lease, 0)?;
    let status = match md.legality {
        Legality::Illegal => "ILLEGAL",
        _ => "OK",
    };
    Ok(VolumeInfo {
        uuid: vol.clone(),
        image: img.clone(),
        domain: dom.sd_id.clone(),
        format: md.format,
        allocation: md.allocation,
        voltype: md.role,
        capacity: Size(md.capacity),
        apparentsize: Size(st.len()),
        truesize: Size(st.blocks() * 512),
        parent: Uuid::parse(&md.parent).unwrap_or_else(|_| Uuid::blank()),
        description: md.description,
        disktype: md.disktype,
        ctime: md.ctime,
        legality: md.legality,
        generation: md.generation,
        sequence: md.sequence,
        status: status.into(),
        lease: LeaseInfo {
            path: paths.lease.to_string_lossy().into_owned(),
            offset: 0,
            owners: lease.owners,
            version: lease.version,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use sdm_lease::LocalLeases;

    fn domain() -> (tempfile::TempDir, Domain) {
        let root = tempfile::tempdir().unwrap();
        let leases = Arc::new(LocalLeases::new(1));
        let sd = Uuid::new_v4();
        let dir = Domain::create(root.path(), &sd, "t", leases.as_ref(), 10).unwrap();
        let d = Domain::open(&dir, leases).unwrap();
        (root, d)
    }

    fn new(img: &Uuid, format: VolumeFormat, parent: Option<Uuid>) -> NewVolume {
        NewVolume {
            img: img.clone(),
            vol: Uuid::new_v4(),
            capacity: 1 << 20,
            format,
            allocation: Preallocation::Sparse,
            parent,
            description: "d".into(),
            legality: Legality::Legal,
            disktype: "DATA".into(),
        }
    }

    #[test]
    fn raw_sparse_and_preallocated() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let mut req = new(&img, VolumeFormat::Raw, None);
        req.capacity = 1_000_000; // rounds up to 4 KiB
        create(&d, &req).unwrap();
        let i = info(&d, &img, &req.vol).unwrap();
        assert_eq!(i.capacity.0, 1_003_520);
        assert_eq!(i.apparentsize.0, 1_003_520);
        assert_eq!(i.truesize.0, 0);
        assert_eq!(i.legality, Legality::Legal);
        assert_eq!(i.sequence, 0);
        assert!(i.lease.owners.is_empty());
        let mut pre = new(&img, VolumeFormat::Raw, None);
        pre.allocation = Preallocation::Preallocated;
        create(&d, &pre).unwrap();
        assert!(info(&d, &img, &pre.vol).unwrap().truesize.0 >= 1 << 20);
        assert!(matches!(
            create(&d, &req),
            Err(StorageError::VolumeExists(_))
        ));
        assert_eq!(d.list_volumes(&img).unwrap().len(), 2);
    }

    #[test]
    fn cow_chain_uses_bare_parent_uuid() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let base = new(&img, VolumeFormat::Cow, None);
        create(&d, &base).unwrap();
        let top = new(&img, VolumeFormat::Cow, Some(base.vol.clone()));
        create(&d, &top).unwrap();
        assert_eq!(
            info(&d, &img, &base.vol).unwrap().voltype,
            VolumeRole::Internal
        );
        let ti = info(&d, &img, &top.vol).unwrap();
        assert_eq!(ti.parent, base.vol);
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(d.volume_paths(&img, &top.vol).data)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["backing-filename"], base.vol.as_str());
        assert_eq!(v["backing-filename-format"], "qcow2");
        assert_eq!(v["format"], "qcow2");
        let raw_child = new(&img, VolumeFormat::Raw, Some(base.vol.clone()));
        assert!(matches!(
            create(&d, &raw_child),
            Err(StorageError::Invalid(_))
        ));
    }
}
