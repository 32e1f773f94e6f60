//! Real disks for tests (feature `test-support`): sparse files attached as loop devices,
//! and a guard that removes everything made on them, also when the test panics.
//!
//! ```no_run
//! use sdm_lvm::test_support::{lvm2_available, unique_vg_name, TestDisks};
//! use sdm_lvm::ActivationMode;
//! if let Err(why) = lvm2_available() {
//!     eprintln!("skipping: {why}");
//!     return;
//! }
//! let disks = TestDisks::new(2, 4 << 30);
//! let lvm = disks.lvm(ActivationMode::probe());
//! let vg = unique_vg_name();
//! disks.make_vg(&lvm, &vg, &["RHAT_storage_domain_UNREADY"]).unwrap();
//! // ... on drop: loop devices over the disks detached, VGs removed, disks detached.
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::activation::loopdev::loop_devices_over;
use crate::exec;
use crate::{ActivationMode, Devices, Lvm, LvmConfig, LvmError, PvCreateOptions, VgCreateOptions};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// `Ok` when tests with real LVM and loop devices can run here, else why not.
pub fn lvm2_available() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err("not running as root (LVM and loop devices need it)".into());
    }
    let cfg = LvmConfig::default();
    if !cfg.lvm_path.exists() {
        return Err(format!(
            "{} missing (apt-get install lvm2, or scripts/install-deps)",
            cfg.lvm_path.display()
        ));
    }
    if !cfg.losetup_path.exists() {
        return Err(format!(
            "{} missing (util-linux mount package)",
            cfg.losetup_path.display()
        ));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("/dev/loop-control missing: no loop device support".into());
    }
    Ok(())
}

/// A fresh VG name (a UUID, like a domain's), so parallel tests never collide.
pub fn unique_vg_name() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Sparse files in a temp dir, each attached as a loop device.
#[derive(Debug)]
pub struct TestDisks {
    dir: TempDir,
    loops: Vec<PathBuf>,
}

impl TestDisks {
    /// `count` disks of `size` bytes. Panics when the disks cannot be made.
    pub fn new(count: usize, size: u64) -> TestDisks {
        let mut disks = TestDisks {
            dir: tempfile::Builder::new()
                .prefix("sdm-lvm-test")
                .tempdir()
                .expect("temp dir"),
            loops: Vec::new(),
        };
        for i in 0..count {
            let file = disks.dir.path().join(format!("disk{i}.img"));
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(size))
                .expect("sparse disk file");
            let out = losetup(&["--find", "--show", &file.display().to_string()])
                .expect("losetup --find");
            disks.loops.push(PathBuf::from(out.trim()));
        }
        disks
    }

    /// The loop devices, in creation order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.loops
    }

    /// All disks as a device set.
    pub fn devices(&self) -> Devices {
        Devices::new(&self.loops).expect("loop device paths are valid")
    }

    /// The temp dir holding the disk files; free for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An [`LvmConfig`] for `mode` whose metadata backups stay in the temp dir.
    pub fn lvm_config(&self, mode: ActivationMode) -> LvmConfig {
        LvmConfig {
            activation: mode.lvm_activation(),
            backup_dir: Some(self.dir.path().join("lvm")),
            ..LvmConfig::default()
        }
    }

    pub fn lvm(&self, mode: ActivationMode) -> Lvm {
        Lvm::new(self.lvm_config(mode)).expect("valid test LVM config")
    }

    /// PVs and a VG over all disks the way VDSM makes a domain's: pvcreate with 128 MiB
    /// ignored metadata areas, metadata enabled on the first PV, 128 MiB extents.
    pub fn make_vg(&self, lvm: &Lvm, vg: &str, tags: &[&str]) -> Result<(), LvmError> {
        let devs = self.devices();
        lvm.pvcreate(&devs, &PvCreateOptions::default())?;
        lvm.pv_enable_metadata(&devs, &self.loops[0])?;
        let opts = VgCreateOptions {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..VgCreateOptions::default()
        };
        lvm.vgcreate(&devs, vg, &opts)
    }
}

impl Drop for TestDisks {
    fn drop(&mut self) {
        // Mappings a test left over the disks (LVs loop-mapped and never released).
        for pv in &self.loops {
            for dev in loop_devices_over(pv) {
                let _ = losetup(&["--detach", &dev.display().to_string()]);
            }
        }
        // VGs by name: device-mapper tables outlive the disk files, LVM archives do not
        // matter (they are in the temp dir).
        if let Ok(devs) = Devices::new(&self.loops) {
            let mode = ActivationMode::probe();
            let lvm = self.lvm(mode);
            if let Ok(vgs) = lvm.vgs(&devs) {
                for vg in vgs {
                    if mode == ActivationMode::DeviceMapper {
                        let _ = deactivate_vg(&lvm, &devs, &vg.name);
                    }
                    if let Err(e) = lvm.vgremove(&devs, &vg.name) {
                        eprintln!("test cleanup: vgremove {}: {e}", vg.name);
                    }
                }
            }
        }
        for dev in &self.loops {
            if let Err(e) = losetup(&["--detach", &dev.display().to_string()]) {
                eprintln!("test cleanup: losetup --detach {}: {e}", dev.display());
            }
        }
    }
}

fn deactivate_vg(lvm: &Lvm, devs: &Devices, vg: &str) -> Result<(), LvmError> {
    let names: Vec<String> = lvm.lvs(devs, vg)?.into_iter().map(|lv| lv.name).collect();
    if names.is_empty() {
        return Ok(());
    }
    lvm.lvchange_activate(devs, vg, &names, false)
}

/// Runs losetup; stdout on success.
pub fn losetup(args: &[&str]) -> Result<String, LvmError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = exec::run(&LvmConfig::default().losetup_path, &args, TOOL_TIMEOUT)?;
    if !out.success() {
        return Err(LvmError::Command(out.failure()));
    }
    Ok(out.stdout)
}
