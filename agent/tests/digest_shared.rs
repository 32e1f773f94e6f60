//! A resume's digest on shared storage: two loop devices over one backing file stand for the
//! same LV seen from two hosts. This host (device A) read the volume earlier, so A's page
//! cache holds its old bytes; another host (device B) then rewrote them with O_DIRECT. The
//! digest read through A must describe the bytes on storage, not A's cached ones.
//!
//! Needs root and loop devices; skips, saying why, without them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sdm_agent::storage::checkpoint::{digest_of, digest_of_prefix, BOUNDARY};

/// Not a multiple of 4096: the tail of the device is a partial page (loop devices round to
/// 512-byte sectors).
const SIZE: u64 = (8 << 20) + 3 * 512;

fn why_not_runnable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (loop devices need it)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control missing: no loop device support".into());
    }
    if Command::new("losetup").arg("--version").output().is_err() {
        return Some("losetup missing (util-linux)".into());
    }
    None
}

/// Loop devices attached by this test, detached by name on drop (also when the test panics).
struct Loops(Vec<PathBuf>);

impl Loops {
    fn attach(&mut self, file: &Path) -> PathBuf {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("running losetup");
        assert!(
            out.status.success(),
            "losetup --find --show {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        self.0.push(dev.clone());
        dev
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in &self.0 {
            match Command::new("losetup").arg("--detach").arg(dev).status() {
                Ok(s) if s.success() => {}
                other => eprintln!(
                    "test cleanup: losetup --detach {}: {other:?}",
                    dev.display()
                ),
            }
        }
    }
}

/// `data` written at 0 with O_DIRECT from a page-aligned buffer, in whole sectors.
fn write_direct(dev: &Path, data: &[u8]) {
    assert_eq!(data.len() % 512, 0);
    let mut raw = vec![0u8; data.len() + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[start..start + data.len()];
    buf.copy_from_slice(data);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    f.write_all_at(buf, 0).unwrap();
    f.sync_all().unwrap();
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i / 512) as u8 ^ (i % 251) as u8 ^ seed)
        .collect()
}

#[test]
fn digest_reads_past_this_hosts_stale_page_cache() {
    if let Some(why) = why_not_runnable() {
        eprintln!("skipping: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("lv");
    let old = pattern(0x11);
    std::fs::write(&backing, &old).unwrap();
    let mut loops = Loops(Vec::new());
    let this_host = loops.attach(&backing);
    let other_host = loops.attach(&backing);

    // This host reads the volume (buffered): its page cache of A now holds the old bytes. The
    // device stays open meanwhile, as a prepared volume does: the last close of a block device
    // drops its page cache, which would hide the problem.
    let held = File::open(&this_host).unwrap();
    let mut seen = vec![0u8; SIZE as usize];
    held.read_exact_at(&mut seen, 0).unwrap();
    assert!(seen == old);

    let new = pattern(0x5c);
    write_direct(&other_host, &new);

    // The premise: a buffered read on A still sees the old bytes. Without it, the test
    // below would not tell a cache-bypassing digest from a buffered one.
    held.read_exact_at(&mut seen, 0).unwrap();
    assert!(
        seen == old,
        "device A's page cache no longer holds the old bytes"
    );

    // A segment-aligned durable offset, one in the middle of a page, and the whole device
    // (its end is not page aligned).
    for durable in [4 << 20, 5 * BOUNDARY + 1000, SIZE] {
        let want = digest_of_prefix(&new[..durable as usize]);
        assert_ne!(want, digest_of_prefix(&old[..durable as usize]));
        assert_eq!(
            digest_of(&this_host, durable).unwrap(),
            want,
            "digest through this host's device at durable={durable}: stale page cache read"
        );
        assert_eq!(digest_of(&other_host, durable).unwrap(), want);
    }
    drop(held);
}
