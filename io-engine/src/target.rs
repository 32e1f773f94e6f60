//! Opening a volume (regular file or block device) and probing how to do IO on it.
//!
//! O_DIRECT is wanted everywhere: it keeps the page cache (and, in a VM with free-page
//! reporting, the balloon) out of the data path. Support is decided per file, because it
//! depends on the filesystem: first the open itself, then STATX_DIOALIGN, and where the kernel
//! does not report that (tmpfs), one aligned read. Anything that says no gives buffered IO and
//! a logged reason.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;
use crate::IoError;

/// Alignment assumed where the filesystem takes O_DIRECT but does not say how.
pub(crate) const DEFAULT_DIO_ALIGN: u64 = 4096;
/// Largest memory alignment our page-aligned buffers satisfy.
const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Regular,
    Block,
}

pub(crate) struct Target {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) kind: FileKind,
    /// File size or device size in bytes.
    pub(crate) size: u64,
    pub(crate) direct: bool,
    /// Offset and length granularity of direct IO; 1 when buffered.
    pub(crate) align: u64,
    /// Logical block size of a block device (BLKZEROOUT granularity); 512 for files.
    pub(crate) lbs: u64,
    /// On tmpfs/ramfs: IO is a memory copy done by the CPU, not by a device.
    pub(crate) in_memory: bool,
    write: bool,
    /// Same file without O_DIRECT, opened on first use for unaligned tails.
    buffered: Option<File>,
}

fn open_with(path: &Path, write: bool, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC | libc::O_NOCTTY;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(flags)
        .open(path)
}

impl Target {
    /// Opens an existing volume; never creates or truncates.
    pub(crate) fn open(path: &Path, write: bool) -> Result<Target, IoError> {
        let mut reason = None;
        let file = match open_with(path, write, true) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                reason = Some("open with O_DIRECT was refused (EINVAL)".to_string());
                open_with(path, write, false).map_err(|e| IoError::os("open", path, e))?
            }
            Err(e) => return Err(IoError::os("open", path, e)),
        };
        let meta = file.metadata().map_err(|e| IoError::os("stat", path, e))?;
        let ft = meta.file_type();
        let mut t = Target {
            path: path.to_owned(),
            file,
            kind: FileKind::Regular,
            size: meta.len(),
            direct: reason.is_none(),
            align: 1,
            lbs: 512,
            in_memory: false,
            write,
            buffered: None,
        };
        // Only a regular file's data lives where its inode does. A device node is nearly
        // always on devtmpfs, whose statfs says tmpfs, but its IO goes to the device: taking
        // it for memory made every LV copy a synchronous pread/pwrite loop, one request at a
        // time (see docs/performance.md, "Block domains: LVs").
        t.in_memory = ft.is_file() && sys::is_memory_fs(t.fd());
        if ft.is_block_device() {
            t.kind = FileKind::Block;
            t.size = sys::blk_size(t.fd()).map_err(|e| IoError::os("BLKGETSIZE64 on", path, e))?;
            t.lbs = sys::blk_logical_block_size(t.fd()).unwrap_or(512).max(512);
            t.align = if t.direct { t.lbs } else { 1 };
        } else if ft.is_file() {
            if t.direct {
                match t.probe_file_direct() {
                    Ok(align) => t.align = align,
                    Err(why) => {
                        reason = Some(why);
                        t.file = open_with(path, write, false)
                            .map_err(|e| IoError::os("open", path, e))?;
                        t.direct = false;
                    }
                }
            }
        } else {
            return Err(IoError::invalid(
                "open",
                path,
                "not a regular file or block device",
            ));
        }
        if let Some(reason) = reason {
            tracing::warn!(path = %path.display(), %reason, "O_DIRECT unusable, falling back to buffered IO");
        }
        Ok(t)
    }

    /// Returns the direct IO alignment, or why direct IO is unusable on this file.
    fn probe_file_direct(&self) -> Result<u64, String> {
        match sys::dio_align(self.fd()) {
            Ok(Some((0, _))) => return Err("filesystem reports no O_DIRECT support".into()),
            Ok(Some((mem, _))) if u64::from(mem) > PAGE => {
                return Err(format!("O_DIRECT needs {mem}-byte aligned memory"));
            }
            Ok(Some((_, off))) if off > 0 => return Ok(u64::from(off)),
            _ => {}
        }
        // Not reported: one aligned read shows whether the filesystem really does direct IO.
        let buf = sys::PageBuf::new(DEFAULT_DIO_ALIGN as usize)
            .map_err(|e| format!("probe buffer: {e}"))?;
        // SAFETY: buf is a live private mapping of buf.len() bytes, borrowed only here.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf.as_ptr(), buf.len()) };
        match sys::pread(self.fd(), slice, 0) {
            Ok(_) => Ok(DEFAULT_DIO_ALIGN),
            Err(e) => Err(format!("probe read with O_DIRECT failed: {e}")),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub(crate) fn is_block(&self) -> bool {
        self.kind == FileKind::Block
    }

    /// A descriptor for IO that does not meet the direct IO alignment.
    pub(crate) fn buffered_fd(&mut self) -> Result<RawFd, IoError> {
        if !self.direct {
            return Ok(self.fd());
        }
        if self.buffered.is_none() {
            let f = open_with(&self.path, self.write, false)
                .map_err(|e| IoError::os("open", &self.path, e))?;
            self.buffered = Some(f);
        }
        Ok(self.buffered.as_ref().map_or(self.fd(), |f| f.as_raw_fd()))
    }

    /// fdatasync of every descriptor written through. An error here is final.
    pub(crate) fn sync_data(&self) -> Result<(), IoError> {
        crate::io::inject_fsync().map_err(|e| IoError::os("fdatasync of", &self.path, e))?;
        self.sync_descriptors()
    }

    /// fdatasync of every descriptor, without the final sync's failpoint (checkpoints).
    pub(crate) fn sync_descriptors(&self) -> Result<(), IoError> {
        for fd in self.descriptors() {
            sys::fdatasync(fd).map_err(|e| IoError::os("fdatasync of", &self.path, e))?;
        }
        Ok(())
    }

    /// Every descriptor written through (valid while this target lives).
    pub(crate) fn descriptors(&self) -> Vec<RawFd> {
        let mut v = vec![self.fd()];
        v.extend(self.buffered.as_ref().map(|b| b.as_raw_fd()));
        v
    }

    pub(crate) fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        // Some files cannot be truncated (FUSE exports of fixed-size devices answer ENOSYS);
        // one that already has the right size needs no truncate.
        if self.size == len {
            return Ok(());
        }
        self.file
            .set_len(len)
            .map_err(|e| IoError::os("truncate", &self.path, e))?;
        self.size = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A loop device detached by its name on drop, also when the test fails.
    struct Loop(PathBuf);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    /// A device node sits on devtmpfs, which statfs reports as tmpfs; the device behind it is
    /// no memory file system, and must get the ring and its queue depth (a copy onto an LV
    /// ran one synchronous request at a time while this was wrong).
    #[test]
    fn a_block_device_is_not_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        File::create(&file)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => {
                Loop(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            }
            other => {
                eprintln!("SKIP: no loop device here (needs root and loop support): {other:?}");
                return;
            }
        };
        let t = Target::open(&dev.0, true).unwrap();
        assert_eq!(t.kind, FileKind::Block);
        assert!(!t.in_memory, "{} taken for memory", dev.0.display());
        assert_eq!(t.size, 8 << 20);
    }
}
