//! sdm-lvm: the LVM and activation layer under sdm's block domains.
//!
//! - [`Lvm`] runs the real `lvm` tool (Debian's lvm2) for the operations a block domain
//!   needs: PVs and VGs with VDSM's parameters, VG/LV tags, LV create/extend/remove, and
//!   `pvs`/`vgs`/`lvs` reports parsed into [`PvInfo`]/[`VgInfo`]/[`LvInfo`]. Each command
//!   sees only an explicit [`Devices`] set, runs with a deadline, and reports LVM's stderr
//!   in its [`LvmError`].
//! - [`encode_tag`]/[`decode_tag`] carry free text in tags exactly as VDSM does.
//! - [`Activator`] makes LVs usable as block devices, reference-counted per LV, in one of
//!   two [`ActivationMode`]s: device-mapper, or loop devices over the PV where the host has
//!   no device-mapper. Mappings left by a killed process are undone by
//!   [`Activator::cleanup_stale`].
//!
//! Everything here blocks (it runs programs); call it from blocking threads.
//!
//! ```no_run
//! use sdm_lvm::{ActivationMode, Activator, Devices, Lvm, LvmConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mode = ActivationMode::probe();
//! let lvm = Lvm::new(LvmConfig { activation: mode.lvm_activation(), ..LvmConfig::default() })?;
//! let activator = Activator::new(lvm.clone(), mode, "/var/lib/sdm/activation")?;
//! activator.cleanup_stale()?;
//! let devs = Devices::new(["/dev/mapper/36001405a1b2c3d4"])?;
//! for vg in lvm.vgs_with_tag(&devs, "RHAT_storage_domain")? {
//!     println!("domain {} ({} free extents)", vg.name, vg.free_count);
//! }
//! let lv = activator.activate(&devs, "6e2d1b2a-0c6f-4b8e-9f3a-2d7c5e1f0a9b", "metadata")?;
//! println!("metadata LV at {} ({} bytes)", lv.path().display(), lv.size());
//! lv.release()?;
//! # Ok(()) }
//! ```

mod activation;
mod config;
mod error;
mod exec;
mod lvm;
mod names;
mod options;
mod report;
mod tags;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use activation::{ActivationError, ActivationMode, Activator, ActiveLv, CleanupReport};
pub use config::{LvmConfig, ReportFormat};
pub use error::{Failure, LvmError};
pub use lvm::Lvm;
pub use names::{check_name, BlockSizes, Devices};
pub use options::{LvCreate, LvSize, PvCreateOptions, VgCreateOptions};
pub use report::{LvInfo, LvSegment, PeRange, PvInfo, VgInfo};
pub use tags::{check_tag, decode_tag, encode_tag, MAX_TAG_LEN};
