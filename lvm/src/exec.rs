//! Running a tool with a deadline.
//!
//! Each command runs in its own process group so that, on expiry, everything it started is
//! signalled with it: first SIGTERM (LVM then gives up a lock wait cleanly and says so on
//! stderr), then SIGKILL after a short grace. stdout and stderr are drained on threads so a
//! chatty command cannot block on a full pipe.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Failure, LvmError};

/// How long a command gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the output pipes after the process is gone (a grandchild that left
/// the process group could keep them open).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Most of stdout/stderr kept per command; reports of thousands of LVs stay far below.
const MAX_OUTPUT: usize = 64 << 20;

/// stderr lines LVM prints on every run in our configuration; they are not news.
const NOISE: [&str; 4] = [
    "WARNING: Activation disabled. No device-mapper interaction will be attempted.",
    "WARNING: This metadata update is NOT backed up.",
    " not zeroed.",
    "leaked on lvm invocation",
];

/// A finished command.
#[derive(Debug)]
pub(crate) struct Output {
    pub argv: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    /// stderr without [`NOISE`] lines, trimmed.
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The failure record for an unsuccessful run.
    pub fn failure(&self) -> Failure {
        Failure {
            argv: self.argv.clone(),
            status: self.status.code(),
            stderr: self.stderr.clone(),
        }
    }
}

/// Runs `program args…` with `LC_ALL=C`, no stdin, and a deadline.
pub(crate) fn run(program: &Path, args: &[String], timeout: Duration) -> Result<Output, LvmError> {
    let mut argv = Vec::with_capacity(args.len() + 1);
    argv.push(program.display().to_string());
    argv.extend(args.iter().cloned());

    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        // The agent may hold descriptors LVM does not know; it would warn about each one.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| LvmError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let pgid = child.id();

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                kill_group(pgid, &mut child);
                return Err(LvmError::Spawn {
                    program: program.to_path_buf(),
                    source,
                });
            }
        }
    };
    let Some(status) = status else {
        kill_group(pgid, &mut child);
        let stderr = collect(stderr);
        return Err(LvmError::Timeout {
            argv,
            timeout,
            stderr: clean_stderr(&stderr),
        });
    };
    let stdout = collect(stdout);
    let stderr = collect(stderr);
    Ok(Output {
        argv,
        status,
        stdout,
        stderr: clean_stderr(&stderr),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            // Keep reading past the cap so the command never blocks on a full pipe. A read
            // error only shortens what we report; the exit status still decides.
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let room = MAX_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            let _ = tx.send(buf);
        });
    }
    rx
}

fn collect(rx: mpsc::Receiver<Vec<u8>>) -> String {
    let bytes = rx.recv_timeout(PIPE_GRACE).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn clean_stderr(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|line| !NOISE.iter().any(|n| line.contains(n)))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// SIGTERM to the whole group, SIGKILL after [`TERM_GRACE`], then reap the child.
fn kill_group(pgid: u32, child: &mut std::process::Child) {
    signal_group(pgid, libc::SIGTERM);
    let until = Instant::now() + TERM_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // Also after the leader exited: anything it left in the group goes too.
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) only takes integers and touches no memory of this process. The group
    // id is our child's pid, which cannot be reused before we reap it (we have not yet, or
    // the group's other members still hold the id); an empty group only yields ESRCH.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sh(script: &str, timeout: Duration) -> Result<Output, LvmError> {
        run(
            Path::new("/bin/sh"),
            &["-c".to_string(), script.to_string()],
            timeout,
        )
    }

    #[test]
    fn run_returns_status_stdout_and_cleaned_stderr() {
        let out = sh(
            "echo out; echo '  WARNING: This metadata update is NOT backed up.' >&2; \
             echo '  real problem' >&2; exit 3",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "real problem");
        assert_eq!(out.failure().argv[0], "/bin/sh");
    }

    #[test]
    fn run_kills_the_whole_group_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The grandchild (sleep) would keep the pipes open if only the shell were killed.
        let script = format!(
            "echo started >&2; sleep 60 & echo $! > {}; wait",
            pidfile.display()
        );
        let started = Instant::now();
        let err = sh(&script, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        match &err {
            LvmError::Timeout { stderr, .. } => assert_eq!(stderr, "started"),
            other => panic!("expected Timeout, got {other}"),
        }
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = PathBuf::from(format!("/proc/{}/stat", pid.trim()));
        // The sleep was our grandchild: killed, it waits for init to reap it (and some
        // container inits never do), so a zombie counts as gone.
        let alive = || {
            std::fs::read_to_string(&stat)
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        let until = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "grandchild {} survived", pid.trim());
    }

    #[test]
    fn run_caps_output_of_a_chatty_command() {
        let out = sh(
            "head -c 70000000 /dev/zero; echo done >&2",
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.len(), MAX_OUTPUT);
        assert_eq!(out.stderr, "done");
    }

    #[test]
    fn run_missing_program_is_spawn_error() {
        let err = run(Path::new("/nonexistent/lvm"), &[], Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.code(), "Spawn");
    }
}
