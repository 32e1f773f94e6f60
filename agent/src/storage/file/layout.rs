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

/// Removes the temporary files of [`durable::replace`] in `dir` (by name, nothing else) that
/// a dead writer of this host left ([`durable::left_by_dead_writer_of_this_host`]: an earlier
/// incarnation of this agent), and those whose last change is older than `older_than` (other
/// hosts' writers, which only their own host can tell dead). A writer still alive whose file
/// is removed fails its rename and leaves the target as it was; it never tears it.
pub fn remove_stale_temp_files_in(
    dir: &Path,
    older_than: std::time::Duration,
) -> Result<usize, StorageError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::io("list", dir, e)),
    };
    let mut removed = 0;
    for e in rd {
        let e = e.map_err(|e| StorageError::io("list", dir, e))?;
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| durable::is_temp_name(n)) else {
            continue;
        };
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue; // gone meanwhile: renamed by its writer
        };
        let old = md
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if md.is_file() && (old || durable::left_by_dead_writer_of_this_host(name)) {
            match fs::remove_file(e.path()) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(StorageError::io("remove", e.path(), err)),
            }
        }
    }
    if removed > 0 {
        durable::sync_dir(dir)?;
    }
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn only_old_temp_files_of_sdm_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("0f6b3e0a-1111-4222-8333-444455556666.meta");
        durable::replace(&meta, b"A=1\n").unwrap();
        let old = durable::temp_path(&meta);
        let young = durable::temp_path(&meta);
        let foreign = dir
            .path()
            .join("0f6b3e0a-1111-4222-8333-444455556666.meta.new");
        for p in [&old, &young, &foreign] {
            fs::write(p, b"x").unwrap();
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for p in [&old, &foreign] {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        let n = remove_stale_temp_files_in(dir.path(), Duration::from_secs(600)).unwrap();
        assert_eq!(n, 1);
        assert!(!old.exists());
        assert!(young.exists(), "a live writer's file stays");
        assert!(foreign.exists(), "not sdm's name pattern: left alone");
        assert!(meta.exists());
        assert_eq!(
            remove_stale_temp_files_in(&dir.path().join("missing"), Duration::ZERO).unwrap(),
            0
        );
    }

    #[test]
    fn a_dead_writer_of_this_host_is_collected_at_once() {
        durable::set_writer_host(7);
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let named = |host: u64, pid: u32| {
            dir.path().join(format!(
                "0f6b3e0a-1111-4222-8333-444455556666.meta{}h{host}-p{pid}-0123456789abcdef",
                durable::TEMP_MARK
            ))
        };
        let ours_dead = named(7, dead);
        let ours_live = named(7, std::process::id());
        let theirs = named(8, dead);
        for p in [&ours_dead, &ours_live, &theirs] {
            fs::write(p, b"x").unwrap();
        }
        let n = remove_stale_temp_files_in(dir.path(), Duration::from_secs(600)).unwrap();
        assert_eq!(n, 1);
        assert!(
            !ours_dead.exists(),
            "this host's dead writer: removed young"
        );
        assert!(
            ours_live.exists(),
            "this process's own write in flight stays"
        );
        assert!(
            theirs.exists(),
            "another host's young file waits for the age rule"
        );
    }
}
