//! qemu-img, which creates, rebases and inspects qcow2 volumes on any kind of domain.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sdm_proto::VolumeFormat;

use super::StorageError;

/// qemu-img's name for a volume format.
pub fn format_name(format: VolumeFormat) -> &'static str {
    match format {
        VolumeFormat::Raw => "raw",
        VolumeFormat::Cow => "qcow2",
    }
}

/// Runs qemu-img, turning a failure into an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<String, StorageError> {
    die_with_parent(cmd);
    let out = cmd
        .output()
        .map_err(|e| StorageError::QemuImg(format!("cannot run qemu-img: {e}")))?;
    result(out)
}

/// How often a stoppable qemu-img is checked against its job's fence.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Runs a qemu-img that writes a volume in place, killing it once `stop` says the job may no
/// longer write (its lease was lost): a child left running would go on writing after the lease
/// moved to another host, where the job's own checks cannot reach it. An abort asked by a user
/// is not a reason: these are short header rewrites, safer finished than cut in the middle.
pub fn run_stoppable(cmd: &mut Command, stop: &dyn Fn() -> bool) -> Result<String, StorageError> {
    die_with_parent(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| StorageError::QemuImg(format!("cannot run qemu-img: {e}")))?;
    // The pipes are drained while the child runs: one that filled would block it forever.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if stop() => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StorageError::QemuImg(
                    "qemu-img killed: its job lost the volume lease and may no longer write"
                        .to_string(),
                ));
            }
            Ok(None) => std::thread::sleep(STOP_POLL),
            Err(e) => return Err(StorageError::QemuImg(format!("waiting for qemu-img: {e}"))),
        }
    };
    result(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A finished qemu-img's stdout, or its failure with its stderr.
fn result(out: Output) -> Result<String, StorageError> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No space left on device") {
            return Err(StorageError::io(
                "qemu-img create",
                "",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        return Err(StorageError::QemuImg(format!(
            "{}: {}",
            out.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Points a qcow2 at another backing file, header only (`rebase -u`): `backing` is the bare
/// parent UUID and its format, resolved in `chain_dir`; None leaves it without one.
pub fn rebase(
    path: &Path,
    chain_dir: &Path,
    backing: Option<(&str, VolumeFormat)>,
) -> Result<(), StorageError> {
    let mut cmd = Command::new("qemu-img");
    cmd.arg("rebase").arg("-u").arg("-f").arg("qcow2");
    match backing {
        None => {
            cmd.arg("-b").arg("");
        }
        Some((parent, format)) => {
            cmd.arg("-b").arg(parent).arg("-F").arg(format_name(format));
        }
    }
    cmd.arg(path).current_dir(chain_dir);
    run(&mut cmd).map(|_| ())
}

/// The virtual size a qcow2 declares, or None if qemu-img cannot read it.
pub fn virtual_size(path: &Path) -> Option<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", "qcow2"])
        .arg(path)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("virtual-size")?.as_u64()
}

/// Makes a child process die with the agent: a helper that kept writing after the agent died
/// would write without the lease that sanlock released with the agent.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_stopped_child_is_killed_and_reported() {
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::SeqCst);
            });
            run_stoppable(Command::new("sleep").arg("30"), &|| {
                stop.load(Ordering::SeqCst)
            })
        });
        let err = r.unwrap_err().to_string();
        assert!(err.contains("killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_unstopped_child_gives_its_output_or_its_stderr() {
        let out = run_stoppable(
            Command::new("sh").args(["-c", "head -c 200000 /dev/zero | tr '\\0' x"]),
            &|| false,
        )
        .unwrap();
        assert_eq!(out.len(), 200_000, "a full pipe must not block the child");
        let err = run_stoppable(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            &|| false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("broken"), "{err}");
    }
}
