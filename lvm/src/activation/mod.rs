//! LV activation: making an LV's bytes reachable as a block device, counted per LV.
//!
//! Two implementations, chosen once at start-up ([`ActivationMode::probe`]):
//!
//! - **device-mapper** (`dm.rs`): `lvchange --activate y/n` and `--refresh`; the device is
//!   `/dev/<vg>/<lv>`.
//! - **loop-mapped** (`loopdev.rs`), for hosts without device-mapper (containers): the LV's
//!   single linear segment is attached as a loop device over its PV with
//!   `losetup --offset <pe_start + first PE × extent size> --sizelimit <LV size>
//!   --direct-io=on`. LVM itself then runs with `global/activation=0`. LVs with more than
//!   one segment are refused ([`ActivationError::MultiSegment`]).
//!
//! [`Activator::activate`] returns an [`ActiveLv`] guard holding the device path. Guards of
//! one LV share one mapping; the last one dropped (or [`ActiveLv::release`]d) removes it.
//!
//! Before a mapping is made, a record is written to `<state dir>/<vg>/<lv>.json` (and
//! updated with the loop device once known); it is removed after the mapping is gone. A
//! process killed with SIGKILL leaves its records behind, and [`Activator::cleanup_stale`],
//! called at start-up, undoes what they describe: it detaches a loop device only if it
//! still maps exactly the recorded PV range, and deactivates recorded device-mapper LVs.
//! One [`Activator`] per state dir.

mod dm;
pub(crate) mod loopdev;
mod state;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::LvmError;
use crate::lvm::Lvm;
use crate::names::{check_name, Devices};

pub use state::CleanupReport;
use state::{Mapping, Record, StateDir};

/// How LVs become block devices on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationMode {
    /// `lvchange -ay`; device `/dev/<vg>/<lv>`.
    DeviceMapper,
    /// A loop device over the LV's extents on its PV; LVM runs with activation disabled.
    LoopMapped,
}

impl ActivationMode {
    /// Device-mapper when `/dev/mapper/control` opens for reading and writing (the node
    /// may exist without the kernel driver: lvm2 creates it, then open fails with ENODEV),
    /// loop-mapped otherwise.
    pub fn probe() -> ActivationMode {
        Self::probe_control(Path::new("/dev/mapper/control"))
    }

    fn probe_control(control: &Path) -> ActivationMode {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(control)
            .is_ok();
        if usable {
            ActivationMode::DeviceMapper
        } else {
            ActivationMode::LoopMapped
        }
    }

    /// `"device-mapper"` or `"loop-mapped"`, as shown in `Host.getCapabilities`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationMode::DeviceMapper => "device-mapper",
            ActivationMode::LoopMapped => "loop-mapped",
        }
    }

    /// The value for [`crate::LvmConfig::activation`].
    pub fn lvm_activation(self) -> bool {
        self == ActivationMode::DeviceMapper
    }
}

impl fmt::Display for ActivationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActivationMode {
    type Err = ActivationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "device-mapper" => Ok(ActivationMode::DeviceMapper),
            "loop-mapped" => Ok(ActivationMode::LoopMapped),
            other => Err(ActivationError::Config(format!(
                "unknown activation mode {other:?} (device-mapper or loop-mapped)"
            ))),
        }
    }
}

/// Errors of activation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// An LVM command failed (the LV does not exist, timeout, …).
    #[error(transparent)]
    Lvm(#[from] LvmError),
    /// Loop-mapped activation maps one linear segment only.
    #[error(
        "LV {vg}/{lv} has {segments} segments; loop-mapped activation (no device-mapper on \
         this host) can only map an LV made of one contiguous run of extents"
    )]
    MultiSegment {
        vg: String,
        lv: String,
        segments: usize,
    },
    /// Not a plain linear LV (striped, mirrored, thin, …).
    #[error("LV {vg}/{lv} has segment type {segtype} over {stripes} stripes; only linear LVs can be loop-mapped")]
    Unsupported {
        vg: String,
        lv: String,
        segtype: String,
        stripes: u32,
    },
    /// The device made for the LV does not have the LV's size.
    #[error("Device {} for {vg}/{lv} has {actual} bytes, the LV {expected}", device.display())]
    SizeMismatch {
        vg: String,
        lv: String,
        device: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The LV's extents moved or grew while it was loop-mapped; the mapping cannot follow.
    #[error("LV {vg}/{lv} changed while loop-mapped ({detail}); release it and activate again")]
    Changed {
        vg: String,
        lv: String,
        detail: String,
    },
    /// `losetup` failed or printed something unexpected.
    #[error("losetup failed: {0}")]
    Losetup(String),
    /// Reading or writing the state dir failed.
    #[error("Activation state {}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record in the state dir cannot be read.
    #[error("Activation record {} is unreadable: {detail}", path.display())]
    BadRecord { path: PathBuf, detail: String },
    /// The activator was set up inconsistently.
    #[error("Activation configuration: {0}")]
    Config(String),
}

impl ActivationError {
    /// A stable name for the error kind; LVM errors give their own ([`LvmError::code`]).
    pub fn code(&self) -> &'static str {
        match self {
            ActivationError::Lvm(e) => e.code(),
            ActivationError::MultiSegment { .. } => "MultiSegment",
            ActivationError::Unsupported { .. } => "Unsupported",
            ActivationError::SizeMismatch { .. } => "SizeMismatch",
            ActivationError::Changed { .. } => "Changed",
            ActivationError::Losetup(_) => "Losetup",
            ActivationError::State { .. } => "State",
            ActivationError::BadRecord { .. } => "BadRecord",
            ActivationError::Config(_) => "Config",
        }
    }
}

/// One implementation of activation. `plan` reads what the mapping must be, `attach`
/// makes it, `detach` undoes it; `cleanup` undoes a record left by a dead process.
trait Backend: Send + Sync + fmt::Debug {
    fn plan(&self, devs: &Devices, vg: &str, lv: &str) -> Result<Mapping, ActivationError>;
    /// Returns the device path and its size in bytes.
    fn attach(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &str,
        m: &Mapping,
    ) -> Result<(PathBuf, u64), ActivationError>;
    fn detach(&self, record: &Record) -> Result<(), ActivationError>;
    /// Undoes a stale record; returns the devices it removed.
    fn cleanup(&self, record: &Record) -> Result<Vec<PathBuf>, ActivationError>;
    /// Brings an active mapping up to date with LVM metadata changed by another host.
    fn refresh(&self, record: &Record) -> Result<(), ActivationError>;
}

type Key = (String, String);

#[derive(Debug, Default)]
struct Slot {
    users: usize,
    record: Option<Record>,
}

#[derive(Debug)]
struct Inner {
    mode: ActivationMode,
    backend: Box<dyn Backend>,
    state: StateDir,
    slots: Mutex<HashMap<Key, Arc<Mutex<Slot>>>>,
}

/// Reference-counted activation of LVs (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Activator {
    inner: Arc<Inner>,
}

/// An active LV. Dropping the last guard of an LV removes its mapping (errors are logged;
/// use [`ActiveLv::release`] to see them).
#[derive(Debug)]
#[must_use = "dropping the guard deactivates the LV"]
pub struct ActiveLv {
    inner: Arc<Inner>,
    key: Key,
    path: PathBuf,
    size: u64,
    released: bool,
}

impl Activator {
    /// An activator for `mode`, keeping its records in `state_dir` (created if missing).
    /// `lvm` must run with activation disabled exactly when `mode` is loop-mapped.
    pub fn new(
        lvm: Lvm,
        mode: ActivationMode,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Activator, ActivationError> {
        if lvm.config().activation != mode.lvm_activation() {
            return Err(ActivationError::Config(format!(
                "mode {mode} needs LvmConfig::activation = {}",
                mode.lvm_activation()
            )));
        }
        let backend: Box<dyn Backend> = match mode {
            ActivationMode::DeviceMapper => Box::new(dm::DmBackend::new(lvm)),
            ActivationMode::LoopMapped => Box::new(loopdev::LoopBackend::new(lvm)),
        };
        Ok(Activator {
            inner: Arc::new(Inner {
                mode,
                backend,
                state: StateDir::open(state_dir.into())?,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The mode chosen at start-up.
    pub fn mode(&self) -> ActivationMode {
        self.inner.mode
    }

    /// Activates `vg/lv` (seen through `devs`), or joins its existing activation.
    pub fn activate(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &str,
    ) -> Result<ActiveLv, ActivationError> {
        check_name("VG", vg)?;
        check_name("LV", lv)?;
        let key = (vg.to_string(), lv.to_string());
        let slot = self.inner.slot(&key);
        let mut guard = lock(&slot);
        if guard.users == 0 {
            match self.inner.map(devs, vg, lv) {
                Ok(record) => guard.record = Some(record),
                Err(e) => {
                    drop(guard);
                    self.inner.forget_if_idle(&key, &slot);
                    return Err(e);
                }
            }
        }
        let (path, size) = match &guard.record {
            Some(Record {
                device: Some(device),
                size,
                ..
            }) => (device.clone(), *size),
            _ => unreachable!("a slot with users holds an attached record"),
        };
        guard.users += 1;
        Ok(ActiveLv {
            inner: Arc::clone(&self.inner),
            path,
            size,
            key,
            released: false,
        })
    }

    /// After another host changed `vg/lv` (lvextend): device-mapper reloads the mapping
    /// (`lvchange --refresh`); loop-mapped checks that the recorded extents still are the
    /// LV's and fails with [`ActivationError::Changed`] otherwise. Not active here: nothing
    /// to do, the next activation reads fresh metadata.
    pub fn refresh(&self, vg: &str, lv: &str) -> Result<(), ActivationError> {
        let key = (vg.to_string(), lv.to_string());
        let Some(slot) = lock(&self.inner.slots).get(&key).cloned() else {
            return Ok(());
        };
        let guard = lock(&slot);
        match (&guard.record, guard.users) {
            (Some(record), users) if users > 0 => self.inner.backend.refresh(record),
            _ => Ok(()),
        }
    }

    /// How many guards of `vg/lv` are alive in this process.
    pub fn users(&self, vg: &str, lv: &str) -> usize {
        let key = (vg.to_string(), lv.to_string());
        let slot = lock(&self.inner.slots).get(&key).cloned();
        slot.map_or(0, |s| lock(&s).users)
    }

    /// Undoes the mappings recorded by processes that died without undoing them (or by an
    /// earlier [`Activator`] of this process that was leaked). Records of live activations,
    /// this activator's or another live process's, are left alone.
    pub fn cleanup_stale(&self) -> Result<CleanupReport, ActivationError> {
        // Every LV with a slot is ours and live, also one still being activated (its
        // record may be on disk already). The table stays locked so no activation starts
        // meanwhile.
        let slots = lock(&self.inner.slots);
        let live: Vec<Key> = slots.keys().cloned().collect();
        let report = self
            .inner
            .state
            .cleanup(&live, |record| self.inner.backend.cleanup(record));
        drop(slots);
        report
    }
}

impl Inner {
    fn slot(&self, key: &Key) -> Arc<Mutex<Slot>> {
        Arc::clone(lock(&self.slots).entry(key.clone()).or_default())
    }

    /// Plans, records, attaches and records the device; undoes the record on failure.
    fn map(&self, devs: &Devices, vg: &str, lv: &str) -> Result<Record, ActivationError> {
        let mapping = self.backend.plan(devs, vg, lv)?;
        let mut record = Record::new(vg, lv, devs, mapping);
        self.state.write(&record)?;
        match self.backend.attach(devs, vg, lv, &record.mapping) {
            Ok((device, size)) => {
                record.device = Some(device);
                record.size = size;
                if let Err(e) = self.state.write(&record) {
                    // Without a record a crash would leak the mapping; better not to keep it.
                    let _ = self.backend.detach(&record);
                    let _ = self.state.remove(vg, lv);
                    return Err(e);
                }
                Ok(record)
            }
            Err(e) => {
                let _ = self.state.remove(vg, lv);
                Err(e)
            }
        }
    }

    fn release(&self, key: &Key) -> Result<(), ActivationError> {
        let slot = self.slot(key);
        let result = {
            let mut guard = lock(&slot);
            guard.users = guard.users.saturating_sub(1);
            if guard.users > 0 {
                return Ok(());
            }
            let result = match guard.record.take() {
                Some(record) => self
                    .backend
                    .detach(&record)
                    .and_then(|()| self.state.remove(&record.vg, &record.lv)),
                None => Ok(()),
            };
            if result.is_err() {
                // Keep the record: cleanup_stale at the next start retries it.
                tracing::error!(vg = %key.0, lv = %key.1, "deactivation failed; record kept");
            }
            result
        };
        self.forget_if_idle(key, &slot);
        result
    }

    /// Drops an unused slot from the table unless another thread picked it up meanwhile:
    /// such a thread holds a clone of the Arc, and clones are only taken under the table
    /// lock held here.
    fn forget_if_idle(&self, key: &Key, slot: &Arc<Mutex<Slot>>) {
        let mut slots = lock(&self.slots);
        if Arc::strong_count(slot) == 2 && lock(slot).users == 0 {
            slots.remove(key);
        }
    }
}

impl ActiveLv {
    /// The block device: `/dev/<vg>/<lv>` or `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the device in bytes (the LV's size).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn vg(&self) -> &str {
        &self.key.0
    }

    pub fn lv(&self) -> &str {
        &self.key.1
    }

    /// Drops this user; the last one removes the mapping and reports how that went.
    pub fn release(mut self) -> Result<(), ActivationError> {
        self.released = true;
        self.inner.release(&self.key)
    }
}

impl Drop for ActiveLv {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.inner.release(&self.key) {
            tracing::error!(vg = %self.key.0, lv = %self.key.1, error = %e, "deactivation failed");
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the counts it
/// guards are still consistent (every change is a single store).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip() {
        for mode in [ActivationMode::DeviceMapper, ActivationMode::LoopMapped] {
            assert_eq!(mode.as_str().parse::<ActivationMode>().unwrap(), mode);
        }
        assert_eq!("dm".parse::<ActivationMode>().unwrap_err().code(), "Config");
    }

    #[test]
    fn probe_without_usable_control_is_loop_mapped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ActivationMode::probe_control(&dir.path().join("control")),
            ActivationMode::LoopMapped
        );
    }

    #[test]
    fn new_refuses_lvm_config_of_the_other_mode() {
        let dir = tempfile::tempdir().unwrap();
        let lvm = Lvm::new(crate::LvmConfig::default()).unwrap();
        let err = Activator::new(lvm, ActivationMode::LoopMapped, dir.path()).unwrap_err();
        assert_eq!(err.code(), "Config");
    }
}
