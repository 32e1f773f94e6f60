//! PV and VG commands: create, remove, re-enable metadata, change VG tags.

use std::path::Path;

use crate::error::LvmError;
use crate::names::{check_name, Devices};
use crate::options::{PvCreateOptions, VgCreateOptions};

use super::args::{no_backup, path_args, tag_args, tag_change_args, yn, NO_BACKUP};
use super::Lvm;

impl Lvm {
    /// Initialises each of `pvs` as a PV. Refuses anything that is not a block device
    /// before LVM sees it; a device in some VG fails with [`LvmError::InUse`].
    pub fn pvcreate(&self, pvs: &Devices, opts: &PvCreateOptions) -> Result<(), LvmError> {
        pvs.require_block_devices()?;
        let mut args = Vec::new();
        if opts.force {
            args.extend(["-y".to_string(), "-ff".to_string()]);
        }
        if opts.metadata_size_mib != 0 {
            args.extend([
                "--metadatasize".to_string(),
                format!("{}m", opts.metadata_size_mib),
                "--metadatacopies".to_string(),
                opts.metadata_copies.to_string(),
                "--metadataignore".to_string(),
                yn(opts.metadata_ignore).to_string(),
            ]);
        }
        args.extend(path_args(pvs.paths()));
        self.write(&format!("PV {pvs}"), "pvcreate", pvs, args)
    }

    /// `pvchange --metadataignore n <pv>`: VDSM enables the metadata areas of the first PV
    /// only, so the VG metadata lives there.
    pub fn pv_enable_metadata(&self, devs: &Devices, pv: &Path) -> Result<(), LvmError> {
        let mut args = no_backup();
        args.extend(["--metadataignore".to_string(), "n".to_string()]);
        args.extend(path_args(&[pv.to_path_buf()]));
        self.write(&format!("PV {}", pv.display()), "pvchange", devs, args)
    }

    /// Creates VG `vg` on `pvs` (already PVs, or plain devices LVM initialises with its
    /// defaults). Adds `--setautoactivation n` when this lvm2 knows it, so no host
    /// activates the domain's LVs at boot.
    pub fn vgcreate(
        &self,
        pvs: &Devices,
        vg: &str,
        opts: &VgCreateOptions,
    ) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        if opts.extent_size_mib == 0 {
            return Err(LvmError::InvalidArgument(
                "extent size must not be 0".into(),
            ));
        }
        let mut args = no_backup();
        if self.supports_setautoactivation()? {
            args.extend(["--setautoactivation".to_string(), "n".to_string()]);
        }
        args.extend([
            "--physicalextentsize".to_string(),
            format!("{}m", opts.extent_size_mib),
        ]);
        args.extend(tag_args("--addtag", &opts.tags)?);
        args.push(vg.to_string());
        args.extend(path_args(pvs.paths()));
        self.write(&format!("VG {vg}"), "vgcreate", pvs, args)
    }

    /// `vgremove -f`: removes the VG and all its LVs.
    pub fn vgremove(&self, devs: &Devices, vg: &str) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        self.write(
            &format!("VG {vg}"),
            "vgremove",
            devs,
            vec!["-f".into(), vg.into()],
        )
    }

    /// `pvremove -y -ff`: wipes the PV labels (after [`Lvm::vgremove`]).
    pub fn pvremove(&self, pvs: &Devices) -> Result<(), LvmError> {
        let mut args = vec!["-y".to_string(), "-ff".to_string()];
        args.extend(path_args(pvs.paths()));
        self.write(&format!("PV {pvs}"), "pvremove", pvs, args)
    }

    /// Deletes `del` and adds `add` in one `vgchange`, so a reader never sees half of it.
    /// Tags are already encoded; a tag in both lists is refused.
    pub fn change_vg_tags<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        del: &[S],
        add: &[S],
    ) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        let mut args = no_backup();
        args.extend(tag_change_args(del, add)?);
        if args.len() == NO_BACKUP.len() {
            return Ok(());
        }
        args.push(vg.to_string());
        self.write(&format!("VG {vg}"), "vgchange", devs, args)
    }
}
