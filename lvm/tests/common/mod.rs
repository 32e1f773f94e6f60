//! Helpers shared by the real-LVM tests.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Skips the test (returns) with the reason when real LVM tests cannot run here.
#[macro_export]
macro_rules! require_lvm2 {
    () => {
        if let Err(why) = sdm_lvm::test_support::lvm2_available() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

pub const MIB: u64 = 1 << 20;
pub const EXTENT: u64 = 128 * MIB;
/// Disks big enough for a few LVs of a few extents after the 128 MiB metadata area.
pub const DISK: u64 = 2 << 30;

/// A buffer aligned for O_DIRECT (4 KiB), made without unsafe by over-allocating.
pub struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub fn zeroed(len: usize) -> Aligned {
        let buf = vec![0u8; len + 4096];
        let start = buf.as_ptr().align_offset(4096);
        Aligned { buf, start, len }
    }

    /// `len` bytes of a pattern unique to `seed` and each 8-byte position.
    pub fn pattern(len: usize, seed: u64) -> Aligned {
        let mut a = Aligned::zeroed(len);
        for (i, chunk) in a.as_mut().chunks_mut(8).enumerate() {
            let v = (seed << 40) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        a
    }

    pub fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

pub fn open_direct(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

pub fn write_direct(path: &Path, offset: u64, data: &Aligned) -> std::io::Result<()> {
    let f = open_direct(path, true)?;
    f.write_all_at(data.as_ref(), offset)?;
    f.sync_all()
}

pub fn read_direct(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = open_direct(path, false)?;
    let mut buf = Aligned::zeroed(len);
    f.read_exact_at(buf.as_mut(), offset)?;
    Ok(buf.as_ref().to_vec())
}

/// Whether `/dev/loopN` is bound to a backing file right now.
pub fn loop_bound(device: &Path) -> bool {
    let name = device.file_name().unwrap();
    Path::new("/sys/block")
        .join(name)
        .join("loop/backing_file")
        .exists()
}

/// The backing file of `/dev/loopN`, if bound.
pub fn backing_file(device: &Path) -> Option<String> {
    let name = device.file_name()?;
    let path = Path::new("/sys/block").join(name).join("loop/backing_file");
    let text = std::fs::read_to_string(path).ok()?;
    // The kernel marks a backing file removed since (a test's disk image) " (deleted)".
    Some(text.trim().trim_end_matches(" (deleted)").to_string())
}

/// Loop devices whose backing file is `pv` (to check nothing leaked over a test disk).
pub fn loops_over(pv: &Path) -> Vec<String> {
    let out = sdm_lvm::test_support::losetup(&[
        "--list",
        "--noheadings",
        "--output",
        "NAME",
        "--associated",
        &pv.display().to_string(),
    ])
    .unwrap_or_default();
    let mut names: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    names.sort();
    names
}
