//! sdm-bench: times sdm's copy, wipe and checksum against the peer tools, side by side.
//!
//! ```text
//! cargo run --release -p sdm-io --bin sdm-bench -- [--quick] [--dir DIR] [--runs N]
//!     [--only CASES] [--sweep] [--qd N] [--chunk BYTES] [--keep]
//! ```
//!
//! Builds its own images under DIR (default /tmp/sdm-bench; up to ~20 GiB) and /dev/shm, runs
//! every tool as a child process, alternating tools within each round, and prints per tool the
//! median wall seconds (including a trailing `sync -d` of file destinations), CPU seconds
//! (user+sys, from wait4) per GiB, peak RSS, and sdm's speed ratio to it. Page cache is dropped
//! before each run when running as root. Needs fio, qemu-img, coreutils, util-linux.
//!
//! CASES is a comma list of: full, sparse, empty, tmpfs, wipe, blkwipe, checksum, concurrent.
//! `--sweep` instead times sdm copies over a grid of queue depths and chunk sizes.
//!
//! Internal modes (used by the bench on itself): `__copy SRC DST`, `__wipe PATH`,
//! `__checksum PATH`, `__multi SRC DST [SRC DST]...`, each after optional
//! `--qd N --chunk BYTES --backend sync|uring --step BYTES`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use sdm_io::{BackendChoice, Control, CopyOptions, Engine, EngineConfig, WipeOptions};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(mode) = args.first().filter(|a| a.starts_with("__")) {
        return match internal(mode, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sdm-bench {mode}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match Bench::from_args(&args).and_then(|b| b.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Internal modes: the engine under test, in its own process so that it is timed like the peers.

fn internal(mode: &str, args: &[String]) -> Result<(), String> {
    if mode == "__ceiling" {
        return match args {
            [a, b] => ceiling(Path::new(a), Path::new(b)),
            _ => Err("__ceiling SRC DST".into()),
        };
    }
    if mode == "__pretouch" {
        let n: usize = args
            .first()
            .and_then(|a| a.parse().ok())
            .ok_or("__pretouch BYTES")?;
        let v = vec![1u8; n];
        std::hint::black_box(&v);
        return Ok(());
    }
    let mut cfg = EngineConfig::default();
    let mut wipe = WipeOptions::default();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--qd" => cfg.queue_depth = val()?.parse().map_err(|e| format!("--qd: {e}"))?,
            "--chunk" => cfg.chunk_size = parse_size(val()?)? as usize,
            "--step" => wipe.step = parse_size(val()?)?,
            "--backend" => {
                cfg.backend = match val()?.as_str() {
                    "sync" => BackendChoice::Sync,
                    _ => BackendChoice::IoUring,
                }
            }
            _ => rest.push(PathBuf::from(a)),
        }
    }
    let engine = Engine::new(cfg);
    let ctl = Control::new();
    let started = Instant::now();
    let r = run_internal(&engine, mode, &rest, &wipe, &ctl);
    // Goes to the tool log: the operation's own time, without process start-up.
    eprintln!(
        "{mode}: {:.6} s in the engine",
        started.elapsed().as_secs_f64()
    );
    r
}

fn run_internal(
    engine: &Engine,
    mode: &str,
    rest: &[PathBuf],
    wipe: &WipeOptions,
    ctl: &Control,
) -> Result<(), String> {
    let err = |e: sdm_io::IoError| e.to_string();
    match (mode, rest) {
        ("__copy", [src, dst]) => engine
            .copy(src, dst, &CopyOptions::default(), ctl)
            .map(drop)
            .map_err(err),
        ("__wipe", [p]) => engine.wipe(p, wipe, ctl).map(drop).map_err(err),
        ("__checksum", [p]) => {
            let sum = engine.checksum(p, ctl).map_err(err)?;
            println!("{sum}  {}", p.display());
            Ok(())
        }
        ("__multi", pairs) if !pairs.is_empty() && pairs.len() % 2 == 0 => {
            std::thread::scope(|s| {
                let jobs: Vec<_> = pairs
                    .chunks(2)
                    .map(|p| {
                        let e = engine.clone();
                        s.spawn(move || {
                            e.copy(&p[0], &p[1], &CopyOptions::default(), &Control::new())
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .try_for_each(|j| j.join().expect("copy thread").map(drop))
            })
            .map_err(err)
        }
        _ => Err(format!("bad arguments for {mode}")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The engine-shaped IO ceiling: read A while writing B, no data dependency between them.

/// Reads SRC and writes as many bytes to DST at the same time, each stream on its own thread
/// and ring with the engine's IO shape (O_DIRECT, 8 requests of 1 MiB in flight, buffers in
/// huge pages), then fdatasyncs DST. What a copy could reach if it cost nothing but the IO.
fn ceiling(src: &Path, dst: &Path) -> Result<(), String> {
    let len = std::fs::metadata(src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .len();
    std::thread::scope(|s| {
        let r = s.spawn(|| stream(src, len, false));
        let w = s.spawn(|| stream(dst, len, true));
        let r = r.join().map_err(|_| "reader panicked".to_string())?;
        let w = w.join().map_err(|_| "writer panicked".to_string())?;
        r.and(w)
    })
}

const STREAM_DEPTH: usize = 8;
const STREAM_BS: usize = 1 << 20;

/// Huge-page backed, 2 MiB aligned anonymous memory (like the engine's pool).
struct HugeBuf {
    map: *mut libc::c_void,
    map_len: usize,
    ptr: *mut u8,
}

impl HugeBuf {
    fn new(len: usize) -> Result<HugeBuf, String> {
        let map_len = len + (2 << 20);
        // SAFETY: a fresh anonymous private mapping touches no existing memory.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(format!("mmap: {}", io::Error::last_os_error()));
        }
        let skip = ((2 << 20) - map as usize % (2 << 20)) % (2 << 20);
        let ptr = (map as *mut u8).wrapping_add(skip);
        // SAFETY: the range lies inside the mapping; failure only means small pages.
        unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        Ok(HugeBuf { map, map_len, ptr })
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); stream() reaps all IO first.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

fn stream(path: &Path, len: u64, write: bool) -> Result<(), String> {
    use io_uring::{opcode, types::Fd, IoUring};
    use std::os::fd::AsRawFd;

    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .create(write)
        .truncate(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let fd = Fd(f.as_raw_fd());
    let buf = HugeBuf::new(STREAM_DEPTH * STREAM_BS)?;
    if write {
        // SAFETY: the buffer is ours and no IO is in flight yet.
        unsafe { std::ptr::write_bytes(buf.ptr, 0xa5, STREAM_DEPTH * STREAM_BS) };
    }
    let mut ring = IoUring::new(2 * STREAM_DEPTH as u32).map_err(|e| format!("ring: {e}"))?;
    let iov: Vec<libc::iovec> = (0..STREAM_DEPTH)
        .map(|i| libc::iovec {
            iov_base: buf.ptr.wrapping_add(i * STREAM_BS).cast(),
            iov_len: STREAM_BS,
        })
        .collect();
    // SAFETY: the buffers stay mapped until `buf` drops, after the ring (declared later, so
    // dropped first) is gone.
    unsafe { ring.submitter().register_buffers(&iov) }.map_err(|e| format!("register: {e}"))?;
    let mut free: Vec<usize> = (0..STREAM_DEPTH).collect();
    let (mut next, mut inflight, mut err) = (0u64, 0usize, None);
    loop {
        while err.is_none() && next < len {
            let Some(i) = free.pop() else { break };
            let n = (len - next).min(STREAM_BS as u64) as u32;
            let p = buf.ptr.wrapping_add(i * STREAM_BS);
            let sqe = if write {
                opcode::WriteFixed::new(fd, p, n, i as u16)
                    .offset(next)
                    .build()
            } else {
                opcode::ReadFixed::new(fd, p, n, i as u16)
                    .offset(next)
                    .build()
            };
            // SAFETY: buffer i belongs to this request until its completion is reaped below;
            // the loop only ends once nothing is in flight, before `buf` is dropped.
            unsafe { ring.submission().push(&sqe.user_data(i as u64)) }
                .map_err(|_| "submission queue full".to_string())?;
            next += u64::from(n);
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() != Some(libc::EINTR) {
                // Requests may still be in flight: the buffer must outlive them.
                std::mem::forget(buf);
                return Err(format!("io_uring_enter: {e}"));
            }
        }
        for c in ring.completion() {
            inflight -= 1;
            free.push(c.user_data() as usize);
            if c.result() < 0 && err.is_none() {
                err = Some(io::Error::from_raw_os_error(-c.result()));
            }
        }
    }
    if let Some(e) = err {
        return Err(format!("{}: {e}", path.display()));
    }
    if write {
        f.sync_data()
            .map_err(|e| format!("fdatasync {}: {e}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurement.

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

/// Runs argv to completion and returns its wall time, CPU time and peak RSS (wait4).
fn run_measured(argv: &[String], log: &Path) -> Result<Sample, String> {
    let stderr = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let start = Instant::now();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", argv[0]))?;
    let (status, ru) = wait4(child.id() as libc::pid_t).map_err(|e| format!("wait4: {e}"))?;
    let wall = start.elapsed().as_secs_f64();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let msg = std::fs::read_to_string(log).unwrap_or_default();
        return Err(format!(
            "{} failed (status {status}): {}",
            argv.join(" "),
            msg.trim()
        ));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Sample {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_mib: ru.ru_maxrss as f64 / 1024.0,
    })
}

fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and ru are valid for writes; pid is our own unwaited child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Touches (and frees) `bytes` of memory, so that the host backs the guest's free memory
/// again before a timed run writes into fresh tmpfs pages (balloon free-page reporting hands
/// freed memory back to the host, and touching it then runs at about 1 GiB/s).
///
/// Done in a child process: children are spawned with vfork, and exec hands the parent's RSS
/// high-water mark to the child's `ru_maxrss`, so touching memory here would spoil every
/// later RSS measurement.
fn pretouch(exe: &str, bytes: u64) {
    let _ = Command::new(exe)
        .arg("__pretouch")
        .arg(bytes.to_string())
        .status();
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    if let Ok(mut f) = OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
    {
        let _ = f.write_all(b"1\n");
    }
    std::thread::sleep(Duration::from_millis(500));
}

// ---------------------------------------------------------------------------------------------
// Images.

/// wyrand: fast enough that image creation is disk-bound.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes()[..c.len()]);
        }
    }
}

/// A 4 KiB-aligned buffer in safe code: over-allocate and start at the aligned offset.
struct Aligned {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + 4096];
        let start = v.as_ptr().align_offset(4096);
        Aligned { v, start, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.v[self.start..self.start + self.len]
    }
}

/// Writes `len` bytes of the file: random where `data(off)` says so, holes elsewhere.
fn make_image(path: &Path, len: u64, seed: u64, data: impl Fn(u64) -> bool) -> Result<(), String> {
    let e = |e: io::Error| format!("{}: {e}", path.display());
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(e)?;
    f.set_len(len).map_err(e)?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut buf = Aligned::new(MIB as usize);
    let mut off = 0;
    while off < len {
        if data(off) {
            rng.fill(buf.get());
            f.write_all_at(buf.get(), off).map_err(e)?;
        }
        off += MIB;
    }
    f.sync_all().map_err(e)
}

/// A loop device (direct IO), detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Result<Loop, String> {
        let out = Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// One contender in a case.
struct Tool {
    name: String,
    argv: Vec<String>,
    /// Output file: removed before each run (and created empty when `create`), synced after.
    dst: Option<PathBuf>,
    create: bool,
    /// Whether this is the engine under test (ratios are against it).
    sdm: bool,
    /// Excluded from "best peer" (reference measurements such as the IO ceiling).
    reference: bool,
    /// Untimed command run before every run (e.g. refilling a volume before a wipe).
    setup: Option<Vec<String>>,
    /// After sdm's first run this path must read as zeros over `logical` bytes.
    check_zero: Option<PathBuf>,
}

struct Row {
    case: String,
    tool: String,
    wall: f64,
    cpu: f64,
    rss: f64,
    gib: f64,
    sdm: bool,
    reference: bool,
}

struct Bench {
    quick: bool,
    dir: PathBuf,
    shm: PathBuf,
    runs: usize,
    only: Option<Vec<String>>,
    keep: bool,
    sweep: bool,
    engine_args: Vec<String>,
    exe: String,
    rows: Vec<Row>,
}

fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

impl Bench {
    fn from_args(args: &[String]) -> Result<Bench, String> {
        let mut b = Bench {
            quick: false,
            dir: PathBuf::from("/tmp/sdm-bench"),
            shm: PathBuf::from("/dev/shm/sdm-bench"),
            runs: 0,
            only: None,
            keep: false,
            sweep: false,
            engine_args: Vec::new(),
            exe: s(std::env::current_exe().map_err(|e| e.to_string())?),
            rows: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--quick" => b.quick = true,
                "--dir" => b.dir = PathBuf::from(val()?),
                "--runs" => b.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
                "--only" => b.only = Some(val()?.split(',').map(str::to_string).collect()),
                "--keep" => b.keep = true,
                "--sweep" => b.sweep = true,
                "--qd" | "--chunk" => {
                    b.engine_args.push(a.clone());
                    b.engine_args.push(val()?);
                }
                "-h" | "--help" => {
                    println!("usage: sdm-bench [--quick] [--dir DIR] [--runs N] [--only CASES] [--sweep] [--qd N] [--chunk BYTES] [--keep]");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if b.runs == 0 {
            b.runs = if b.quick { 3 } else { 5 };
        }
        Ok(b)
    }

    fn wants(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|c| c == case))
    }

    fn size(&self) -> u64 {
        if self.quick {
            GIB
        } else {
            4 * GIB
        }
    }

    fn sdm(&self, mode: &str, extra: &[String]) -> Vec<String> {
        let mut v = vec![self.exe.clone(), mode.to_string()];
        v.extend(self.engine_args.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    }

    fn run(mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let cmdline = std::env::args().collect::<Vec<_>>().join(" ");
        println!("# sdm-bench: {cmdline}");
        println!(
            "# dir {} ({} runs per tool, alternating)",
            self.dir.display(),
            self.runs
        );
        println!("# {}", host_summary());
        let e = Engine::new(EngineConfig::default());
        println!(
            "# engine: backend {}, queue depth {}, chunk {} KiB (defaults; overrides: {:?})",
            e.backend().as_str(),
            e.queue_depth(),
            e.chunk_size() >> 10,
            self.engine_args
        );
        let r = if self.sweep {
            self.run_sweep()
        } else {
            self.run_cases()
        };
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_dir_all(&self.shm);
        }
        r?;
        if !self.sweep {
            self.print_table();
            self.print_targets();
        }
        println!("# at the end: {}", host_summary());
        Ok(())
    }

    fn run_cases(&mut self) -> Result<(), String> {
        let n = self.size();
        let src_full = self.dir.join("src_full.raw");
        let src_sparse = self.dir.join("src_sparse.raw");
        let dst = self.dir.join("dst.raw");
        if ["full", "sparse", "checksum", "tmpfs", "wipe", "blkwipe"]
            .iter()
            .any(|c| self.wants(c))
        {
            eprintln!("building images ...");
            make_image(&src_full, n, 1, |_| true)?;
        }
        if self.wants("full") {
            let tools = self.copy_tools(&src_full, &dst, true);
            self.case("full copy (disk)", n, tools, Some(&src_full))?;
        }
        if self.wants("sparse") {
            make_image(&src_sparse, n, 2, |off| off % (10 * MIB) == 0)?;
            let tools = self.copy_tools(&src_sparse, &dst, false);
            self.case("10% sparse copy (disk)", n, tools, Some(&src_sparse))?;
            let _ = std::fs::remove_file(&src_sparse);
        }
        if self.wants("empty") {
            let src_empty = self.dir.join("src_empty.raw");
            File::create(&src_empty)
                .and_then(|f| f.set_len(1 << 40))
                .map_err(|e| format!("{}: {e}", src_empty.display()))?;
            let mut tools = self.copy_tools(&src_empty, &dst, false);
            tools.retain(|t| !t.name.starts_with("dd"));
            self.case("1 TiB empty sparse copy (disk)", 1 << 40, tools, None)?;
            let _ = std::fs::remove_file(&src_empty);
        }
        if self.wants("checksum") {
            let tools = vec![
                self.tool(
                    "sdm checksum",
                    self.sdm("__checksum", &[s(&src_full)]),
                    None,
                    true,
                ),
                self.tool(
                    "sha256sum",
                    vec!["sha256sum".into(), s(&src_full)],
                    None,
                    false,
                ),
            ];
            self.case("checksum (disk)", n, tools, None)?;
        }
        if self.wants("wipe") {
            let v = self.dir.join("wipe.raw");
            std::fs::copy(&src_full, &v).map_err(|e| format!("copy wipe image: {e}"))?;
            // Every run starts from the same fully written volume, refilled untimed.
            let refill = sh(&format!(
                "dd if={} of={} bs=4M iflag=direct oflag=direct conv=notrunc status=none",
                src_full.display(),
                v.display()
            ));
            let dd = format!(
                "dd if=/dev/zero of={v} bs=4M count={} oflag=direct conv=notrunc status=none && sync -d {v}",
                n / (4 * MIB),
                v = v.display()
            );
            let tools = vec![
                Tool {
                    setup: Some(refill.clone()),
                    check_zero: Some(v.clone()),
                    ..self.tool("sdm wipe", self.sdm("__wipe", &[s(&v)]), None, true)
                },
                Tool {
                    setup: Some(refill),
                    ..self.tool("dd if=/dev/zero oflag=direct", sh(&dd), None, false)
                },
            ];
            self.case("wipe (file, real zero writes)", n, tools, None)?;
            let _ = std::fs::remove_file(&v);
        }
        if self.wants("blkwipe") {
            let v = self.dir.join("blkwipe.raw");
            std::fs::copy(&src_full, &v).map_err(|e| format!("copy wipe image: {e}"))?;
            let dev = Loop::attach(&v)?;
            let refill = sh(&format!(
                "dd if={} of={} bs=4M iflag=direct oflag=direct status=none",
                src_full.display(),
                dev.0
            ));
            let tools = vec![
                Tool {
                    setup: Some(refill.clone()),
                    check_zero: Some(PathBuf::from(&dev.0)),
                    ..self.tool(
                        "sdm wipe",
                        self.sdm("__wipe", std::slice::from_ref(&dev.0)),
                        None,
                        true,
                    )
                },
                Tool {
                    setup: Some(refill.clone()),
                    ..self.tool(
                        "blkdiscard -z",
                        vec!["blkdiscard".into(), "-z".into(), dev.0.clone()],
                        None,
                        false,
                    )
                },
                Tool {
                    setup: Some(refill),
                    reference: true,
                    sdm: false,
                    ..self.tool(
                        "sdm wipe, one step (reference)",
                        self.sdm("__wipe", &["--step".into(), n.to_string(), dev.0.clone()]),
                        None,
                        true,
                    )
                },
            ];
            self.case("wipe (loop device)", n, tools, None)?;
            drop(dev);
            let _ = std::fs::remove_file(&v);
        }
        if self.wants("tmpfs") {
            std::fs::create_dir_all(&self.shm)
                .map_err(|e| format!("{}: {e}", self.shm.display()))?;
            let ssrc = self.shm.join("src.raw");
            let sdst = self.shm.join("dst.raw");
            std::fs::copy(&src_full, &ssrc).map_err(|e| format!("copy to tmpfs: {e}"))?;
            let tools = self.copy_tools(&ssrc, &sdst, true);
            self.case_with("full copy (tmpfs)", n, tools, Some(&ssrc), Some(2 * n))?;
            let _ = std::fs::remove_dir_all(&self.shm);
        }
        let _ = std::fs::remove_file(&src_full);
        let _ = std::fs::remove_file(&dst);
        if self.wants("concurrent") {
            self.concurrent()?;
        }
        Ok(())
    }

    fn tool(&self, name: &str, argv: Vec<String>, dst: Option<&Path>, sdm: bool) -> Tool {
        Tool {
            name: name.to_string(),
            argv,
            dst: dst.map(Path::to_path_buf),
            create: sdm,
            sdm,
            reference: false,
            setup: None,
            check_zero: None,
        }
    }

    /// sdm against VDSM's qemu-img flags, the faster qemu-img flags, dd direct and cp.
    fn copy_tools(&self, src: &Path, dst: &Path, with_ceiling: bool) -> Vec<Tool> {
        let (sp, dp) = (s(src), s(dst));
        let synced = |cmd: String| sh(&format!("{cmd} && sync -d {dp}"));
        let mut v = vec![
            self.tool(
                "sdm copy",
                self.sdm("__copy", &[sp.clone(), dp.clone()]),
                Some(dst),
                true,
            ),
            Tool {
                sdm: false,
                ..self.tool(
                    "sdm copy (sync backend)",
                    self.sdm(
                        "__copy",
                        &["--backend".into(), "sync".into(), sp.clone(), dp.clone()],
                    ),
                    Some(dst),
                    true,
                )
            },
            self.tool(
                "qemu-img -t none -T none (VDSM)",
                synced(format!(
                    "qemu-img convert -p -t none -T none -f raw -O raw {sp} {dp}"
                )),
                Some(dst),
                false,
            ),
            self.tool(
                "qemu-img ... -W -m 16",
                synced(format!(
                    "qemu-img convert -p -t none -T none -W -m 16 -f raw -O raw {sp} {dp}"
                )),
                Some(dst),
                false,
            ),
            self.tool(
                "dd bs=4M direct",
                synced(format!(
                    "dd if={sp} of={dp} bs=4M iflag=direct oflag=direct status=none"
                )),
                Some(dst),
                false,
            ),
            self.tool(
                "cp --sparse=always",
                synced(format!("cp --sparse=always {sp} {dp}")),
                Some(dst),
                false,
            ),
        ];
        if with_ceiling && !src.starts_with("/dev/shm") {
            let size = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
            v.push(Tool {
                reference: true,
                ..self.tool(
                    "ceiling: engine IO, read A + write B",
                    sh(&format!("{} __ceiling {sp} {dp}", self.exe)),
                    Some(dst),
                    false,
                )
            });
            v.push(Tool {
                reference: true,
                ..self.tool(
                    "ceiling: fio read A + write B",
                    sh(&format!(
                        "fio --output=/dev/null --direct=1 --ioengine=io_uring --bs=1M --iodepth=16 --fallocate=none \
                         --name=rd --rw=read --filename={sp} --size={size} \
                         --name=wr --rw=write --filename={dp} --size={size} && sync -d {dp}"
                    )),
                    Some(dst),
                    false,
                )
            });
        }
        v
    }

    /// Runs every tool `runs` times, alternating, and records medians.
    fn case(
        &mut self,
        case: &str,
        logical: u64,
        tools: Vec<Tool>,
        check: Option<&Path>,
    ) -> Result<(), String> {
        self.case_with(case, logical, tools, check, None)
    }

    /// Like `case`, but with `pretouch` set touches that much memory before each run instead
    /// of dropping the page cache (for tmpfs, where the destination is fresh memory).
    fn case_with(
        &mut self,
        case: &str,
        logical: u64,
        tools: Vec<Tool>,
        check: Option<&Path>,
        pretouch_bytes: Option<u64>,
    ) -> Result<(), String> {
        eprintln!("== {case}  [{}]", host_summary());
        let log = self.dir.join("tool.log");
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
        for round in 0..self.runs {
            for (i, t) in tools.iter().enumerate() {
                if let Some(d) = &t.dst {
                    let _ = std::fs::remove_file(d);
                    if t.create {
                        File::create(d).map_err(|e| format!("{}: {e}", d.display()))?;
                    }
                }
                if let Some(setup) = &t.setup {
                    run_measured(setup, &log).map_err(|e| format!("setup: {e}"))?;
                }
                match pretouch_bytes {
                    Some(b) => pretouch(&self.exe, b),
                    None => drop_caches(),
                }
                let smp = run_measured(&t.argv, &log)?;
                eprintln!(
                    "   round {round} {:<34} {:8.3} s  cpu {:7.3} s  rss {:6.1} MiB",
                    t.name, smp.wall, smp.cpu, smp.rss_mib
                );
                if let (0, Some(z)) = (round, &t.check_zero) {
                    let ok = Command::new("cmp")
                        .arg("-n")
                        .arg(logical.to_string())
                        .arg(z)
                        .arg("/dev/zero")
                        .status()
                        .map(|s| s.success());
                    if !matches!(ok, Ok(true)) {
                        return Err(format!("{case}: {} left non-zero data", t.name));
                    }
                }
                if round == 0 && t.sdm {
                    if let (Some(src), Some(d)) = (check, &t.dst) {
                        let ok = Command::new("cmp")
                            .arg(src)
                            .arg(d)
                            .status()
                            .map(|s| s.success());
                        if !matches!(ok, Ok(true)) {
                            return Err(format!(
                                "{case}: {} output differs from the source",
                                t.name
                            ));
                        }
                    }
                }
                samples[i].push(smp);
            }
        }
        for (t, smp) in tools.iter().zip(samples) {
            self.rows.push(Row {
                case: case.to_string(),
                tool: t.name.clone(),
                wall: median(smp.iter().map(|x| x.wall).collect()),
                cpu: median(smp.iter().map(|x| x.cpu).collect()),
                rss: smp.iter().map(|x| x.rss_mib).fold(0.0, f64::max),
                gib: logical as f64 / GIB as f64,
                sdm: t.sdm,
                reference: t.reference,
            });
            if let Some(d) = &t.dst {
                let _ = std::fs::remove_file(d);
            }
        }
        Ok(())
    }

    fn concurrent(&mut self) -> Result<(), String> {
        let each = if self.quick { 256 * MIB } else { GIB };
        eprintln!("building 8 images of {} MiB ...", each >> 20);
        let mut pairs = Vec::new();
        for i in 0..8 {
            let src = self.dir.join(format!("c_src{i}.raw"));
            make_image(&src, each, 10 + i, |_| true)?;
            pairs.push((src, self.dir.join(format!("c_dst{i}.raw"))));
        }
        let flat: Vec<String> = pairs.iter().flat_map(|(a, b)| [s(a), s(b)]).collect();
        let tools = [
            Tool {
                create: true,
                ..self.tool(
                    "1 copy alone",
                    self.sdm("__copy", &flat[..2]),
                    Some(&pairs[0].1),
                    true,
                )
            },
            Tool {
                create: true,
                ..self.tool(
                    "8 concurrent copies",
                    self.sdm("__multi", &flat),
                    None,
                    true,
                )
            },
        ];
        // The concurrent run's destinations must exist; create them in a wrapper round.
        let log = self.dir.join("tool.log");
        let mut samples = vec![Vec::new(), Vec::new()];
        for round in 0..self.runs {
            for (i, t) in tools.iter().enumerate() {
                let outs: Vec<&PathBuf> = if i == 0 {
                    vec![&pairs[0].1]
                } else {
                    pairs.iter().map(|p| &p.1).collect()
                };
                for d in outs {
                    let _ = std::fs::remove_file(d);
                    File::create(d).map_err(|e| format!("{}: {e}", d.display()))?;
                }
                drop_caches();
                let smp = run_measured(&t.argv, &log)?;
                eprintln!(
                    "   round {round} {:<34} {:8.3} s  cpu {:7.3} s  rss {:6.1} MiB",
                    t.name, smp.wall, smp.cpu, smp.rss_mib
                );
                samples[i].push(smp);
            }
        }
        for (i, (t, smp)) in tools.iter().zip(samples).enumerate() {
            self.rows.push(Row {
                case: "concurrency (disk)".into(),
                tool: t.name.clone(),
                wall: median(smp.iter().map(|x| x.wall).collect()),
                cpu: median(smp.iter().map(|x| x.cpu).collect()),
                rss: smp.iter().map(|x| x.rss_mib).fold(0.0, f64::max),
                gib: (if i == 0 { each } else { 8 * each }) as f64 / GIB as f64,
                sdm: i == 0,
                reference: false,
            });
        }
        for (a, b) in &pairs {
            let _ = std::fs::remove_file(a);
            let _ = std::fs::remove_file(b);
        }
        Ok(())
    }

    fn run_sweep(&mut self) -> Result<(), String> {
        let n = self.size();
        let src = self.dir.join("src_full.raw");
        let dst = self.dir.join("dst.raw");
        make_image(&src, n, 1, |_| true)?;
        std::fs::create_dir_all(&self.shm).map_err(|e| e.to_string())?;
        let ssrc = self.shm.join("src.raw");
        let sdst = self.shm.join("dst.raw");
        std::fs::copy(&src, &ssrc).map_err(|e| e.to_string())?;
        let grid: &[(u32, &str)] = &[
            (2, "1m"),
            (4, "1m"),
            (8, "1m"),
            (16, "1m"),
            (32, "1m"),
            (4, "4m"),
            (8, "4m"),
            (8, "256k"),
            (32, "256k"),
        ];
        for (where_, s_, d_) in [("disk", &src, &dst), ("tmpfs", &ssrc, &sdst)] {
            for backend in ["uring", "sync"] {
                let tools: Vec<Tool> = grid
                    .iter()
                    .map(|(qd, chunk)| {
                        let argv = vec![
                            self.exe.clone(),
                            "__copy".into(),
                            "--backend".into(),
                            backend.into(),
                            "--qd".into(),
                            qd.to_string(),
                            "--chunk".into(),
                            chunk.to_string(),
                            s(s_),
                            s(d_),
                        ];
                        self.tool(
                            &format!("{backend} qd {qd} chunk {chunk}"),
                            argv,
                            Some(d_),
                            true,
                        )
                    })
                    .collect();
                self.case(&format!("sweep {where_} {backend}"), n, tools, None)?;
            }
        }
        println!(
            "\n{:<20} {:<28} {:>9} {:>9} {:>11} {:>9}",
            "sweep", "config", "median s", "GiB/s", "CPU s/GiB", "RSS MiB"
        );
        for r in &self.rows {
            println!(
                "{:<20} {:<28} {:>9.3} {:>9.2} {:>11.3} {:>9.1}",
                r.case,
                r.tool,
                r.wall,
                r.gib / r.wall,
                r.cpu / r.gib,
                r.rss
            );
        }
        Ok(())
    }

    fn print_table(&self) {
        println!();
        println!(
            "| case | tool | median s | GiB/s | CPU s/GiB | peak RSS MiB | sdm speed-up (peer s / sdm s) |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let sdm = self.rows.iter().find(|x| x.case == r.case && x.sdm);
            let ratio = match sdm {
                Some(x) if !r.sdm && r.case != "concurrency (disk)" => {
                    format!("{:.2}×", r.wall / x.wall)
                }
                _ => "–".into(),
            };
            println!(
                "| {} | {} | {:.3} | {:.2} | {:.3} | {:.1} | {} |",
                r.case,
                r.tool,
                r.wall,
                r.gib / r.wall,
                r.cpu / r.gib,
                r.rss,
                ratio
            );
        }
    }

    fn get(&self, case: &str, tool: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.case == case && r.tool.starts_with(tool))
    }

    fn best_peer(&self, case: &str) -> Option<&Row> {
        self.rows
            .iter()
            .filter(|r| r.case == case && !r.sdm && !r.reference && !r.tool.starts_with("sdm"))
            .min_by(|a, b| a.wall.total_cmp(&b.wall))
    }

    fn print_targets(&self) {
        println!("\n# targets");
        let line = |name: &str, ok: Option<bool>, detail: String| {
            let verdict = match ok {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a ",
            };
            println!("{verdict}  {name}: {detail}");
        };
        let full = "full copy (disk)";
        let ceil = self
            .rows
            .iter()
            .filter(|r| r.case == full && r.tool.starts_with("ceiling"))
            .min_by(|a, b| a.wall.total_cmp(&b.wall));
        if let (Some(sdm), Some(ceil)) = (self.get(full, "sdm copy"), ceil) {
            let r = ceil.wall / sdm.wall;
            line(
                "disk copy >= 0.95x ceiling",
                Some(r >= 0.95),
                format!("{r:.2}x of the faster ceiling ({})", ceil.tool),
            );
        }
        // The 1 TiB empty copy's target is absolute (< 0.5 s, below); its peers' times are in
        // the table.
        for case in [full, "10% sparse copy (disk)"] {
            if let (Some(sdm), Some(best)) = (self.get(case, "sdm copy"), self.best_peer(case)) {
                let r = best.wall / sdm.wall;
                line(
                    &format!("{case}: no slower than best peer"),
                    Some(r >= 1.0),
                    format!(
                        "best peer {} {:.3} s, sdm {:.3} s ({r:.2}x)",
                        best.tool, best.wall, sdm.wall
                    ),
                );
            }
        }
        let tmp = "full copy (tmpfs)";
        if let (Some(sdm), Some(q)) = (self.get(tmp, "sdm copy"), self.get(tmp, "qemu-img -t none"))
        {
            let r = q.wall / sdm.wall;
            line(
                "tmpfs copy >= 1.25x qemu-img (VDSM flags)",
                Some(r >= 1.25),
                format!("{r:.2}x"),
            );
        }
        for case in [full, tmp] {
            if let (Some(sdm), Some(q)) = (
                self.get(case, "sdm copy"),
                self.get(case, "qemu-img -t none"),
            ) {
                let r = sdm.cpu / q.cpu;
                line(
                    &format!("{case}: CPU/GiB <= 0.5x qemu-img"),
                    Some(r <= 0.5),
                    format!(
                        "sdm {:.3} vs qemu-img {:.3} CPU s/GiB ({r:.2}x)",
                        sdm.cpu / sdm.gib,
                        q.cpu / q.gib
                    ),
                );
            }
        }
        if let Some(e) = self.get("1 TiB empty sparse copy (disk)", "sdm copy") {
            line(
                "1 TiB empty < 0.5 s",
                Some(e.wall < 0.5),
                format!("{:.3} s", e.wall),
            );
        }
        let w = "wipe (file, real zero writes)";
        if let (Some(sdm), Some(dd)) = (self.get(w, "sdm wipe"), self.get(w, "dd")) {
            let r = dd.wall / sdm.wall;
            line(
                "file wipe no slower than dd",
                Some(r >= 1.0),
                format!("{r:.2}x"),
            );
        }
        let b = "wipe (loop device)";
        if let (Some(sdm), Some(bd)) = (self.get(b, "sdm wipe"), self.get(b, "blkdiscard")) {
            let r = bd.wall / sdm.wall;
            line(
                "block wipe >= 0.9x blkdiscard -z",
                Some(r >= 0.9),
                format!("{r:.2}x"),
            );
        }
        let c = "checksum (disk)";
        if let (Some(sdm), Some(sh)) = (self.get(c, "sdm checksum"), self.get(c, "sha256sum")) {
            let r = sh.wall / sdm.wall;
            line("checksum >= sha256sum", Some(r >= 1.0), format!("{r:.2}x"));
        }
        let k = "concurrency (disk)";
        if let (Some(one), Some(eight)) = (self.get(k, "1 copy"), self.get(k, "8 concurrent")) {
            let r = (eight.gib / eight.wall) / (one.gib / one.wall);
            line(
                "8 concurrent keep >= 90% aggregate throughput",
                Some(r >= 0.9),
                format!(
                    "{:.2} vs {:.2} GiB/s ({r:.2}x)",
                    eight.gib / eight.wall,
                    one.gib / one.wall
                ),
            );
            line(
                "8 concurrent within 128 MiB RSS",
                Some(eight.rss <= 128.0),
                format!("{:.1} MiB", eight.rss),
            );
        }
    }
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.to_string()]
}

fn host_summary() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "host: {cpus} CPUs, kernel {}, loadavg {}",
        kernel.trim(),
        load.trim()
    )
}
