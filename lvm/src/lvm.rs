//! [`Lvm`]: the LVM commands a block domain needs, run through the real `lvm` binary.
//!
//! Every command is `lvm <cmd> --devices <set> --config '<one line>' …`: it sees only the
//! given devices, uses VDSM's settings (see [`LvmConfig::config_arg`]), has a deadline, and
//! on failure returns LVM's stderr inside the error. Writers add `--autobackup n`, as VDSM
//! does (metadata backups of shared VGs on one host's /etc would only go stale).
//!
//! This room holds the runner itself (argv assembly, deadline, stderr handling); the commands
//! live next to it: `reports` (pvs/vgs/lvs), `vg` (PV and VG commands), `lv` (LV commands)
//! and `args` (argument builders shared by them).

use std::sync::{Arc, OnceLock};

use crate::config::LvmConfig;
use crate::error::LvmError;
use crate::exec::{self, Output};
use crate::names::Devices;

mod args;
mod lv;
mod reports;
mod vg;

pub(crate) const SEPARATOR: &str = "|";

/// The LVM command runner. Cheap to clone; safe to share between threads.
#[derive(Debug, Clone)]
pub struct Lvm {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: LvmConfig,
    config_arg: String,
    autoactivation: OnceLock<bool>,
}

impl Lvm {
    /// Checks `cfg` (its `--config` text) and keeps it. Runs nothing.
    pub fn new(cfg: LvmConfig) -> Result<Lvm, LvmError> {
        let config_arg = cfg.config_arg()?;
        Ok(Lvm {
            inner: Arc::new(Inner {
                cfg,
                config_arg,
                autoactivation: OnceLock::new(),
            }),
        })
    }

    pub fn config(&self) -> &LvmConfig {
        &self.inner.cfg
    }

    /// `lvm version`'s first line, e.g. `LVM version: 2.03.16(2) (2022-05-18)`.
    pub fn version(&self) -> Result<String, LvmError> {
        let out = self.exec(&["version".to_string()])?;
        if !out.success() {
            return Err(LvmError::Command(out.failure()));
        }
        Ok(out.stdout.lines().next().unwrap_or("").trim().to_string())
    }

    /// Whether this lvm2 knows `vgcreate --setautoactivation` (2.03.12 and later). Asked
    /// once per [`Lvm`].
    pub fn supports_setautoactivation(&self) -> Result<bool, LvmError> {
        if let Some(known) = self.inner.autoactivation.get() {
            return Ok(*known);
        }
        let out = self.exec(&["vgcreate".to_string(), "--help".to_string()])?;
        let known = format!("{}{}", out.stdout, out.stderr).contains("--setautoactivation");
        Ok(*self.inner.autoactivation.get_or_init(|| known))
    }

    // ---- plumbing ------------------------------------------------------------------

    fn require_activation(&self) -> Result<(), LvmError> {
        if self.inner.cfg.activation {
            Ok(())
        } else {
            Err(LvmError::InvalidArgument(
                "LVM activation is disabled (loop-mapped mode); use the Activator".into(),
            ))
        }
    }

    fn exec(&self, args: &[String]) -> Result<Output, LvmError> {
        exec::run(&self.inner.cfg.lvm_path, args, self.inner.cfg.timeout)
    }

    /// `lvm <cmd> --devices <devs> --config <cfg> <args…>`.
    fn run(&self, cmd: &str, devs: &Devices, args: Vec<String>) -> Result<Output, LvmError> {
        let mut argv = vec![
            cmd.to_string(),
            "--devices".to_string(),
            devs.arg(),
            "--config".to_string(),
            self.inner.config_arg.clone(),
        ];
        argv.extend(args);
        self.exec(&argv)
    }

    fn write(
        &self,
        what: &str,
        cmd: &str,
        devs: &Devices,
        args: Vec<String>,
    ) -> Result<(), LvmError> {
        let out = self.run(cmd, devs, args)?;
        if !out.success() {
            return Err(LvmError::classify(what, out.failure()));
        }
        self.warn_on_stderr(&out);
        Ok(())
    }

    fn warn_on_stderr(&self, out: &Output) {
        if !out.stderr.is_empty() {
            tracing::warn!(argv = ?out.argv, stderr = %out.stderr, "lvm succeeded with warnings");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::args::{lv_paths, tag_change_args};
    use super::*;

    /// A stand-in `lvm` that records its argv and hangs (only this test uses a fake: the
    /// timeout tests under tests/ hang the real lvm on a held VG lock).
    #[test]
    fn timeout_kills_a_hanging_lvm_and_argv_has_devices_and_config() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("lvm");
        let argv_file = dir.path().join("argv");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\necho waiting >&2\nexec sleep 30\n",
                argv_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lvm = Lvm::new(LvmConfig {
            lvm_path: fake,
            timeout: Duration::from_millis(500),
            ..LvmConfig::default()
        })
        .unwrap();
        let devs = Devices::new(["/dev/loop0", "/dev/loop1"]).unwrap();
        let started = Instant::now();
        // A thread of another test may fork while the script is still open for writing
        // (ETXTBSY); that is the spawn failing, not the timeout, so try again.
        let err = loop {
            match lvm.vgs(&devs) {
                Err(LvmError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) => {}
                other => break other.unwrap_err(),
            }
        };
        assert!(started.elapsed() < Duration::from_secs(10));
        match &err {
            LvmError::Timeout {
                stderr, timeout, ..
            } => {
                assert_eq!(stderr, "waiting");
                assert_eq!(*timeout, Duration::from_millis(500));
            }
            other => panic!("expected Timeout, got {other}"),
        }
        let argv = std::fs::read_to_string(argv_file).unwrap();
        let argv: Vec<&str> = argv.lines().collect();
        assert_eq!(
            &argv[..4],
            ["vgs", "--devices", "/dev/loop0,/dev/loop1", "--config"]
        );
        assert_eq!(argv[4], LvmConfig::default().config_arg().unwrap());
        assert!(argv.contains(&"--reportformat"));
    }

    #[test]
    fn tag_change_refuses_overlap_and_bad_tags() {
        assert_eq!(
            tag_change_args(&["a", "b"], &["b"]).unwrap_err().code(),
            "InvalidArgument"
        );
        assert!(tag_change_args(&["ok"], &["not ok"]).is_err());
        assert_eq!(
            tag_change_args(&["a"], &["b"]).unwrap(),
            ["--deltag", "a", "--addtag", "b"]
        );
    }

    #[test]
    fn lv_paths_refuse_empty_and_bad_names() {
        let none: [&str; 0] = [];
        assert!(lv_paths("vg", &none).is_err());
        assert!(lv_paths("vg", &["../x"]).is_err());
        assert_eq!(lv_paths("vg", &["a", "b"]).unwrap(), ["vg/a", "vg/b"]);
    }
}
