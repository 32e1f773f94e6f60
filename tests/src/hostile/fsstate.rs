//! File-system state: every path under a directory with inode, mode, size, times and content
//! hash, and the differences between two such states.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What is known of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Inode.
    pub ino: u64,
    /// Mode (type and permissions).
    pub mode: u32,
    /// Size.
    pub len: u64,
    /// Modification time, ns.
    pub mtime: i64,
    /// Status change time, ns.
    pub ctime: i64,
    /// FNV-1a of the content (files up to 8 MiB; symlinks: of the target).
    pub hash: u64,
}

pub(super) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Every path under `dir` (not following links) with inode, mode, size, times and content
/// hash, except names in `skip`.
pub fn fs_state(dir: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Entry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| skip.iter().any(|s| n == *s)) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let hash = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| fnv(t.as_os_str().as_encoded_bytes()))
                    .unwrap_or(0)
            } else if m.is_file() && m.len() <= 8 << 20 {
                std::fs::read(&p).map(|b| fnv(&b)).unwrap_or(0)
            } else {
                0
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p,
                Entry {
                    ino: m.ino(),
                    mode: m.mode(),
                    len: m.len(),
                    mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    ctime: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                    hash,
                },
            );
        }
    }
    out
}

/// The differences between two states, one line each.
pub fn fs_diff(a: &BTreeMap<PathBuf, Entry>, b: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in a {
        match b.get(p) {
            None => out.push(format!("deleted {}", p.display())),
            Some(f) if f != e => out.push(format!("changed {}: {e:?} -> {f:?}", p.display())),
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.push(format!("created {}", p.display()));
        }
    }
    out
}
