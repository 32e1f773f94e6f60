//! oVirt's V5 block layout (`/work/shared/reference/block-domain-layout.md`): the VG's tags,
//! the special LVs and their sizes, the tags of volume LVs, where a volume's metadata slot and
//! lease are, and how large a volume's LV is.

use sdm_lvm::LvInfo;
use sdm_proto::{Preallocation, VolumeFormat, BLANK_UUID};

use crate::storage::backend::{Leftover, REMOVE_ME_PREFIX};
use crate::storage::md::ALIGNMENT;
use crate::storage::StorageError;

const MIB: u64 = 1 << 20;

/// Extent size of a domain's VG.
pub const EXTENT_MIB: u64 = 128;
/// The same in bytes.
pub const EXTENT: u64 = EXTENT_MIB * MIB;
/// The least the devices of a new domain hold together.
pub const MIN_DOMAIN_BYTES: u64 = 10 << 30;

/// The tag that makes a VG a storage domain.
pub const DOMAIN_TAG: &str = "RHAT_storage_domain";
/// The VG's only tag while the domain is being made.
pub const UNREADY_TAG: &str = "RHAT_storage_domain_UNREADY";
/// Prefix of the VG tags holding domain metadata lines.
pub const MDT_PREFIX: &str = "MDT_";
/// A volume LV being created: listing, slot scans and lookups ignore it.
pub const INIT_TAG: &str = "OVIRT_VOL_INITIALIZING";
/// `IU_<image>`.
pub const IMAGE_PREFIX: &str = "IU_";
/// `PU_<parent volume or BLANK>`.
pub const PARENT_PREFIX: &str = "PU_";
/// `MD_<slot>`.
pub const SLOT_PREFIX: &str = "MD_";

/// The `metadata` LV: volume metadata slots.
pub const METADATA_LV: &str = "metadata";
/// The `ids` LV: the sanlock lockspace.
pub const IDS_LV: &str = "ids";
/// The `leases` LV: the SDM lease and volume leases.
pub const LEASES_LV: &str = "leases";
/// The `xleases` LV: external leases.
pub const XLEASES_LV: &str = "xleases";
/// The SPM mailbox LVs.
pub const INBOX_LV: &str = "inbox";
/// See [`INBOX_LV`].
pub const OUTBOX_LV: &str = "outbox";
/// The `master` LV (ext3).
pub const MASTER_LV: &str = "master";

/// The special LVs with the sizes VDSM asks for (MiB, before rounding to extents), in the order
/// they are created: `metadata` first, so that it starts at extent 0 of the first PV.
pub const SPECIAL_LVS: [(&str, u64); 7] = [
    (METADATA_LV, 128),
    (IDS_LV, 8),
    (LEASES_LV, 2048),
    (INBOX_LV, 16),
    (OUTBOX_LV, 16),
    (XLEASES_LV, 1024),
    (MASTER_LV, 1024),
];

/// Bytes of `metadata` zeroed at creation (the legacy area and every slot's first use).
pub const RESERVED_METADATA_BYTES: u64 = 17 * MIB;
/// Bytes of each mailbox LV zeroed at creation (4 KiB × 250 hosts).
pub const RESERVED_MAILBOX_BYTES: u64 = 1_024_000;

/// Where V5 slots start in `metadata`.
pub const SLOT_BASE: u64 = MIB;
/// Distance between V5 slots.
pub const SLOT_STRIDE: u64 = 8 << 10;
/// Bytes of one volume's metadata.
pub const SLOT_BYTES: usize = 512;
/// Where a copy's checkpoint lives inside a V5 slot: its second 4 KiB. VDSM reads and writes
/// only a slot's first 512 bytes (`sc.METADATA_SIZE`; one direct write of at most a 4 KiB
/// block on 4K devices), so these bytes are sdm's own (`docs/block-domains.md`).
pub const CHECKPOINT_IN_SLOT: u64 = 4 << 10;
/// Bytes of a slot's checkpoint region: one page, aligned for 512-byte and 4K devices alike.
pub const CHECKPOINT_BYTES: usize = 4 << 10;
const _: () = assert!(SLOT_BYTES as u64 <= CHECKPOINT_IN_SLOT);
const _: () = assert!(CHECKPOINT_IN_SLOT + CHECKPOINT_BYTES as u64 <= SLOT_STRIDE);
/// The first slot a V5 volume may use (0 is reserved).
pub const FIRST_SLOT: u64 = 1;
/// The last slot whose lease still fits the 2 GiB `leases` LV.
pub const LAST_SLOT: u64 = 2048 - RESERVED_LEASES - 1;
/// Lease slots of `leases` before the volume leases (0 legacy SPM, 1 SDM, 2–99 reserved).
pub const RESERVED_LEASES: u64 = 100;
/// A thin COW volume's first allocation and growth step (`volume_utilization_chunk_mb`).
pub const COW_CHUNK: u64 = 2560 * MIB;

/// Byte offset of a slot's metadata in the `metadata` LV.
pub fn slot_offset(slot: u64) -> u64 {
    SLOT_BASE + slot * SLOT_STRIDE
}

/// Byte offset of a slot's checkpoint region in the `metadata` LV.
pub fn checkpoint_offset(slot: u64) -> u64 {
    slot_offset(slot) + CHECKPOINT_IN_SLOT
}

/// Byte offset of a slot's volume lease in the `leases` LV.
pub fn lease_offset(slot: u64) -> u64 {
    (RESERVED_LEASES + slot) * ALIGNMENT
}

/// Whether `name` is one of the special LVs.
pub fn is_special(name: &str) -> bool {
    SPECIAL_LVS.iter().any(|(n, _)| *n == name)
}

/// A volume's LV as its tags describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolLv {
    /// LV name: the volume UUID.
    pub name: String,
    /// `IU_` value: an image UUID, or a leftover name (`_remove_me_…`).
    pub image: Option<String>,
    /// `PU_` value.
    pub parent: Option<String>,
    /// `MD_` value.
    pub slot: Option<u64>,
    /// Tagged `OVIRT_VOL_INITIALIZING`.
    pub initializing: bool,
    /// LV size in bytes.
    pub size: u64,
}

impl VolLv {
    /// Reads a volume LV's tags; None for special LVs.
    pub fn from_lv(lv: &LvInfo) -> Option<VolLv> {
        if is_special(&lv.name) {
            return None;
        }
        let value = |prefix: &str| {
            lv.tags
                .iter()
                .find_map(|t| t.strip_prefix(prefix))
                .map(str::to_string)
        };
        Some(VolLv {
            name: lv.name.clone(),
            image: value(IMAGE_PREFIX),
            parent: value(PARENT_PREFIX),
            slot: value(SLOT_PREFIX).and_then(|s| s.parse().ok()),
            initializing: lv.has_tag(INIT_TAG),
            size: lv.size,
        })
    }

    /// The image it belongs to when that image is live (not marked for removal).
    pub fn live_image(&self) -> Option<&str> {
        self.image
            .as_deref()
            .filter(|i| !i.starts_with(REMOVE_ME_PREFIX))
    }

    /// The leftover it belongs to, if its image is marked for removal.
    pub fn leftover(&self) -> Option<Leftover> {
        self.image.as_deref().and_then(Leftover::found)
    }

    /// Whether it is a complete volume of image `img`.
    pub fn is_volume_of(&self, img: &str) -> bool {
        !self.initializing && self.image.as_deref() == Some(img)
    }
}

/// The tags of a new volume's LV: initializing, its slot, image and parent.
pub fn new_volume_tags(slot: u64, img: &str, parent: Option<&str>) -> Vec<String> {
    vec![
        INIT_TAG.to_string(),
        format!("{SLOT_PREFIX}{slot}"),
        format!("{IMAGE_PREFIX}{img}"),
        format!("{PARENT_PREFIX}{}", parent.unwrap_or(BLANK_UUID)),
    ]
}

/// The lowest slot no volume LV claims (initializing ones and leftovers included: their slots
/// are in use until their LVs are removed).
pub fn free_slot<'a>(vols: impl IntoIterator<Item = &'a VolLv>) -> Option<u64> {
    let mut used: Vec<u64> = vols.into_iter().filter_map(|v| v.slot).collect();
    used.sort_unstable();
    used.dedup();
    let mut want = FIRST_SLOT;
    for s in used {
        if s == want {
            want += 1;
        } else if s > want {
            break;
        }
    }
    (want <= LAST_SLOT).then_some(want)
}

/// Bytes a new volume's LV gets (before LVM rounds up to extents): RAW its capacity (block RAW
/// is always preallocated; SPARSE is refused as VDSM does); COW preallocated its capacity; COW
/// sparse one growth chunk at most, or `initial` (what is about to be written into it) capped
/// at its maximum.
pub fn alloc_bytes(
    format: VolumeFormat,
    allocation: Preallocation,
    capacity: u64,
    initial: Option<u64>,
) -> Result<u64, StorageError> {
    let bytes = match (format, allocation) {
        (VolumeFormat::Raw, Preallocation::Sparse) => {
            return Err(StorageError::Invalid(
                "RAW volumes of a block domain are always PREALLOCATED (RAW SPARSE is refused, as VDSM refuses it)".into(),
            ))
        }
        (VolumeFormat::Raw, Preallocation::Preallocated) => capacity,
        (VolumeFormat::Cow, Preallocation::Preallocated) => capacity,
        (VolumeFormat::Cow, Preallocation::Sparse) => match initial {
            Some(n) => n.min(max_bytes(format, capacity)),
            None => capacity.min(COW_CHUNK),
        },
    };
    Ok(bytes.max(MIB))
}

/// Bytes a new volume's LV gets when the client names its initial size (VDSM's
/// `calculate_volume_alloc_size`): COW sparse `initial` × 1.1 (room for qcow2's metadata), COW
/// preallocated `initial`; either no more than the volume's maximum. RAW volumes take no initial
/// size (their LV is their capacity). LVM rounds the result up to whole extents.
pub fn requested_bytes(
    format: VolumeFormat,
    allocation: Preallocation,
    capacity: u64,
    initial: u64,
) -> Result<u64, StorageError> {
    let bytes = match (format, allocation) {
        (VolumeFormat::Raw, _) => {
            return Err(StorageError::Invalid(
                "initialSize is for COW volumes; a RAW volume of a block domain is always its full capacity".into(),
            ))
        }
        (VolumeFormat::Cow, Preallocation::Sparse) => initial
            .checked_mul(11)
            .map(|b| b.div_ceil(10))
            .unwrap_or(u64::MAX),
        (VolumeFormat::Cow, Preallocation::Preallocated) => initial,
    };
    let max = max_bytes(format, capacity);
    if bytes > max {
        return Err(StorageError::Invalid(format!(
            "initialSize {initial} needs {bytes} bytes, more than the volume's maximum of {max} (1.1 × capacity in whole extents)"
        )));
    }
    Ok(bytes.max(MIB))
}

/// The most a volume's LV may grow to: RAW its capacity; COW 1.1 × capacity rounded up to
/// extents (room for qcow2's own metadata).
pub fn max_bytes(format: VolumeFormat, capacity: u64) -> u64 {
    match format {
        VolumeFormat::Raw => capacity.div_ceil(EXTENT) * EXTENT,
        VolumeFormat::Cow => (capacity.saturating_mul(11) / 10).div_ceil(EXTENT) * EXTENT,
    }
}

/// `lvcreate`/`lvextend` sizes are whole MiB.
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(slot: Option<u64>) -> VolLv {
        VolLv {
            name: "v".into(),
            image: Some("i".into()),
            parent: None,
            slot,
            initializing: false,
            size: 0,
        }
    }

    #[test]
    fn offsets_are_vdsms() {
        // The examples of VDSM's tests: slot 0 at 1 MiB, slot 100 at 1867776; the lease of
        // slot 1 at 101 MiB.
        assert_eq!(slot_offset(0), 1_048_576);
        assert_eq!(slot_offset(100), 1_867_776);
        assert_eq!(lease_offset(1), 105_906_176);
        assert_eq!(LAST_SLOT, 1947);
        assert!(lease_offset(LAST_SLOT) + ALIGNMENT <= 2048 * MIB);
        assert!(slot_offset(LAST_SLOT) + SLOT_BYTES as u64 <= RESERVED_METADATA_BYTES);
        // Checkpoint regions: page aligned, between a slot's metadata and the next slot, and
        // inside the area zeroed when a domain is made.
        assert_eq!(checkpoint_offset(1), 1_056_768 + 4096);
        for slot in [FIRST_SLOT, 2, LAST_SLOT] {
            assert_eq!(checkpoint_offset(slot) % 4096, 0);
            assert!(checkpoint_offset(slot) >= slot_offset(slot) + SLOT_BYTES as u64);
            assert!(checkpoint_offset(slot) + CHECKPOINT_BYTES as u64 <= slot_offset(slot + 1));
        }
        assert!(checkpoint_offset(LAST_SLOT) + CHECKPOINT_BYTES as u64 <= RESERVED_METADATA_BYTES);
    }

    #[test]
    fn free_slot_is_the_lowest_unused_from_one() {
        assert_eq!(free_slot(&[]), Some(1));
        let v = [vol(Some(1)), vol(Some(2)), vol(Some(4)), vol(None)];
        assert_eq!(free_slot(&v), Some(3));
        let v = [vol(Some(3))];
        assert_eq!(free_slot(&v), Some(1));
        let all: Vec<VolLv> = (1..=LAST_SLOT).map(|s| vol(Some(s))).collect();
        assert_eq!(free_slot(&all), None);
    }

    #[test]
    fn sizes_follow_vdsm() {
        let g = 1u64 << 30;
        // 10 GiB COW may grow to 11811160064 bytes (VDSM's blockvolume_test).
        assert_eq!(max_bytes(VolumeFormat::Cow, 10 * g), 11_811_160_064);
        assert_eq!(
            alloc_bytes(VolumeFormat::Cow, Preallocation::Sparse, 10 * g, None).unwrap(),
            COW_CHUNK
        );
        assert_eq!(
            alloc_bytes(VolumeFormat::Cow, Preallocation::Sparse, g, None).unwrap(),
            g
        );
        assert_eq!(
            alloc_bytes(VolumeFormat::Cow, Preallocation::Sparse, g, Some(100 * g)).unwrap(),
            max_bytes(VolumeFormat::Cow, g)
        );
        assert_eq!(
            alloc_bytes(VolumeFormat::Raw, Preallocation::Preallocated, 5 * g, None).unwrap(),
            5 * g
        );
        assert!(alloc_bytes(VolumeFormat::Raw, Preallocation::Sparse, g, None).is_err());
        // A client's initialSize: × 1.1 for COW sparse, up to the maximum; never for RAW.
        let sparse = |cap, n| requested_bytes(VolumeFormat::Cow, Preallocation::Sparse, cap, n);
        assert_eq!(sparse(10 * g, g).unwrap(), (11 * g).div_ceil(10));
        assert_eq!(sparse(10 * g, 10 * g).unwrap(), 11 * g);
        assert!(sparse(10 * g, 11 * g).is_err());
        assert!(sparse(10 * g, u64::MAX).is_err());
        assert_eq!(sparse(g, 1).unwrap(), MIB);
        assert_eq!(
            requested_bytes(
                VolumeFormat::Cow,
                Preallocation::Preallocated,
                10 * g,
                3 * g
            )
            .unwrap(),
            3 * g
        );
        assert!(requested_bytes(VolumeFormat::Raw, Preallocation::Preallocated, g, g).is_err());
        assert_eq!(mib(MIB + 1), 2);
    }
}
