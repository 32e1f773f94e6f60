//! How `lvm` is invoked: the binary, deadlines, report format and the `--config` text.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::LvmError;

/// How reports are read. Both give the same values; JSON is the default because it cannot
/// be confused by a separator inside a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// `--reportformat json`.
    Json,
    /// `--noheadings --separator |` (what VDSM parses).
    Separated,
}

/// Settings shared by every command.
#[derive(Debug, Clone)]
pub struct LvmConfig {
    /// The `lvm` binary. Default `/sbin/lvm`.
    pub lvm_path: PathBuf,
    /// The `losetup` binary (loop-mapped activation). Default `/sbin/losetup`.
    pub losetup_path: PathBuf,
    /// Deadline of each command; on expiry it is killed. Default 60 s.
    pub timeout: Duration,
    /// Report parsing. Default [`ReportFormat::Json`].
    pub report_format: ReportFormat,
    /// `false` adds `global/activation=0` to every command: LVM then never touches
    /// device-mapper (the loop-mapped activation mode). Set from
    /// [`crate::ActivationMode::lvm_activation`].
    pub activation: bool,
    /// Where LVM writes metadata backups and archives (`<dir>/backup`, `<dir>/archive`);
    /// `None` keeps lvm.conf's (`/etc/lvm`). Tests point it into their temp dir.
    pub backup_dir: Option<PathBuf>,
}

impl Default for LvmConfig {
    fn default() -> Self {
        LvmConfig {
            lvm_path: PathBuf::from("/sbin/lvm"),
            losetup_path: PathBuf::from("/sbin/losetup"),
            timeout: Duration::from_secs(60),
            report_format: ReportFormat::Json,
            activation: true,
            backup_dir: None,
        }
    }
}

impl LvmConfig {
    /// The single `--config` argument. VDSM's settings (lvmcmd.py `LVMCONF_TEMPLATE` and
    /// the host's lvmlocal.conf), on one line:
    /// - `hints="none"`: PVs are created and removed by other hosts, so remembered hints
    ///   would be wrong;
    /// - `obtain_device_list_from_udev=0`: udev may lag (and containers have none);
    /// - `scan_lvs=0`: never look for PVs inside LVs (a guest's PV on one of our volumes);
    /// - `activation=0` in loop-mapped mode.
    ///
    /// The device filter is not here: commands pass `--devices`.
    pub fn config_arg(&self) -> Result<String, LvmError> {
        let mut global = String::from("prioritise_write_locks=1 wait_for_locks=1 use_lvmpolld=1");
        if !self.activation {
            global.push_str(" activation=0");
        }
        let mut backup = String::from("retain_min=50 retain_days=0");
        if let Some(dir) = &self.backup_dir {
            let text = dir.to_str().filter(|t| !t.contains('"')).ok_or_else(|| {
                LvmError::InvalidArgument(format!(
                    "backup dir {} must be UTF-8 without '\"'",
                    dir.display()
                ))
            })?;
            backup.push_str(&format!(
                " backup_dir=\"{text}/backup\" archive_dir=\"{text}/archive\""
            ));
        }
        Ok(format!(
            "devices {{ preferred_names=[\"^/dev/mapper/\"] ignore_suspended_devices=1 \
             write_cache_state=0 disable_after_error_count=3 hints=\"none\" \
             obtain_device_list_from_udev=0 scan_lvs=0 }} global {{ {global} }} \
             backup {{ {backup} }}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_arg_is_one_line_with_vdsm_settings() {
        let cfg = LvmConfig::default().config_arg().unwrap();
        assert!(!cfg.contains('\n'));
        for want in [
            "hints=\"none\"",
            "obtain_device_list_from_udev=0",
            "scan_lvs=0",
            "wait_for_locks=1",
            "retain_min=50",
        ] {
            assert!(cfg.contains(want), "{want} missing in {cfg}");
        }
        assert!(!cfg.contains("activation=0"));
    }

    #[test]
    fn config_arg_disables_activation_and_moves_backups() {
        let cfg = LvmConfig {
            activation: false,
            backup_dir: Some(PathBuf::from("/tmp/x")),
            ..LvmConfig::default()
        };
        let text = cfg.config_arg().unwrap();
        assert!(text.contains(
            "global { prioritise_write_locks=1 wait_for_locks=1 use_lvmpolld=1 activation=0 }"
        ));
        assert!(text.contains("backup_dir=\"/tmp/x/backup\" archive_dir=\"/tmp/x/archive\""));
    }

    #[test]
    fn config_arg_refuses_quote_in_backup_dir() {
        let cfg = LvmConfig {
            backup_dir: Some(PathBuf::from("/tmp/a\"b")),
            ..LvmConfig::default()
        };
        assert_eq!(cfg.config_arg().unwrap_err().code(), "InvalidArgument");
    }
}
