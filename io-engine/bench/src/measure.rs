//! Running one tool and measuring it: wall time, CPU time and peak RSS from `wait4`, and the
//! cache and memory preparation before each run.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub wall: f64,
    pub cpu: f64,
    pub rss_mib: f64,
}

/// Runs argv to completion (stderr to `log`) and returns its wall time, CPU time and peak
/// RSS.
pub fn run_measured(argv: &[String], log: &Path) -> Result<Sample> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let stderr = File::create(log).with_context(|| log.display().to_string())?;
    let start = Instant::now();
    let child = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawn {prog}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid")?;
    let (status, ru) = wait4(pid).context("wait4")?;
    let wall = start.elapsed().as_secs_f64();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let msg = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "{} failed (status {status}): {}",
            argv.join(" "),
            msg.trim()
        );
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

pub fn median(mut v: Vec<f64>) -> f64 {
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
pub fn pretouch(exe: &str, bytes: u64) {
    let _ = Command::new(exe)
        .arg("__pretouch")
        .arg(bytes.to_string())
        .status();
}

pub fn drop_caches() {
    let _ = Command::new("sync").status();
    if let Ok(mut f) = OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
    {
        let _ = f.write_all(b"1\n");
    }
    std::thread::sleep(Duration::from_millis(500));
}

pub fn host_summary() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_failing_tool_reports_its_log() {
        let dir = std::env::temp_dir().join(format!("sdm-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("tool.log");
        let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let s = run_measured(&argv("true"), &log).unwrap();
        assert!(s.wall >= 0.0 && s.rss_mib > 0.0);
        let e = run_measured(&argv("echo broken >&2; exit 3"), &log).unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
