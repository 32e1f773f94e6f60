//! Test support: engines per backend, image builders, external oracles (cmp, qemu-img,
//! sha256sum) and guards for loop devices and mounts that clean up even on panic.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod conv;
pub mod qemu;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sdm_io::{BackendChoice, BackendKind, Engine, EngineConfig};

pub const MIB: u64 = 1 << 20;

/// Small chunks and a shallow queue, so that MiB-sized images still exercise the pipeline.
/// The pool (5 x 512 KiB) is still large enough to be huge-page backed, like the defaults.
pub fn engine(backend: BackendChoice) -> Engine {
    Engine::new(EngineConfig {
        backend,
        queue_depth: 4,
        chunk_size: 512 << 10,
        ..Default::default()
    })
}

/// The io_uring engine, or None (with a message) where io_uring is unavailable.
pub fn uring() -> Option<Engine> {
    let e = engine(BackendChoice::IoUring);
    if e.backend() != BackendKind::IoUring {
        eprintln!("SKIP: io_uring unavailable here: {:?}", e.fallback_reason());
        return None;
    }
    Some(e)
}

pub fn sync() -> Engine {
    let e = engine(BackendChoice::Sync);
    assert_eq!(e.backend(), BackendKind::Sync);
    e
}

/// Generates one #[test] per backend running the body `fn $name(&Engine)`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                if let Some(e) = super::common::uring() {
                    super::$name(&e);
                }
            }
            #[test]
            fn sync() {
                super::$name(&super::common::sync());
            }
        }
    )*};
}

pub fn tempdir() -> tempfile::TempDir {
    // /var/tmp is disk-backed here like /tmp; honour TMPDIR for CI runners.
    tempfile::tempdir().expect("tempdir")
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng(seed).fill(&mut v[..]);
    v
}

/// The source shapes every differential test runs through.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Random bytes everywhere.
    Random,
    /// Mostly holes, with random data extents at unaligned places.
    Sparse,
    /// Fully allocated, mostly explicit zero bytes, some random chunks.
    ZeroHeavy,
    /// Random data, size not a multiple of any block size.
    UnalignedTail,
    /// Zero bytes long.
    Empty,
    /// Sized but entirely a hole.
    AllHole,
}

pub const SHAPES: [Shape; 6] = [
    Shape::Random,
    Shape::Sparse,
    Shape::ZeroHeavy,
    Shape::UnalignedTail,
    Shape::Empty,
    Shape::AllHole,
];

impl Shape {
    pub fn len(self) -> u64 {
        match self {
            Shape::Random | Shape::Sparse | Shape::ZeroHeavy | Shape::AllHole => 6 * MIB,
            Shape::UnalignedTail => 3 * MIB + 1234,
            Shape::Empty => 0,
        }
    }

    /// Whether the size is a whole number of 512-byte sectors (usable as a loop device).
    pub fn sector_sized(self) -> bool {
        self.len().is_multiple_of(512) && self.len() > 0
    }
}

/// Creates `path` with the given shape.
pub fn make_image(path: &Path, shape: Shape, seed: u64) {
    let f = File::create(path).expect("create image");
    let len = shape.len();
    f.set_len(len).expect("size image");
    match shape {
        Shape::Random | Shape::UnalignedTail => {
            f.write_all_at(&random_bytes(seed, len as usize), 0)
                .expect("write");
        }
        Shape::Sparse => {
            let mut r = rng(seed);
            // Extents that start and end off block boundaries, plus one touching the end.
            for i in 0..5u64 {
                let off = i * MIB + r.random_range(0..300_000);
                let n = r.random_range(1..200_000usize);
                f.write_all_at(&random_bytes(seed + i, n), off)
                    .expect("write");
            }
            f.write_all_at(&random_bytes(seed + 99, 777), len - 777)
                .expect("write");
        }
        Shape::ZeroHeavy => {
            f.write_all_at(&vec![0u8; len as usize], 0)
                .expect("write zeros");
            let mut r = rng(seed);
            for i in 0..4u64 {
                let off = r.random_range(0..len - 70_000);
                f.write_all_at(&random_bytes(seed + i, 65_536), off)
                    .expect("write");
            }
        }
        Shape::Empty | Shape::AllHole => {}
    }
    f.sync_all().expect("sync image");
}

/// Creates `path` with `len` bytes of random garbage, so that nothing reads zero by luck.
pub fn make_garbage(path: &Path, len: u64, seed: u64) {
    let f = File::create(path).expect("create");
    f.write_all_at(&random_bytes(seed ^ 0xdead, len as usize), 0)
        .expect("write");
}

/// Creates an empty destination file (the engine truncates it to size).
pub fn make_empty(path: &Path) {
    File::create(path).expect("create");
}

/// Allocated bytes of a file.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `cmp` over the first `n` bytes of both.
pub fn assert_cmp(a: &Path, b: &Path, n: u64) {
    let out = run(Command::new("cmp")
        .arg("-n")
        .arg(n.to_string())
        .arg(a)
        .arg(b));
    assert!(
        out.status.success(),
        "cmp {} {} differs: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img compare` of two raw images (a size difference is fine if the excess is zero).
pub fn assert_qemu_compare(a: &Path, b: &Path) {
    let out = run(Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b));
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts the first `n` bytes of `p` are zero, using `cmp` against /dev/zero.
pub fn assert_zeros(p: &Path, n: u64) {
    assert_cmp(p, Path::new("/dev/zero"), n);
}

pub fn sha256sum(p: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(p));
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// A loop device, detached on drop (also when the test panics).
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// Attaches `file` with direct IO; None (after printing why) where that is impossible.
    pub fn attach(file: &Path, read_only: bool) -> Option<LoopDev> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--direct-io=on", "-f", "--show"]);
        if read_only {
            cmd.arg("-r");
        }
        let out = match cmd.arg(file).output() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("SKIP: losetup not runnable: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "SKIP: no loop device (needs root and loop support): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Some(LoopDev { dev })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let out = Command::new("losetup").arg("-d").arg(&self.dev).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("warning: detaching {} failed: {out:?}", self.dev.display());
        }
    }
}

/// A size-limited tmpfs mounted on a fresh directory, unmounted on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempdir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "sdm-test"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIP: cannot mount tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP: mount not runnable: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(self.dir.path()).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "warning: unmounting {} failed: {out:?}",
                self.dir.path().display()
            );
        }
    }
}

pub fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .expect("open")
}
