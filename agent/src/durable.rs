//! Atomic, durable replacement of small files (CONTRACT §4.5), and direct reads of them.
//!
//! Every metadata change in sdm — a volume's `.meta`, a domain's `dom_md/metadata`, the agent's
//! own state — goes through [`replace`]: write a temporary file of this writer's own, fsync it,
//! rename it over `<name>`, fsync the directory. A reader therefore sees the old or the new
//! content, never a mix, and after `replace` returns the new content survives a crash. An fsync
//! error is final: Linux may have dropped the dirty pages and marked them clean, so a retried
//! fsync could succeed without the data being on disk. We never retry; the caller fails its job.
//!
//! The temporary file's name is unique per write (host id, pid, random: [`temp_path`]). With
//! one shared name, two hosts writing the same file would truncate each other's temporary file
//! and one of them could rename a half-written or empty file into place. A writer that dies
//! leaves its temporary file behind; garbage collection removes those of this host's dead
//! writers at once ([`left_by_dead_writer_of_this_host`]) and other hosts' once they are old
//! ([`is_temp_name`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::uncached::{direct_refused, open_direct, Aligned, ALIGN};

/// Why a durable write or a metadata read failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Creating or writing the temporary file failed.
    #[error("cannot write {path}")]
    Write {
        /// The temporary file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// fsync of the file or its directory failed; the content may not be on disk.
    #[error("cannot make {path} durable (fsync failed, not retried)")]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The rename happened, but the fsync of the directory after it failed: every reader sees
    /// the new content now, but a crash may still bring the old one back. Kept apart from
    /// [`DurableError::Sync`] because the caller's outcome differs (`docs/recovery.md`).
    #[error("{path} was replaced, but the directory fsync after the rename failed (not retried)")]
    DirSync {
        /// The file that was replaced.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Renaming the temporary file over the target failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// Temporary file.
        from: PathBuf,
        /// Target.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl DurableError {
    /// The OS error behind it, if any (ENOSPC handling).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DurableError::Write { source, .. }
            | DurableError::Sync { source, .. }
            | DurableError::DirSync { source, .. }
            | DurableError::Rename { source, .. }
            | DurableError::Read { source, .. } => source.raw_os_error(),
        }
    }

    /// True if the file did not exist (reads only).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DurableError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What every temporary file name of [`replace`] carries after the target's name.
pub const TEMP_MARK: &str = ".sdm-tmp-";

/// This process's writer id in temporary file names: the host id (0 until the agent sets it).
static WRITER_HOST: AtomicU64 = AtomicU64::new(0);

/// Sets the host id that temporary file names carry (once, at start).
pub fn set_writer_host(host_id: u64) {
    WRITER_HOST.store(host_id, Ordering::Relaxed);
}

/// A fresh temporary file name next to `path`, unique to this write:
/// `<name>.sdm-tmp-h<host id>-p<pid>-<random>`. Two writers, on this host or another, never
/// share one.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    let random = uuid::Uuid::new_v4().simple().to_string();
    name.push(format!(
        "{TEMP_MARK}h{}-p{}-{}",
        WRITER_HOST.load(Ordering::Relaxed),
        std::process::id(),
        &random[..16]
    ));
    path.with_file_name(name)
}

/// Whether `name` is a temporary file name [`temp_path`] makes (and no other name): the part
/// after [`TEMP_MARK`] is `h<digits>-p<digits>-<16 hex digits>`.
pub fn is_temp_name(name: &str) -> bool {
    temp_name_parts(name).is_some()
}

/// The host id and pid digits of a temporary file name of [`temp_path`].
fn temp_name_parts(name: &str) -> Option<(&str, &str)> {
    let at = name.rfind(TEMP_MARK).filter(|at| *at > 0)?;
    let mut parts = name[at + TEMP_MARK.len()..].split('-');
    let digits = |s: &'_ str, prefix: char| -> bool {
        s.strip_prefix(prefix)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(r), None)
            if digits(h, 'h')
                && digits(p, 'p')
                && r.len() == 16
                && r.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Some((&h[1..], &p[1..]))
        }
        _ => None,
    }
}

/// The writer a temporary file name of [`temp_path`] names: (host id, pid).
pub fn temp_writer(name: &str) -> Option<(u64, u32)> {
    let (h, p) = temp_name_parts(name)?;
    Some((h.parse().ok()?, p.parse().ok()?))
}

/// Whether `name` is a temporary file that a dead writer of this host left: it names this
/// host's id (as [`set_writer_host`] set it), a pid other than this process's, and no process
/// with that pid exists now.
///
/// Only this host can tell that its own writers are dead, and it can tell at once: one agent
/// runs per host id (a sanlock host id belongs to one host, and a local domain has one host),
/// so another pid of this host id is an earlier incarnation of this agent. Files of other
/// hosts wait for garbage collection's age rule (`storage::file::layout`). A
/// pid that exists (reused by another process, or a second agent wrongly given this host id)
/// keeps the file until that rule too; and should a live writer's file be removed anyway, its
/// rename fails and the target stays whole.
pub fn left_by_dead_writer_of_this_host(name: &str) -> bool {
    let host = WRITER_HOST.load(Ordering::Relaxed);
    host != 0
        && temp_writer(name)
            .is_some_and(|(h, pid)| h == host && pid != std::process::id() && process_gone(pid))
}

/// Whether no process with id `pid` exists (in this pid namespace) now.
fn process_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        // 0 and negative ids name process groups in kill(2), not a process.
        return false;
    }
    // SAFETY: signal 0 delivers nothing: kill(2) only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Atomically and durably replaces `path` with `data` (mode 0660 for new files).
pub fn replace(path: &Path, data: &[u8]) -> Result<(), DurableError> {
    fail::fail_point!("sdm::durable::before_write", |arg| Err(injected(path, arg)));
    let tmp = temp_path(path);
    // create_new: the name is ours alone; an existing file would mean it is not.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(&tmp)
        .map_err(|source| DurableError::Write {
            path: tmp.clone(),
            source,
        })?;
    let written = f
        .write_all(data)
        .map_err(|source| DurableError::Write {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| sync_temp(&f, &tmp));
    drop(f);
    if let Err(e) = written {
        // Ours alone, so removing it cannot hurt another writer.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(feature = "failpoints")]
    if let Some(Some(pause)) = fail::eval("sdm::durable::before_rename", |arg| {
        injected_pause(data, arg)
    }) {
        std::thread::sleep(pause);
    }
    if let Err(source) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(DurableError::Rename {
            from: tmp,
            to: path.to_path_buf(),
            source,
        });
    }
    fail::fail_point!("sdm::durable::after_rename");
    #[cfg(feature = "failpoints")]
    if let Some(Some(source)) = fail::eval("sdm::durable::dir_fsync", |arg| {
        injected_dir_sync(data, arg)
    }) {
        return Err(DurableError::DirSync {
            path: path.to_path_buf(),
            source,
        });
    }
    sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
        DurableError::Sync { source, .. } => DurableError::DirSync {
            path: path.to_path_buf(),
            source,
        },
        e => e,
    })
}

fn sync_temp(f: &File, tmp: &Path) -> Result<(), DurableError> {
    fail::fail_point!("sdm::durable::fsync", |arg| Err(DurableError::Sync {
        path: tmp.to_path_buf(),
        source: injected_io(arg),
    }));
    f.sync_all().map_err(|source| DurableError::Sync {
        path: tmp.to_path_buf(),
        source,
    })
}

/// fsyncs a directory so that a create, rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    let d = File::open(dir).map_err(|source| DurableError::Sync {
        path: dir.to_path_buf(),
        source,
    })?;
    d.sync_all().map_err(|source| DurableError::Sync {
        path: dir.to_path_buf(),
        source,
    })
}

/// Largest metadata file [`read_direct`] reads.
pub const MAX_METADATA_FILE: usize = 64 * 1024;

/// Reads a small file bypassing the page cache where the file system allows, so that on shared
/// storage another host's latest write is seen; trailing NUL padding is stripped. Falls back to a
/// buffered read where O_DIRECT is refused (EINVAL, e.g. some FUSE or older tmpfs).
pub fn read_direct(path: &Path) -> Result<Vec<u8>, DurableError> {
    let err = |source| DurableError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut data = match open_direct(path).and_then(read_aligned) {
        Ok(d) => d,
        Err(e) if direct_refused(&e) => read_buffered(path).map_err(err)?,
        Err(e) => return Err(err(e)),
    };
    while data.last() == Some(&0) {
        data.pop();
    }
    Ok(data)
}

fn read_buffered(path: &Path) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)?
        .take(MAX_METADATA_FILE as u64 + 1)
        .read_to_end(&mut data)?;
    if data.len() > MAX_METADATA_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "metadata file larger than 64 KiB",
        ));
    }
    Ok(data)
}

fn read_aligned(mut f: File) -> io::Result<Vec<u8>> {
    // O_DIRECT needs the buffer address, the length and the file offset aligned to the
    // logical block size; a page covers all.
    let mut aligned = Aligned::zeroed(MAX_METADATA_FILE + ALIGN);
    let buf = aligned.bytes_mut();
    let mut len = 0;
    loop {
        let n = match f.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        len += n;
        if len > MAX_METADATA_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "metadata file larger than 64 KiB",
            ));
        }
        if len % ALIGN != 0 {
            // A short read at EOF leaves the offset unaligned; a further read would be EINVAL.
            break;
        }
    }
    Ok(buf[..len].to_vec())
}

#[cfg(feature = "failpoints")]
fn injected_io(arg: Option<String>) -> io::Error {
    match arg.as_deref() {
        Some("ENOSPC") => io::Error::from_raw_os_error(libc::ENOSPC),
        _ => io::Error::from_raw_os_error(libc::EIO),
    }
}

/// `sdm::durable::dir_fsync`: `return(EIO)` fails the directory fsync after every rename;
/// `return(EIO:TEXT)` only after writes whose content holds TEXT (say `GEN=1`, to hit one
/// metadata write of a job and not the set-up before it).
#[cfg(feature = "failpoints")]
fn injected_dir_sync(data: &[u8], arg: Option<String>) -> Option<io::Error> {
    let arg = arg.unwrap_or_default();
    let (errno, only) = match arg.split_once(':') {
        Some((e, text)) => (e.to_string(), Some(text.to_string())),
        None => (arg, None),
    };
    if let Some(text) = only {
        let hit = data
            .windows(text.len().max(1))
            .any(|w| w == text.as_bytes());
        if !hit {
            return None;
        }
    }
    Some(injected_io(Some(errno)))
}

/// `sdm::durable::before_rename`: `return(MS)` holds every write for MS milliseconds between
/// its synced temporary file and the rename; `return(MS:TEXT)` only writes whose content holds
/// TEXT (a test kills the writer there, leaving its temporary file behind).
#[cfg(feature = "failpoints")]
fn injected_pause(data: &[u8], arg: Option<String>) -> Option<std::time::Duration> {
    let arg = arg.unwrap_or_default();
    let (ms, only) = match arg.split_once(':') {
        Some((ms, text)) => (ms, Some(text)),
        None => (arg.as_str(), None),
    };
    if let Some(text) = only {
        if !data
            .windows(text.len().max(1))
            .any(|w| w == text.as_bytes())
        {
            return None;
        }
    }
    ms.trim().parse().ok().map(std::time::Duration::from_millis)
}

#[cfg(feature = "failpoints")]
fn injected(path: &Path, arg: Option<String>) -> DurableError {
    DurableError::Write {
        path: temp_path(path),
        source: injected_io(arg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_atomic_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.meta");
        replace(&p, b"A=1\nEOF\n").unwrap();
        replace(&p, b"A=2\nEOF\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"A=2\nEOF\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("x.meta")]);
        assert_eq!(read_direct(&p).unwrap(), b"A=2\nEOF\n");
    }

    #[test]
    fn temp_names_are_unique_and_recognised() {
        set_writer_host(7);
        let p = Path::new("/d/0f6b3e0a-1111-4222-8333-444455556666.meta");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("0f6b3e0a-1111-4222-8333-444455556666.meta.sdm-tmp-h7-p"));
        assert!(
            name.contains(&format!("-p{}-", std::process::id())),
            "{name}"
        );
        assert!(is_temp_name(name), "{name}");
        for other in [
            "x.meta",
            "x.meta.new",
            ".sdm-tmp-h1-p2-0123456789abcdef",
            "x.sdm-tmp-h1-p2-0123456789abcde",
            "x.sdm-tmp-h1-p2-0123456789ABCDEF",
            "x.sdm-tmp-h-p2-0123456789abcdef",
            "x.sdm-tmp-h1-p2-0123456789abcdef-1",
            "x.sdm-tmp-h1-px-0123456789abcdef",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }

    #[test]
    fn dead_writers_of_this_host_are_told_from_live_ones_and_other_hosts() {
        // The same host id as the other tests of this process that set one.
        set_writer_host(7);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let name =
            |host: u64, pid: u32| format!("v.meta{TEMP_MARK}h{host}-p{pid}-0123456789abcdef");
        assert_eq!(temp_writer(&name(7, dead)), Some((7, dead)));
        assert!(left_by_dead_writer_of_this_host(&name(7, dead)));
        assert!(
            !left_by_dead_writer_of_this_host(&name(8, dead)),
            "another host's writer: only that host can tell"
        );
        assert!(
            !left_by_dead_writer_of_this_host(&name(7, std::process::id())),
            "this process's own writes"
        );
        let live = Reaped(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        );
        assert!(
            !left_by_dead_writer_of_this_host(&name(7, live.0.id())),
            "a live process with that pid"
        );
        for odd in [
            "v.meta.new",
            "v.meta.sdm-tmp-h7-p0-0123456789abcdef",
            "v.meta.sdm-tmp-h7-p99999999999-0123456789abcdef",
        ] {
            assert!(!left_by_dead_writer_of_this_host(odd), "{odd}");
        }
    }

    /// Kills and reaps the child when dropped (also when an assertion fails).
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn read_direct_strips_nul_padding_and_sees_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        let mut data = vec![b'x'; 5000];
        data.extend_from_slice(&[0u8; 100]);
        std::fs::write(&p, &data).unwrap();
        assert_eq!(read_direct(&p).unwrap(), vec![b'x'; 5000]);
        assert!(read_direct(&dir.path().join("missing"))
            .unwrap_err()
            .is_not_found());
    }
}
