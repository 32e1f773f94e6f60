//! Helpers shared by the sanlock test binaries. Each binary is its own process and so talks to
//! its own private daemon (a process is bound to one daemon).
#![allow(dead_code)] // each binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdm_lease::test_support::{
    sanlock_available, sanlock_binary, SanlockDaemon, TEST_IO_TIMEOUT_S,
};
use sdm_lease::SanlockOptions;

/// A private daemon, or `None` (after saying why) when sanlock tests cannot run here.
pub fn daemon(test: &str) -> Option<SanlockDaemon> {
    if let Err(why) = sanlock_available() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(SanlockDaemon::start(test))
}

pub fn opts(d: &SanlockDaemon) -> SanlockOptions {
    SanlockOptions {
        io_timeout_s: TEST_IO_TIMEOUT_S,
        run_dir: Some(d.run_dir().into()),
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sdm-lease-test-")
        .tempdir()
        .unwrap()
}

/// A lockspace name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}", std::process::id())
}

/// `sanlock client release -r sd:vol:path:off -p <this process>`: takes a lease away from
/// this process behind its back, as an operator or a daemon-side revocation would.
pub fn outside_release(d: &SanlockDaemon, sd: &str, vol: &str, path: &Path, off: u64) {
    let out = Command::new(sanlock_binary().unwrap())
        .args(["client", "release", "-r"])
        .arg(format!("{sd}:{vol}:{}:{off}", path.display()))
        .args(["-p", &std::process::id().to_string()])
        .env("SANLOCK_RUN_DIR", d.run_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sanlock client release: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f`, printing the daemon's log if it panics.
pub fn with_log(d: &SanlockDaemon, f: impl FnOnce()) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    if r.is_err() || std::env::var_os("SDM_LEASE_TEST_LOGS").is_some() {
        eprintln!("--- daemon log ---\n{}", d.log());
    }
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// A file whose every read and write takes `delay_ms` longer: an nbdkit memory disk behind
/// the delay filter, shown as one file by nbdfuse. Unmounted and stopped (by pid) on drop.
pub struct SlowFile {
    child: Child,
    mnt: PathBuf,
    file: PathBuf,
}

impl SlowFile {
    /// `Err(reason)` when nbdkit, nbdfuse or /dev/fuse is missing.
    pub fn start(dir: &Path, size_mib: u64, delay_ms: u64) -> Result<SlowFile, String> {
        for tool in ["nbdkit", "nbdfuse"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(format!("{tool} is not installed (scripts/install-deps)"));
            }
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing".into());
        }
        let mnt = dir.join("slow");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let file = mnt.join("slow.lease");
        let child = Command::new("nbdfuse")
            .arg(&file)
            .args(["--socket-activation", "nbdkit", "--filter=delay", "memory"])
            .arg(format!("{size_mib}M"))
            .arg(format!("rdelay={delay_ms}ms"))
            .arg(format!("wdelay={delay_ms}ms"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("nbdfuse: {e}"))?;
        let mut slow = SlowFile { child, mnt, file };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::metadata(&slow.file).is_ok_and(|m| m.len() == size_mib << 20) {
                return Ok(slow);
            }
            if let Ok(Some(st)) = slow.child.try_wait() {
                return Err(format!("nbdfuse exited: {st}"));
            }
            if Instant::now() > deadline {
                return Err("nbdfuse did not show the file within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for SlowFile {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
