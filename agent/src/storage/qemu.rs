//! qemu-img, which creates, rebases and inspects qcow2 volumes on any kind of domain.

use std::path::Path;
use std::process::Command;

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
