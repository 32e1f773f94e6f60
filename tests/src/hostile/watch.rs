//! An inotify watch that sees any file opened for writing, created, renamed or deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An inotify watch over directory trees that reports every write-like event: a file closed
/// after being opened for writing, modified, created, deleted, renamed or changed in its
/// attributes.
pub struct Watch {
    fd: i32,
    dirs: BTreeMap<i32, PathBuf>,
}

const WATCH_MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MOVE_SELF;

impl Watch {
    /// Watches `roots` and every directory below them (as they are now).
    pub fn new(roots: &[PathBuf]) -> Watch {
        // SAFETY: inotify_init1 has no memory preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let mut w = Watch {
            fd,
            dirs: BTreeMap::new(),
        };
        for r in roots {
            let mut stack = vec![r.clone()];
            while let Some(d) = stack.pop() {
                w.add(&d);
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
        }
        w
    }

    fn add(&mut self, dir: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let mut c = dir.as_os_str().as_bytes().to_vec();
        c.push(0);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr().cast(), WATCH_MASK) };
        if wd >= 0 {
            self.dirs.insert(wd, dir.to_path_buf());
        }
    }

    /// The events since the last call: (path, event names).
    pub fn events(&mut self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + head <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name_bytes = &buf[off + head..off + head + ev.len as usize];
                let name = String::from_utf8_lossy(name_bytes)
                    .trim_end_matches('\0')
                    .to_string();
                let dir = self.dirs.get(&ev.wd).cloned().unwrap_or_default();
                let path = if name.is_empty() {
                    dir
                } else {
                    dir.join(&name)
                };
                out.push((path, mask_names(ev.mask)));
                off += head + ev.len as usize;
            }
        }
        out
    }
}

fn mask_names(m: u32) -> String {
    let names = [
        (libc::IN_CLOSE_WRITE, "CLOSE_WRITE"),
        (libc::IN_MODIFY, "MODIFY"),
        (libc::IN_ATTRIB, "ATTRIB"),
        (libc::IN_CREATE, "CREATE"),
        (libc::IN_DELETE, "DELETE"),
        (libc::IN_DELETE_SELF, "DELETE_SELF"),
        (libc::IN_MOVED_FROM, "MOVED_FROM"),
        (libc::IN_MOVED_TO, "MOVED_TO"),
        (libc::IN_MOVE_SELF, "MOVE_SELF"),
        (libc::IN_IGNORED, "IGNORED"),
        (libc::IN_ISDIR, "ISDIR"),
    ];
    names
        .iter()
        .filter(|(b, _)| m & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: closing the inotify fd this value owns.
        unsafe {
            libc::close(self.fd);
        }
    }
}
