//! Volumes as LVs: creation, removal, growth, metadata slots.
//!
//! Creation never leaves a volume that looks complete but is not. Under the metadata-writer
//! lease, with LVM metadata read afresh, it picks the lowest free slot and creates the LV
//! tagged `OVIRT_VOL_INITIALIZING`, `MD_<slot>`, `IU_<img>`, `PU_<parent>` (the slot is then
//! taken for every host). Without the lease it writes the data (qcow2 header), the metadata
//! slot and the volume lease. Under the lease again it drops `OVIRT_VOL_INITIALIZING`: from
//! then on the volume exists. A failure in between removes the LV (still initializing) after
//! clearing its slot; a crash leaves it initializing, which listing ignores and
//! `StorageDomain.check` reports as an orphan.

use std::process::Command;

use sdm_lease::{Lease, LeaseBackend};
use sdm_lvm::{LvCreate, LvSize, LvmError};
use sdm_proto::{Uuid, VolumeFormat};

use super::error::BlockError;
use super::layout::{
    alloc_bytes, free_slot, lease_offset, max_bytes, mib, new_volume_tags, requested_bytes,
    slot_offset, VolLv, INIT_TAG, SLOT_BYTES,
};
use super::{direct, BlockDomain};
use crate::storage::backend::Creation;
use crate::storage::md::VolumeMetadata;
use crate::storage::{qemu, StorageError};

/// Creates a volume (see the module documentation).
pub fn create(
    d: &BlockDomain,
    leases: &dyn LeaseBackend,
    c: &Creation<'_>,
) -> Result<(), StorageError> {
    let md = c.md;
    let bytes = match c.requested_initial_size {
        Some(n) => requested_bytes(md.format, md.allocation, md.capacity, n)?,
        None => alloc_bytes(md.format, md.allocation, md.capacity, c.initial_size)?,
    };
    let vol = c.vol.as_str();
    let parent = c.parent.map(|(p, _)| p.as_str());
    let slot = d.writer.run("create a volume", |lease| {
        let vols = d.volume_lvs()?;
        if vols.iter().any(|v| v.name == vol) {
            return Err(StorageError::VolumeExists(vol.to_string()));
        }
        let slot = free_slot(&vols).ok_or_else(|| BlockError::SlotsExhausted(d.vg.clone()))?;
        lease.verify()?;
        let lv = LvCreate {
            name: vol.to_string(),
            size: LvSize::Mib(mib(bytes)),
            tags: new_volume_tags(slot, c.img.as_str(), parent),
        };
        d.lvm().lvcreate(&d.devs, &d.vg, &lv).map_err(|e| match e {
            LvmError::Exists { .. } => StorageError::VolumeExists(vol.to_string()),
            LvmError::NoSpace { .. } => StorageError::io(
                "lvcreate",
                format!("{}/{vol}", d.vg),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ),
            e => BlockError::CreateLv {
                lv: format!("{}/{vol}", d.vg),
                source: e,
            }
            .into(),
        })?;
        Ok(slot)
    })?;
    fail::fail_point!("sdm::block::volume_initializing");
    let mut wrote_slot = false;
    let made = fill(d, leases, c, slot, &mut wrote_slot).and_then(|()| {
        fail::fail_point!("sdm::block::before_initialized");
        d.writer.run("finish a volume", |lease| {
            lease.verify()?;
            d.lvm()
                .change_lv_tags(&d.devs, &d.vg, &[vol], &[INIT_TAG], &[])
                .map_err(|e| BlockError::from(e).into())
        })
    });
    if let Err(e) = made {
        return match roll_back(d, vol, slot, wrote_slot) {
            // The last step failed only in what it reported: the volume is complete.
            Ok(true) => Ok(()),
            Ok(false) => Err(e),
            Err(undo) => {
                tracing::error!(sd_id = %d.sd_id, vol_id = vol, error = %undo, "removing a half-made volume failed; it stays tagged OVIRT_VOL_INITIALIZING (StorageDomain.check reports it)");
                Err(e)
            }
        };
    }
    Ok(())
}

/// The part of creation done without the writer lease: qcow2 header, metadata, lease.
fn fill(
    d: &BlockDomain,
    leases: &dyn LeaseBackend,
    c: &Creation<'_>,
    slot: u64,
    wrote_slot: &mut bool,
) -> Result<(), StorageError> {
    let (prepared, size) = d.prepare_lv(c.img.as_str(), c.vol.as_str())?;
    let mut md = c.md.clone();
    match md.format {
        // VDSM's rule: a RAW volume's capacity is its LV's size.
        VolumeFormat::Raw => md.capacity = md.capacity.max(size),
        VolumeFormat::Cow => {
            let mut cmd = Command::new("qemu-img");
            cmd.current_dir(d.links.dir(c.img.as_str())).args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=1.1",
            ]);
            if let Some((pid, pmd)) = c.parent {
                cmd.args([
                    "-b",
                    pid.as_str(),
                    "-F",
                    qemu::format_name(pmd.format),
                    "-u",
                ]);
            }
            cmd.arg(prepared.path()).arg(md.capacity.to_string());
            qemu::run(&mut cmd)?;
        }
    }
    drop(prepared);
    *wrote_slot = true;
    // The slot may hold the checkpoint of a copy into an earlier volume there: never the new
    // one's. Zeroed in the metadata's own write, so that no volume ever has the old record.
    d.write_new_slot(slot, &md)?;
    leases.init_lease_at(
        d.sd_id.as_str(),
        c.vol.as_str(),
        &d.leases_link,
        lease_offset(slot),
    )?;
    Ok(())
}

/// Undoes a creation that failed after `lvcreate`: clears the slot and removes the LV, if it is
/// still initializing. Ok(true) when it is not: then the volume was completed after all.
fn roll_back(
    d: &BlockDomain,
    vol: &str,
    slot: u64,
    wrote_slot: bool,
) -> Result<bool, StorageError> {
    d.writer.run("remove a half-made volume", |lease| {
        let lv = match d.lvm().lv(&d.devs, &d.vg, vol) {
            Ok(lv) => lv,
            Err(LvmError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(BlockError::from(e).into()),
        };
        if !lv.has_tag(INIT_TAG) {
            return Ok(true);
        }
        if wrote_slot {
            direct::write_at(d.metadata_lv.path(), slot_offset(slot), &[0u8; SLOT_BYTES])?;
        }
        lease.verify()?;
        remove_lvs(d, &[vol])?;
        Ok(false)
    })
}

/// Removes a volume whose lease `lease` is (see `DomainBackend::remove_volume`). The lease is
/// released before the LV goes: once the LV is gone its slot may be reused by any host, which
/// writes a new lease there.
pub fn remove(d: &BlockDomain, img: &Uuid, vol: &Uuid, lease: Lease) -> Result<(), StorageError> {
    let (_, slot) = d.volume_lv(img, vol)?;
    d.check_unused(vol.as_str())?;
    // The checkpoint goes while the lease still makes the slot ours (creation zeroes it too,
    // for slots other hosts freed without doing so).
    if let Err(e) = super::ckpt::clear(d, slot) {
        tracing::warn!(sd_id = %d.sd_id, vol_id = %vol, slot, error = %e, "clearing the checkpoint region of a removed volume failed");
    }
    if let Err(e) = lease.release() {
        tracing::warn!(sd_id = %d.sd_id, vol_id = %vol, error = %e, "releasing a volume lease before removal failed");
    }
    d.writer.run("remove a volume", |lease| {
        d.volume_lv(img, vol)?;
        lease.verify()?;
        remove_lvs(d, &[vol.as_str()])
    })?;
    tracing::info!(sd_id = %d.sd_id, img_id = %img, vol_id = %vol, "removed volume LV");
    Ok(())
}

/// `lvremove -f` of LVs nobody on this host uses (the caller holds the writer lease).
pub fn remove_lvs(d: &BlockDomain, lvs: &[&str]) -> Result<(), StorageError> {
    for lv in lvs {
        d.check_unused(lv)?;
    }
    d.lvm().lvremove(&d.devs, &d.vg, lvs).map_err(|e| {
        BlockError::RemoveLv {
            lv: format!("{}/{}", d.vg, lvs.join(",")),
            source: e,
        }
        .into()
    })
}

/// Grows a volume's LV to hold `bytes`, up to its format's maximum.
pub fn reserve(d: &BlockDomain, img: &Uuid, vol: &Uuid, bytes: u64) -> Result<(), StorageError> {
    let (v, slot) = d.volume_lv(img, vol)?;
    if v.size >= bytes {
        return Ok(());
    }
    let md = d.read_slot(img, slot)?;
    let max = max_bytes(md.format, md.capacity).max(v.size);
    if bytes > max {
        return Err(BlockError::TooLarge {
            vol: vol.to_string(),
            needed: bytes,
            max,
        }
        .into());
    }
    d.writer.run("extend a volume", |lease| {
        d.volume_lv(img, vol)?;
        lease.verify()?;
        d.lvm()
            .lvextend(&d.devs, &d.vg, vol.as_str(), LvSize::Mib(mib(bytes)))
            .map_err(|e| match e {
                LvmError::NoSpace { .. } => StorageError::io(
                    "lvextend",
                    format!("{}/{vol}", d.vg),
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ),
                e => BlockError::from(e).into(),
            })
    })?;
    // A mapping this host holds must follow (device-mapper reloads it; a loop mapping cannot
    // grow and says so).
    d.env
        .activator()
        .refresh(&d.vg, vol.as_str())
        .map_err(|e| BlockError::Activate {
            lv: format!("{}/{vol}", d.vg),
            source: e,
        })?;
    tracing::info!(sd_id = %d.sd_id, vol_id = %vol, bytes, "extended volume LV");
    Ok(())
}

/// Parses a slot's text; the metadata must name the image the LV is tagged with.
pub fn parse_slot(raw: &[u8], img: &str, slot: u64) -> Result<VolumeMetadata, StorageError> {
    let md = VolumeMetadata::parse(raw)
        .map_err(|e| StorageError::BadMetadata(format!("metadata slot {slot}: {e}")))?;
    if md.image != img {
        return Err(StorageError::BadMetadata(format!(
            "metadata slot {slot} holds a volume of image {:?}, not {img}",
            md.image
        )));
    }
    Ok(md)
}

/// The LVs that claim `slot` other than `vol`.
pub fn slot_rivals<'a>(vols: &'a [VolLv], vol: &str, slot: u64) -> Vec<&'a str> {
    vols.iter()
        .filter(|v| v.name != vol && v.slot == Some(slot))
        .map(|v| v.name.as_str())
        .collect()
}
