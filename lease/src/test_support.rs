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

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    if !crate::sanlock::linked() {
        return Err("sdm-lease was built without libsanlock (install libsanlock-dev)".into());
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

/// A private sanlock daemon, killed by pid (and its run dir removed) on drop.
#[derive(Debug)]
pub struct SanlockDaemon {
    child: Child,
    dir: tempfile::TempDir,
    host_name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Keeps `[A-Za-z0-9-]` of `name` and at most `max` of them.
fn sanitize(name: &str, max: usize) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
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
        let log = std::fs::File::create(dir.path().join("daemon.log"))
            .map_err(|e| format!("daemon.log: {e}"))?;
        let child = Command::new(&bin)
            .args(["daemon", "-D", "-w", "0", "-l", "0", "-h", "0", "-U", "root", "-G", "root"])
            .args(["-L", "-1", "-S", "-1", "-e", &host_name])
            .env("SANLOCK_PRIVILEGED", "0")
            .env("SANLOCK_RUN_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut daemon = SanlockDaemon { child, dir, host_name };
        daemon.wait_ready(Duration::from_secs(15))?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let sock = self.socket_path();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("daemon exited with {status}; log:\n{}", self.log()));
            }
            if UnixStream::connect(&sock).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no socket at {} after {timeout:?}; log:\n{}", sock.display(), self.log()));
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// Kills the daemon now (SIGKILL by pid) and reaps it; the run dir goes on drop.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
            self.child.wait()?;
        }
        Ok(())
    }
}

impl Drop for SanlockDaemon {
    fn drop(&mut self) {
        // SIGKILL is fine for a test daemon: nothing else depends on it, and without the
        // watchdog there is no host reset to worry about.
        if let Err(e) = self.kill() {
            eprintln!("sdm-lease test_support: killing sanlock daemon pid {}: {e}", self.child.id());
        }
    }
}
