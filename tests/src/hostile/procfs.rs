//! Process figures from `/proc`: RSS and its high-water mark, fds by kind, and files open for
//! writing.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Figures of a process from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Resident high-water mark, bytes.
    pub hwm: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: u64,
}

/// Reads [`ProcStats`] of `pid`.
pub fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcStats {
        rss: kb("VmRSS:") * 1024,
        hwm: kb("VmHWM:") * 1024,
        threads: kb("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// Open fds of `pid` by kind: "socket", "pipe", "anon" (eventfd, io_uring, ...), "dev" and
/// "file".
pub fn fd_kinds(pid: u32) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let t = std::fs::read_link(e.path()).unwrap_or_default();
            let t = t.to_string_lossy();
            let kind = if t.starts_with("socket:") {
                "socket"
            } else if t.starts_with("pipe:") {
                "pipe"
            } else if t.starts_with("anon_inode:") {
                "anon"
            } else if t.starts_with("/dev/") {
                "dev"
            } else {
                "file"
            };
            *out.entry(kind).or_default() += 1;
        }
    }
    out
}

/// Files `pid` has open for writing (or read-write) that are not under one of `allowed` and
/// are not sockets, pipes, anonymous inodes or `/dev/null`.
pub fn open_for_writing_outside(pid: u32, allowed: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if !t.starts_with('/') || t == "/dev/null" || t.starts_with("/dev/pts") {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        let writable = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        if writable && !allowed.iter().any(|a| target.starts_with(a)) {
            out.push(format!(
                "fd {} -> {t} (flags {flags:o})",
                e.file_name().to_string_lossy()
            ));
        }
    }
    out
}
