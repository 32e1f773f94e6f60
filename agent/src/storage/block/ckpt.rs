//! Checkpoints of copies into block volumes: the sealed record (`storage::checkpoint`) in the
//! second 4 KiB of the volume's V5 metadata slot ([`layout::checkpoint_offset`]).
//!
//! A write is one aligned O_DIRECT write of the whole region (the record, then zeros) and an
//! fdatasync: a shorter record never leaves the tail of a longer one behind, and a write torn
//! at a sector boundary leaves a broken seal, which a resume ignores (full copy, logged).
//! Removal zeroes the region; so does volume creation, whose metadata write covers the whole
//! slot (`BlockDomain::write_new_slot`), because a slot freed by a host that never cleared it
//! (VDSM does not clear slots, and a crash can stop sdm between its metadata and LV steps)
//! must not hand its old record to the next volume there.
//!
//! None of this takes the domain's metadata-writer lease. The region belongs to the slot, the
//! slot to the one LV tagged `MD_<slot>`, and that LV cannot be removed (nor its slot handed to
//! another volume) while its volume lease is held: removal and deletion take it first. The
//! copies that write checkpoints hold that lease for their whole run (`ops::lease_watch`
//! stops them when it is lost), so no other host writes the region meanwhile; creation and
//! removal write it while the LV still claims the slot.

use super::layout::{checkpoint_offset, CHECKPOINT_BYTES};
use super::{direct, volumes, BlockDomain};
use crate::storage::StorageError;
use sdm_proto::Uuid;

/// The region's bytes holding `record`: the record, then zeros to the region's end. Refused
/// when the record does not fit (`Checkpoint::set_error` bounds what a record carries).
pub fn region_of(record: &[u8]) -> Result<Vec<u8>, StorageError> {
    if record.len() > CHECKPOINT_BYTES {
        return Err(StorageError::Invalid(format!(
            "a checkpoint record of {} bytes does not fit the {CHECKPOINT_BYTES}-byte checkpoint region of a block volume's metadata slot",
            record.len()
        )));
    }
    let mut out = vec![0u8; CHECKPOINT_BYTES];
    out[..record.len()].copy_from_slice(record);
    Ok(out)
}

/// The record a region holds: its bytes up to the trailing zeros; None when it is all zeros.
/// Whatever else is there goes to `Checkpoint::decode`, whose seal refuses torn or foreign
/// bytes.
pub fn record_in(region: &[u8]) -> Option<&[u8]> {
    let end = region.iter().rposition(|b| *b != 0)? + 1;
    Some(&region[..end])
}

/// The stored record of a copy into `vol`, if any.
pub fn read(d: &BlockDomain, img: &Uuid, vol: &Uuid) -> Result<Option<Vec<u8>>, StorageError> {
    let (_, slot) = d.volume_lv(img, vol)?;
    let raw = direct::read_at(
        d.metadata_lv.path(),
        checkpoint_offset(slot),
        CHECKPOINT_BYTES,
    )?;
    Ok(record_in(&raw).map(<[u8]>::to_vec))
}

/// Replaces the record of a copy into `vol` (whose volume lease the caller holds).
pub fn write(d: &BlockDomain, img: &Uuid, vol: &Uuid, record: &[u8]) -> Result<(), StorageError> {
    let region = region_of(record)?;
    let slot = own_slot(d, img, vol)?;
    let (dev, at) = (d.metadata_lv.path(), checkpoint_offset(slot));
    fail::fail_point!("sdm::block::checkpoint_torn", |_| {
        // What a power cut in the middle of the write can leave: its first sector only.
        direct::write_at(dev, at, &region[..512])?;
        Err(StorageError::io(
            "write (O_DIRECT)",
            dev,
            std::io::Error::from_raw_os_error(libc::EIO),
        ))
    });
    direct::write_at(dev, at, &region)
}

/// Zeroes the checkpoint region of `vol`'s slot, durably.
pub fn remove(d: &BlockDomain, img: &Uuid, vol: &Uuid) -> Result<(), StorageError> {
    clear(d, own_slot(d, img, vol)?)
}

/// Zeroes a slot's checkpoint region, durably (the caller owns the slot).
pub fn clear(d: &BlockDomain, slot: u64) -> Result<(), StorageError> {
    direct::zero(
        d.metadata_lv.path(),
        checkpoint_offset(slot),
        CHECKPOINT_BYTES as u64,
    )
}

/// `vol`'s slot, when no other LV claims it too (then the slot belongs to nobody for sure and
/// nothing is written, as for metadata). One LVM listing: a copy calls this at every
/// checkpoint.
fn own_slot(d: &BlockDomain, img: &Uuid, vol: &Uuid) -> Result<u64, StorageError> {
    let lvs = d.volume_lvs()?;
    let Some(slot) = lvs
        .iter()
        .find(|v| v.name == vol.as_str() && v.is_volume_of(img.as_str()))
        .map(|v| v.slot)
    else {
        return Err(d.volume_not_found(img, vol));
    };
    let slot =
        slot.ok_or_else(|| StorageError::BadMetadata(format!("LV {}/{vol} has no MD_ tag", d.vg)))?;
    let rivals = volumes::slot_rivals(&lvs, vol.as_str(), slot);
    if !rivals.is_empty() {
        return Err(super::BlockError::SlotConflict {
            sd: d.sd_id.to_string(),
            slot,
            lvs: format!("{vol}, {}", rivals.join(", ")),
        }
        .into());
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::checkpoint::{Checkpoint, CheckpointError};

    #[test]
    fn a_region_holds_a_record_and_zeros() {
        let record = b"{\"a\":1}\nsha256=00\n";
        let region = region_of(record).unwrap();
        assert_eq!(region.len(), CHECKPOINT_BYTES);
        assert!(region[record.len()..].iter().all(|b| *b == 0));
        assert_eq!(record_in(&region), Some(&record[..]));
        assert_eq!(record_in(&[0u8; CHECKPOINT_BYTES]), None);
        assert!(region_of(&[b'x'; CHECKPOINT_BYTES]).is_ok());
        assert!(matches!(
            region_of(&[b'x'; CHECKPOINT_BYTES + 1]),
            Err(StorageError::Invalid(_))
        ));
    }

    #[test]
    fn torn_regions_never_decode() {
        // A longer old record torn by a shorter new one at any sector boundary: the seal of
        // neither matches.
        let old = sealed(&"o".repeat(3000));
        let old_sectors = old.len().div_ceil(512);
        let (old, new) = (region_of(&old).unwrap(), region_of(&sealed("n")).unwrap());
        // From the sector on that ends the old record, the region is the new one, whole.
        for sectors in 1..old_sectors {
            let mut torn = old.clone();
            torn[..sectors * 512].copy_from_slice(&new[..sectors * 512]);
            let got = record_in(&torn).map(Checkpoint::decode);
            assert!(
                matches!(got, Some(Err(CheckpointError::Seal(_)))),
                "{sectors} sectors: {got:?}"
            );
        }
        // Torn the other way (the old record's sectors first, then the new one's zeros).
        let mut torn = new.clone();
        torn[..512].copy_from_slice(&old[..512]);
        assert!(record_in(&torn).map(Checkpoint::decode).unwrap().is_err());
    }

    /// A sealed record the way `Checkpoint::encode` seals one, around arbitrary JSON.
    fn sealed(text: &str) -> Vec<u8> {
        use sha2::{Digest as _, Sha256};
        let body = serde_json::to_string(text).unwrap();
        format!("{body}\nsha256={}\n", hex::encode(Sha256::digest(&body))).into_bytes()
    }
}
