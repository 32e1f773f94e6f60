//! What can go wrong in a block domain besides what every kind shares (`StorageError`): LVM,
//! activation, devices, metadata slots and the metadata-writer lease. `crate::error` maps each
//! variant to its wire code.

use std::path::PathBuf;

use sdm_lease::LeaseError;
use sdm_lvm::{ActivationError, LvmError};

/// Errors of block domains.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The agent has no `[block] devices`.
    #[error("block domains are not configured on this host: list their devices in `[block] devices` of the agent config")]
    NotConfigured,
    /// The block layer could not be set up at start-up (the reason was logged then).
    #[error("block domains are unavailable on this host: {0}")]
    Unavailable(String),
    /// A device is missing or not a block device.
    #[error("{} is not a block device", path.display())]
    NotBlockDevice {
        /// The path given.
        path: PathBuf,
    },
    /// A device outside `[block] devices`.
    #[error("{} is not among the devices `[block] devices` allows ({allowed})", path.display())]
    DeviceNotAllowed {
        /// The path given.
        path: PathBuf,
        /// The configured patterns.
        allowed: String,
    },
    /// A device already belongs to a VG.
    #[error("{} already belongs to volume group {vg}; nothing was changed", path.display())]
    DeviceInUse {
        /// The device.
        path: PathBuf,
        /// Its VG.
        vg: String,
    },
    /// Block sizes other than VDSM's 512-byte rule.
    #[error("{} has logical/physical block sizes {logical}/{physical}; block domains need 512-byte logical blocks on every device and equal sizes throughout", path.display())]
    BlockSize {
        /// The device.
        path: PathBuf,
        /// Logical block size.
        logical: u32,
        /// Physical block size.
        physical: u32,
    },
    /// The devices are smaller than a domain needs.
    #[error("the devices hold {total} bytes together; a block domain needs at least {min}")]
    TooSmall {
        /// Their size.
        total: u64,
        /// VDSM's minimum.
        min: u64,
    },
    /// An LVM command failed.
    #[error(transparent)]
    Lvm(#[from] LvmError),
    /// `lvcreate` failed.
    #[error("cannot create LV {lv}")]
    CreateLv {
        /// The LV.
        lv: String,
        /// What LVM said.
        #[source]
        source: LvmError,
    },
    /// `lvremove` failed.
    #[error("cannot remove LV {lv}")]
    RemoveLv {
        /// The LV(s).
        lv: String,
        /// What LVM said.
        #[source]
        source: LvmError,
    },
    /// An LV could not be made usable.
    #[error("cannot activate LV {lv}")]
    Activate {
        /// The LV.
        lv: String,
        /// Why.
        #[source]
        source: ActivationError,
    },
    /// An LV is in use on this host.
    #[error("{0}")]
    InUse(String),
    /// Two LVs claim one metadata slot.
    #[error("metadata slot {slot} of domain {sd} is claimed by more than one LV ({lvs}); nothing was written")]
    SlotConflict {
        /// The domain.
        sd: String,
        /// The slot.
        slot: u64,
        /// The LVs claiming it.
        lvs: String,
    },
    /// Every metadata slot is taken.
    #[error("domain {0} has no free metadata slot (slots 1-1947 are taken)")]
    SlotsExhausted(String),
    /// A volume would outgrow its format's maximum.
    #[error("volume {vol} needs {needed} bytes, more than its maximum of {max} (a COW volume may grow to 1.1 × its capacity)")]
    TooLarge {
        /// The volume.
        vol: String,
        /// Bytes asked for.
        needed: u64,
        /// Its maximum.
        max: u64,
    },
    /// The metadata-writer lease could not be taken.
    #[error("metadata-writer lease of domain {sd} (resource SDM in its leases LV): {why}")]
    WriterLease {
        /// The domain.
        sd: String,
        /// What happened (busy past the deadline, lost, ...).
        why: String,
        /// The lease backend's error.
        #[source]
        source: LeaseError,
    },
    /// A helper program (mkfs) failed.
    #[error("{0}")]
    Tool(String),
}
