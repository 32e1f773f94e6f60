//! Atomic, durable replacement of small files (CONTRACT §4.5), and direct reads of them.
//!
//! Every metadata change in sdm — a volume's `.meta`, a domain's `dom_md/metadata`, the agent's
//! own state — goes through [`replace`]: write `<name>.new`, fsync it, rename it over `<name>`,
//! fsync the directory. A reader therefore sees the old or the new content, never a mix, and after
//! `replace` returns the new content survives a crash. An fsync error is final: Linux may have
//! dropped the dirty pages and marked them clean, so a retried fsync could succeed without the
//! data being on disk. We never retry; the caller fails its job.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
            | DurableError::Rename { source, .. }
            | DurableError::Read { source, .. } => source.raw_os_error(),
        }
    }

    /// True if the file did not exist (reads only).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DurableError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Name of the temporary file [`replace`] writes next to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// Atomically and durably replaces `path` with `data` (mode 0660 for new files).
pub fn replace(path: &Path, data: &[u8]) -> Result<(), DurableError> {
    fail::fail_point!("sdm::durable::before_write", |arg| Err(injected(path, arg)));
    let tmp = temp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o660)
        .open(&tmp)
        .map_err(|source| DurableError::Write {
            path: tmp.clone(),
            source,
        })?;
    f.write_all(data).map_err(|source| DurableError::Write {
        path: tmp.clone(),
        source,
    })?;
    fail::fail_point!("sdm::durable::fsync", |arg| Err(DurableError::Sync {
        path: tmp.clone(),
        source: injected_io(arg),
    }));
    f.sync_all().map_err(|source| DurableError::Sync {
        path: tmp.clone(),
        source,
    })?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|source| DurableError::Rename {
        from: tmp.clone(),
        to: path.to_path_buf(),
        source,
    })?;
    fail::fail_point!("sdm::durable::after_rename");
    sync_dir(path.parent().unwrap_or(Path::new(".")))
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
    let mut data = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => match read_aligned(f) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => read_buffered(path).map_err(err)?,
            Err(e) => return Err(err(e)),
        },
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => read_buffered(path).map_err(err)?,
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
    const ALIGN: usize = 4096;
    // An over-allocated Vec and an aligned window into it: O_DIRECT needs the buffer address,
    // the length and the file offset aligned to the logical block size; 4 KiB covers all.
    let mut raw = vec![0u8; MAX_METADATA_FILE + 2 * ALIGN];
    let start = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[start..start + MAX_METADATA_FILE + ALIGN];
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
        assert!(!temp_path(&p).exists());
        assert_eq!(read_direct(&p).unwrap(), b"A=2\nEOF\n");
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
