//! Making a block domain (`StorageDomain.create`) and finding one (`StorageDomain.attach`).
//!
//! Creation follows VDSM's order and ends with the tag that makes the VG a domain, so a crash
//! half-way leaves a VG tagged only `RHAT_storage_domain_UNREADY`, which no attach accepts:
//! 1. every device checked first (a block device, allowed, 512-byte blocks, not in a VG, 10 GiB
//!    together) — a refusal changes nothing on any device;
//! 2. PVs (VDSM's metadata areas, enabled on the first PV only), the VG named by the domain id
//!    with 128 MiB extents and the UNREADY tag;
//! 3. the special LVs, `metadata` first; `metadata`'s first 17 MiB and the mailboxes' first
//!    1,024,000 bytes zeroed, the xleases index written, `master` formatted ext3, the sanlock
//!    lockspace on `ids` and the `SDM` resource in `leases`;
//! 4. the `MDT_` tags (domain metadata, sealed), then UNREADY swapped for `RHAT_storage_domain`.
//!
//! A failure after step 2 removes the VG and the PV labels again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sdm_lease::LeaseBackend;
use sdm_lvm::{Devices, LvCreate, LvSize, Lvm, PvCreateOptions, VgCreateOptions};
use sdm_proto::Uuid;

use super::env::{device_size, BlockEnv};
use super::error::BlockError;
use super::layout::{
    DOMAIN_TAG, INBOX_LV, LEASES_LV, MASTER_LV, METADATA_LV, MIN_DOMAIN_BYTES, OUTBOX_LV,
    RESERVED_MAILBOX_BYTES, RESERVED_METADATA_BYTES, SPECIAL_LVS, UNREADY_TAG, XLEASES_LV,
};
use super::{direct, dommd, IDS_LV};
use crate::storage::md::DomainMetadata;
use crate::storage::{qemu, xleases, StorageError};

/// Where a block domain is attached from: its VG, `/dev/<sd_id>`.
pub fn domain_path(sd_id: &Uuid) -> PathBuf {
    PathBuf::from(format!("/dev/{sd_id}"))
}

/// Makes block domain `sd_id` on `devices` (see the module documentation). Returns its path.
pub fn create(
    env: &BlockEnv,
    devices: &[PathBuf],
    sd_id: &Uuid,
    description: &str,
    leases: &dyn LeaseBackend,
    io_timeout_s: u32,
) -> Result<PathBuf, StorageError> {
    if devices.is_empty() {
        return Err(StorageError::Invalid(
            "a block domain needs at least one device (`devices`)".into(),
        ));
    }
    let devices = env.check_new_devices(devices)?;
    let devs = Devices::new(&devices).map_err(BlockError::from)?;
    check_block_sizes(&devs)?;
    let mut total = 0u64;
    for d in &devices {
        total += device_size(d)?;
    }
    if total < MIN_DOMAIN_BYTES {
        return Err(BlockError::TooSmall {
            total,
            min: MIN_DOMAIN_BYTES,
        }
        .into());
    }
    let lvm = env.lvm();
    let vg = sd_id.as_str();
    let host = env.host_device_set()?;
    if lvm
        .vgs(&host)
        .map_err(BlockError::from)?
        .iter()
        .any(|v| v.name == vg)
    {
        return Err(StorageError::DomainExists(format!(
            "{sd_id} (a volume group of that name exists)"
        )));
    }
    for pv in lvm.pvs(&devs).map_err(BlockError::from)? {
        if let Some(owner) = pv.vg_name.filter(|v| !v.is_empty()) {
            return Err(BlockError::DeviceInUse {
                path: pv.name,
                vg: owner,
            }
            .into());
        }
    }
    // One command for all devices: LVM checks them all before it writes any label.
    lvm.pvcreate(&devs, &PvCreateOptions::default())
        .map_err(|e| match e {
            sdm_lvm::LvmError::InUse { .. } => BlockError::DeviceInUse {
                path: devices[0].clone(),
                vg: format!("(LVM refused: {e})"),
            },
            e => BlockError::Lvm(e),
        })?;
    if let Err(e) = build(
        env,
        &devs,
        &devices,
        sd_id,
        description,
        leases,
        io_timeout_s,
    ) {
        tracing::error!(sd_id = %sd_id, error = %e, "creating the block domain failed; removing its VG and PV labels");
        undo(lvm, &devs, vg);
        return Err(e);
    }
    Ok(domain_path(sd_id))
}

fn build(
    env: &BlockEnv,
    devs: &Devices,
    devices: &[PathBuf],
    sd_id: &Uuid,
    description: &str,
    leases: &dyn LeaseBackend,
    io_timeout_s: u32,
) -> Result<(), StorageError> {
    let (lvm, vg) = (env.lvm(), sd_id.as_str());
    lvm.pv_enable_metadata(devs, &devices[0])
        .map_err(BlockError::from)?;
    let opts = VgCreateOptions {
        tags: vec![UNREADY_TAG.to_string()],
        ..VgCreateOptions::default()
    };
    lvm.vgcreate(devs, vg, &opts).map_err(BlockError::from)?;
    for (name, mib) in SPECIAL_LVS {
        let lv = LvCreate {
            name: name.to_string(),
            size: LvSize::Mib(mib),
            tags: Vec::new(),
        };
        // `metadata` starts at extent 0 of the first device given (PV0 in the domain's
        // metadata, its map offset 0), as VDSM lays it out.
        let made = if name == METADATA_LV {
            lvm.lvcreate_on(devs, vg, &lv, &devices[0])
        } else {
            lvm.lvcreate(devs, vg, &lv)
        };
        made.map_err(|e| BlockError::CreateLv {
            lv: format!("{vg}/{name}"),
            source: e,
        })?;
    }
    let active = |lv: &str| {
        env.activator()
            .activate(devs, vg, lv)
            .map_err(|e| BlockError::Activate {
                lv: format!("{vg}/{lv}"),
                source: e,
            })
    };
    {
        let md = active(METADATA_LV)?;
        direct::zero(md.path(), 0, RESERVED_METADATA_BYTES)?;
    }
    for mailbox in [INBOX_LV, OUTBOX_LV] {
        let m = active(mailbox)?;
        direct::zero(m.path(), 0, RESERVED_MAILBOX_BYTES)?;
    }
    {
        let x = active(XLEASES_LV)?;
        direct::write_at(
            x.path(),
            xleases::INDEX_OFFSET,
            &xleases::empty_index(sd_id),
        )?;
    }
    {
        let m = active(MASTER_LV)?;
        make_master_fs(m.path())?;
    }
    {
        let (ids, area) = (active(IDS_LV)?, active(LEASES_LV)?);
        leases.format_domain(vg, ids.path(), area.path(), io_timeout_s)?;
    }
    let info = lvm.vg(devs, vg).map_err(BlockError::from)?;
    let found = lvm.pvs(devs).map_err(BlockError::from)?;
    // PV<n> in the order the devices were given: PV0 holds the VG metadata and `metadata`.
    let ordered: Vec<_> = devices
        .iter()
        .filter_map(|d| {
            let real = d.canonicalize().ok()?;
            found
                .iter()
                .find(|p| p.name.canonicalize().ok().as_ref() == Some(&real))
                .cloned()
        })
        .collect();
    let md = dommd::new_metadata(
        sd_id,
        description,
        &info.uuid,
        &ordered,
        leases.kind() == "local",
    );
    lvm.change_vg_tags(devs, vg, &[], &dommd::to_tags(&md))
        .map_err(BlockError::from)?;
    lvm.change_vg_tags(
        devs,
        vg,
        &[UNREADY_TAG.to_string()],
        &[DOMAIN_TAG.to_string()],
    )
    .map_err(BlockError::from)?;
    Ok(())
}

/// Removes a half-made domain: its VG (with every LV) and the PV labels.
fn undo(lvm: &Lvm, devs: &Devices, vg: &str) {
    if let Err(e) = lvm.vgremove(devs, vg) {
        tracing::warn!(vg, error = %e, "removing the half-made VG failed");
    }
    if let Err(e) = lvm.pvremove(devs) {
        tracing::warn!(vg, error = %e, "removing the PV labels failed");
    }
}

/// `mkfs -q -j -E nodiscard` (ext3), as VDSM formats the master LV.
fn make_master_fs(dev: &Path) -> Result<(), StorageError> {
    let mut cmd = Command::new("mkfs");
    cmd.args(["-q", "-F", "-j", "-E", "nodiscard"])
        .arg(dev)
        .stdin(Stdio::null());
    qemu::die_with_parent(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| BlockError::Tool(format!("cannot run mkfs: {e}")))?;
    if !out.status.success() {
        return Err(BlockError::Tool(format!(
            "mkfs of the master LV failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .into());
    }
    Ok(())
}

/// VDSM's rule: 512-byte logical blocks everywhere, physical no smaller, all devices alike.
pub fn check_block_sizes(devs: &Devices) -> Result<(), StorageError> {
    let sizes = devs.block_sizes().map_err(BlockError::from)?;
    let Some(first) = sizes.first() else {
        return Ok(());
    };
    let want = (first.logical, first.physical);
    for s in &sizes {
        if s.logical != 512 || s.physical < s.logical || (s.logical, s.physical) != want {
            return Err(BlockError::BlockSize {
                path: s.path.clone(),
                logical: s.logical,
                physical: s.physical,
            }
            .into());
        }
    }
    Ok(())
}

/// Finds block domain `sd_id` among the host's allowed devices: a VG of that name tagged
/// `RHAT_storage_domain` whose sealed `MDT_` tags describe a V5 data domain. Returns its PVs and
/// metadata.
pub fn find(env: &Arc<BlockEnv>, sd_id: &Uuid) -> Result<(Devices, DomainMetadata), StorageError> {
    let path = domain_path(sd_id);
    let not = |why: String| StorageError::NotADomain {
        path: path.clone(),
        why,
    };
    let host = env.host_device_set()?;
    let vg = env
        .lvm()
        .vgs(&host)
        .map_err(BlockError::from)?
        .into_iter()
        .find(|v| v.name == sd_id.as_str())
        .ok_or_else(|| {
            not(format!(
                "no volume group named {sd_id} on the devices `[block] devices` allows"
            ))
        })?;
    if !vg.has_tag(DOMAIN_TAG) {
        return Err(not(if vg.has_tag(UNREADY_TAG) {
            "its volume group is tagged RHAT_storage_domain_UNREADY: its creation did not finish"
                .into()
        } else {
            "its volume group has no RHAT_storage_domain tag".into()
        }));
    }
    let devs = Devices::new(&vg.pv_names).map_err(|e| {
        not(format!(
            "its PVs ({:?}) are not all present: {e}",
            vg.pv_names
        ))
    })?;
    let md = dommd::from_tags(&vg.tags)?;
    md.check_opens(sd_id.as_str(), &path)?;
    check_block_sizes(&devs)?;
    Ok((devs, md))
}
