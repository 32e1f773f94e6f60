//! Private, unprivileged sanlock daemons for tests (feature `test-support`).
//!
//! Each [`SanlockDaemon`] gets its own run dir (socket, pid file, log) and its own host name,
//! so any number of them can run side by side, also next to a system daemon. They run
//! without the watchdog, mlockall, RT scheduling, log file or syslog:
//!
//! ```text
//! SANLOCK_PRIVILEGED=0 SANLOCK_RUN_DIR=<dir> sanlock daemon -D -w 0 -l 0 -h 0 -U root -G root \
//!     -L -1 -S -1 -e <unique host name>        (stderr -> <dir>/daemon.log)
//! ```
//!
//! A process can talk to one daemon only (libsanlock keeps the first `SANLOCK_RUN_DIR` it
//! sees), so a test that needs two hosts drives the second one from a child process: start
//! the child with `SANLOCK_RUN_DIR=<daemon.run_dir()>` or pass `run_dir` in its
//! [`SanlockOptions`](crate::SanlockOptions).
//!
//! ```no_run
//! use sdm_lease::test_support::{sanlock_available, SanlockDaemon};
//! if let Err(why) = sanlock_available() {
//!     eprintln!("skipping: {why}");
//!     return;
//! }
//! let daemon = SanlockDaemon::start("my-test");
//! // ... SanlockLeases::new(1, SanlockOptions { io_timeout_s: 1, run_dir: Some(daemon.run_dir().into()) })
//! // killed by pid and its run dir removed when `daemon` is dropped, also on panic.
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// io_timeout for test lockspaces: joins take ~3 s instead of ~21 s.
pub const TEST_IO_TIMEOUT_S: u32 = 1;

/// Path of the `sanlock` binary (PATH, then /usr/sbin and /sbin), if installed.
pub fn sanlock_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("sanlock"))
        .find(|p| p.is_file())
}

/// `Ok` when real-daemon tests can run here; otherwise a reason to print when skipping.
pub fn sanlock_available() -> Result<(), String> {
    if !crate::libsanlock_available() {
        return Err("libsanlock.so.1 is not installed (apt-get install sanlock)".into());
    }
    if sanlock_binary().is_none() {
        return Err("the sanlock binary is not installed (apt-get install sanlock)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root (the test daemons run with -U root -G root)".into());
    }
    Ok(())
}

/// Makes the owner read that follows the next sanlock acquire in this process fail with `rc`
/// (a negative errno or `SANLK_*` code, e.g. `-libc::EIO`): that acquire must then fail and
/// hold nothing. One-shot and process-wide, so use it from a test that owns its process (its
/// own test binary) or acquires nothing else meanwhile.
pub fn fail_next_acquired_read(rc: i32) {
    assert!(rc < 0, "a failure code is negative");
    crate::sanlock::set_fail_next_acquired_read(rc);
}

/// A private sanlock daemon, killed by pid (and its run dir removed) on drop.
///
/// The daemon is started by a tiny `sh` reaper that holds the read end of a pipe from this
/// process: when the pipe closes, because the handle is dropped or because the test process
/// died without unwinding (SIGKILL, abort, a harness timeout), the reaper kills the daemon by
/// pid, reaps it and removes the run dir. So no test daemon outlives its test process.
#[derive(Debug)]
pub struct SanlockDaemon {
    reaper: Child,
    /// Write end of the reaper's stdin; closing it stops the daemon.
    keepalive: Option<ChildStdin>,
    pid: u32,
    stopped: bool,
    dir: tempfile::TempDir,
    host_name: String,
}

/// `$0 "$@"` is the daemon command line; it runs in the background with its output in
/// `$SDM_SANLOCK_LOG`, its pid goes to our stdout, then the shell blocks on stdin. An orderly
/// stop writes `keep` first (the handle still owns the run dir and may read the log); a bare
/// EOF means the test process died, so the reaper removes the run dir itself.
const REAPER: &str = r#""$0" "$@" >>"$SDM_SANLOCK_LOG" 2>&1 </dev/null &
pid=$!
echo "$pid"
read -r cmd
kill -9 "$pid" 2>/dev/null
wait "$pid"
[ "$cmd" = keep ] || rm -rf -- "$SANLOCK_RUN_DIR"
"#;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Keeps `[A-Za-z0-9-]` of `name` and at most `max` of them.
fn sanitize(name: &str, max: usize) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    if s.is_empty() {
        "t".into()
    } else {
        s
    }
}

impl SanlockDaemon {
    /// Starts a daemon and waits until its socket accepts connections. Panics with the
    /// daemon's log on failure (see [`try_start`](Self::try_start)).
    pub fn start(name: &str) -> SanlockDaemon {
        Self::try_start(name).unwrap_or_else(|e| panic!("starting sanlock daemon {name}: {e}"))
    }

    pub fn try_start(name: &str) -> Result<SanlockDaemon, String> {
        let bin = sanlock_binary().ok_or("sanlock binary not found")?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("sdm-sl-{}-", sanitize(name, 24));
        // The socket path must fit sockaddr_un (108 bytes); fall back to /tmp for long TMPDIRs.
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() + prefix.len() + 6 + "/sanlock.sock".len() >= 100 {
            base = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&base)
            .map_err(|e| format!("run dir in {}: {e}", base.display()))?;
        // Unique among all daemons that may share lockspace files: a shared name would make
        // two daemons look like one host.
        let host_name = format!("sdm-{}-{}-{n}", sanitize(name, 20), std::process::id());
        let log_path = dir.path().join("daemon.log");
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut reaper = Command::new("/bin/sh")
            .arg("-c")
            .arg(REAPER)
            .arg(&bin)
            .args([
                "daemon", "-D", "-w", "0", "-l", "0", "-h", "0", "-U", "root", "-G", "root",
            ])
            .args(["-L", "-1", "-S", "-1", "-e", &host_name])
            .env("SANLOCK_PRIVILEGED", "0")
            .env("SANLOCK_RUN_DIR", dir.path())
            .env("SDM_SANLOCK_LOG", &log_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn /bin/sh for {}: {e}", bin.display()))?;
        let keepalive = reaper.stdin.take();
        let mut line = String::new();
        let read =
            BufReader::new(reaper.stdout.take().ok_or("no reaper stdout")?).read_line(&mut line);
        let pid = match (read, line.trim().parse::<u32>()) {
            (Ok(_), Ok(pid)) => pid,
            (r, _) => {
                drop(keepalive);
                let _ = reaper.kill();
                let _ = reaper.wait();
                return Err(format!(
                    "reaper did not report the daemon pid ({r:?}, {line:?})"
                ));
            }
        };
        let mut daemon = SanlockDaemon {
            reaper,
            keepalive,
            pid,
            stopped: false,
            dir,
            host_name,
        };
        daemon.wait_ready(Duration::from_secs(15))?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let sock = self.socket_path();
        loop {
            if !self.daemon_alive() {
                return Err(format!("daemon exited; log:\n{}", self.log()));
            }
            if UnixStream::connect(&sock).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no socket at {} after {timeout:?}; log:\n{}",
                    sock.display(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's `SANLOCK_RUN_DIR`.
    pub fn run_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("sanlock.sock")
    }

    /// Pid of the sanlock daemon itself.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The host name this daemon writes into delta leases (`-e`).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// A `sanlock` command aimed at this daemon, e.g. `.args(["client", "status"])`.
    pub fn client_command(&self) -> Command {
        let mut cmd = Command::new(sanlock_binary().unwrap_or_else(|| "sanlock".into()));
        cmd.env("SANLOCK_RUN_DIR", self.dir.path());
        cmd
    }

    /// Whether the daemon process still runs (a zombie counts as gone).
    fn daemon_alive(&self) -> bool {
        if self.stopped {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // Field 3 is the state; the comm before it is in parentheses.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    /// Kills the daemon now (SIGKILL by pid, sent by its reaper) and waits until it is gone;
    /// the run dir stays until drop. Simulates a crashed daemon / host in tests.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        // EOF on the reaper's stdin: it kills the daemon by pid and reaps it, so the pid
        // cannot have been reused when the kill is sent.
        if let Some(mut pipe) = self.keepalive.take() {
            // If this write fails the reaper is gone already; EOF below still stops it.
            let _ = writeln!(pipe, "keep");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.reaper.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                // Reaper stuck: kill both directly. The daemon is still the reaper's
                // unreaped child here, so its pid is still its own.
                // SAFETY: kill(2) with a pid we started and SIGKILL; no memory is touched.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                self.reaper.kill()?;
                self.reaper.wait()?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SanlockDaemon {
    fn drop(&mut self) {
        // SIGKILL is fine for a test daemon: nothing else depends on it, and without the
        // watchdog there is no host reset to worry about.
        if let Err(e) = self.kill() {
            eprintln!(
                "sdm-lease test_support: stopping sanlock daemon pid {}: {e}",
                self.pid
            );
        }
    }
}
