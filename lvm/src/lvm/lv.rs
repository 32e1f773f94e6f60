//! LV commands: create, remove, extend, change tags, activate and refresh.

use std::path::Path;

use crate::error::LvmError;
use crate::names::{check_name, Devices};
use crate::options::{LvCreate, LvSize};

use super::args::{lv_path, lv_paths, no_backup, tag_args, tag_change_args, yn, NO_BACKUP};
use super::Lvm;

impl Lvm {
    /// Creates an inactive LV (`--activate n --zero n --wipesignatures n --contiguous n`):
    /// activation is only ever done through [`crate::Activator`], which counts users and
    /// records what it did. The new LV's first bytes are whatever the extents held.
    pub fn lvcreate(&self, devs: &Devices, vg: &str, lv: &LvCreate) -> Result<(), LvmError> {
        self.lvcreate_args(devs, vg, lv, None)
    }

    /// `lvcreate` with the LV's extents taken from one PV only: the `metadata` LV must start at
    /// extent 0 of the domain's first PV, and LVM would otherwise allocate from the VG's PVs in
    /// its own (device-name) order, which is not the order the devices were given.
    pub fn lvcreate_on(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &LvCreate,
        pv: &Path,
    ) -> Result<(), LvmError> {
        self.lvcreate_args(devs, vg, lv, Some(pv))
    }

    fn lvcreate_args(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &LvCreate,
        pv: Option<&Path>,
    ) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        check_name("LV", &lv.name)?;
        let mut args = no_backup();
        args.extend(
            [
                "--activate",
                "n",
                "--zero",
                "n",
                "--wipesignatures",
                "n",
                "--contiguous",
                "n",
            ]
            .map(String::from),
        );
        args.extend(lv.size.args()?);
        args.extend(tag_args("--addtag", &lv.tags)?);
        args.extend(["--name".to_string(), lv.name.clone(), vg.to_string()]);
        if let Some(pv) = pv {
            // The PV is one of `devs`, which holds UTF-8 paths only.
            args.push(pv.to_string_lossy().into_owned());
        }
        self.write(&format!("LV {vg}/{}", lv.name), "lvcreate", devs, args)
    }

    /// `lvremove -f` of `lvs` in `vg`, in one command.
    pub fn lvremove<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
    ) -> Result<(), LvmError> {
        let mut args = vec!["-f".to_string()];
        args.extend(no_backup());
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvremove", devs, args)
    }

    /// Grows `lv` to at least `size`. Already that large (LVM refuses a no-op extend) is
    /// success, as in VDSM's `extendLV`; the VG lacking room is [`LvmError::NoSpace`].
    pub fn lvextend(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &str,
        size: LvSize,
    ) -> Result<(), LvmError> {
        let target = lv_path(vg, lv)?;
        let mut args = no_backup();
        args.extend(size.args()?);
        args.push(target.clone());
        let what = format!("LV {target}");
        let out = self.run("lvextend", devs, args)?;
        if out.success() {
            self.warn_on_stderr(&out);
            return Ok(());
        }
        let err = LvmError::classify(&what, out.failure());
        if matches!(err, LvmError::Command(_)) {
            let now = self.lv(devs, vg, lv)?;
            if now.size >= size.bytes(now.extent_size) {
                return Ok(());
            }
        }
        Err(err)
    }

    /// Deletes `del` and adds `add` on each of `lvs`, in one `lvchange`. Tags are already
    /// encoded; a tag in both lists is refused.
    pub fn change_lv_tags<S: AsRef<str>, T: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
        del: &[T],
        add: &[T],
    ) -> Result<(), LvmError> {
        let mut args = no_backup();
        args.extend(tag_change_args(del, add)?);
        if args.len() == NO_BACKUP.len() {
            return Ok(());
        }
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvchange", devs, args)
    }

    /// `lvchange --activate y|n` (device-mapper mode only).
    pub fn lvchange_activate<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
        active: bool,
    ) -> Result<(), LvmError> {
        self.require_activation()?;
        let mut args = no_backup();
        args.extend(["--activate".to_string(), yn(active).to_string()]);
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvchange", devs, args)
    }

    /// `lvchange --refresh`: reloads active LVs' mappings from the (possibly changed on
    /// another host) metadata (device-mapper mode only).
    pub fn lvchange_refresh<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
    ) -> Result<(), LvmError> {
        self.require_activation()?;
        let mut args = vec!["--refresh".to_string()];
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvchange", devs, args)
    }
}
