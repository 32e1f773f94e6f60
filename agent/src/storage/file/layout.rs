//! A file domain's tree, `<root>/<sd_id>/{dom_md,images}` as oVirt lays it out (format V5):
//! formatting a new one, opening one, and finding the domains under a directory.
//!
//! Formatting builds the whole tree in a hidden sibling directory and renames it into place, so
//! a crash never leaves a half-formatted directory that domain discovery (`*-*-*-*-*/dom_md`)
//! would pick up.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sdm_lease::LeaseBackend;
use sdm_proto::{is_canonical_uuid, Uuid};

use crate::durable;
use crate::storage::md::{DomainMetadata, ALIGNMENT};
use crate::storage::xleases;
use crate::storage::StorageError;

/// Size of the mailbox files.
pub const MAILBOX_SIZE: u64 = 16 << 20;

/// Formats a new domain at `root/<sd_id>`. Returns the domain directory.
pub fn create(
    root: &Path,
    sd_id: &Uuid,
    description: &str,
    leases: &dyn LeaseBackend,
    io_timeout_s: u32,
) -> Result<PathBuf, StorageError> {
    let meta = fs::metadata(root).map_err(|e| StorageError::NotADomain {
        path: root.to_path_buf(),
        why: format!("cannot create a domain there: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(StorageError::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let root = root
        .canonicalize()
        .map_err(|e| StorageError::io("resolve", root, e))?;
    let final_dir = root.join(sd_id.as_str());
    if final_dir.exists() {
        return Err(StorageError::DomainExists(sd_id.to_string()));
    }
    let tmp = root.join(format!(".{sd_id}.creating"));
    if tmp.exists() {
        // A previous create crashed half-way; nothing refers to it.
        fs::remove_dir_all(&tmp).map_err(|e| StorageError::io("remove", &tmp, e))?;
    }
    let res = format_tree(&tmp, &root, sd_id, description, leases, io_timeout_s);
    if let Err(e) = res {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &final_dir).map_err(|e| StorageError::io("rename", &tmp, e))?;
    durable::sync_dir(&root)?;
    Ok(final_dir)
}

fn format_tree(
    dir: &Path,
    root: &Path,
    sd_id: &Uuid,
    description: &str,
    leases: &dyn LeaseBackend,
    io_timeout_s: u32,
) -> Result<(), StorageError> {
    let mkdir = |p: &Path| {
        fs::DirBuilder::new()
            .mode(0o775)
            .create(p)
            .map_err(|e| StorageError::io("mkdir", p, e))
    };
    mkdir(dir)?;
    let dom_md = dir.join("dom_md");
    mkdir(&dom_md)?;
    mkdir(&dir.join("images"))?;
    for (name, size) in [
        ("ids", 0),
        ("leases", 0),
        ("inbox", MAILBOX_SIZE),
        ("outbox", MAILBOX_SIZE),
    ] {
        create_sized(&dom_md.join(name), size)?;
    }
    let shared = leases.kind() != "local";
    if shared {
        write_xleases(&dom_md.join("xleases"), sd_id)?;
    }
    leases.format_domain(
        sd_id.as_str(),
        &dom_md.join("ids"),
        &dom_md.join("leases"),
        io_timeout_s,
    )?;

    let mut md = DomainMetadata::formatted(sd_id, description);
    md.set("REMOTE_PATH", root.to_string_lossy());
    md.set("TYPE", if shared { "POSIXFS" } else { "LOCALFS" });
    durable::replace(&dom_md.join("metadata"), &md.to_bytes())?;
    durable::sync_dir(&dom_md)?;
    durable::sync_dir(dir)?;
    Ok(())
}

/// Opens the domain whose directory is `dir`, verifying its metadata: its id, its canonical
/// directory and its metadata.
pub fn open(dir: &Path) -> Result<(Uuid, PathBuf, DomainMetadata), StorageError> {
    let not = |why: String| StorageError::NotADomain {
        path: dir.to_path_buf(),
        why,
    };
    let dir = dir.canonicalize().map_err(|e| not(e.to_string()))?;
    if !dir.is_dir() {
        return Err(not("not a directory".into()));
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !is_canonical_uuid(name) {
        return Err(not("the directory name is not a domain UUID".into()));
    }
    let raw = durable::read_direct(&dir.join("dom_md").join("metadata")).map_err(|e| {
        if e.is_not_found() {
            not("dom_md/metadata is missing".into())
        } else {
            StorageError::Durable(e)
        }
    })?;
    let metadata = DomainMetadata::parse(&raw)?;
    metadata.check_opens(name, &dir)?;
    if !dir.join("images").is_dir() {
        return Err(not("images/ is missing".into()));
    }
    let sd_id = Uuid::parse(name).map_err(not)?;
    Ok((sd_id, dir, metadata))
}

/// Domains under `root`, sorted: every `<uuid>/dom_md` directory directly below it.
pub fn discover(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_canonical_uuid)
                && p.join("dom_md").is_dir()
        })
        .collect();
    v.sort();
    v
}

/// Size and free space of the file system holding `path`.
pub fn statvfs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize;
    Some((st.f_blocks * frsize, st.f_bavail * frsize))
}

fn create_sized(path: &Path, size: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))?;
    f.set_len(size)
        .map_err(|e| StorageError::io("truncate", path, e))?;
    f.sync_all().map_err(|e| StorageError::io("fsync", path, e))
}

/// Formats the external-leases volume: slot 0 unused, the index at 1×ALIGNMENT.
fn write_xleases(path: &Path, sd_id: &Uuid) -> Result<(), StorageError> {
    let index = xleases::empty_index(sd_id);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))?;
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(ALIGNMENT))
        .map_err(|e| StorageError::io("seek", path, e))?;
    f.write_all(&index)
        .map_err(|e| StorageError::io("write", path, e))?;
    f.sync_all().map_err(|e| StorageError::io("fsync", path, e))
}
