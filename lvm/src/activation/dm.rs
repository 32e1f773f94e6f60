//! Device-mapper activation: `lvchange --activate y|n` and `--refresh`, as VDSM does.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::loopdev::device_size;
use super::state::{Mapping, Record};
use super::{ActivationError, Backend};
use crate::error::LvmError;
use crate::lvm::Lvm;
use crate::names::Devices;

/// How long to wait for `/dev/<vg>/<lv>` after a successful `lvchange -ay` (udev may make
/// the link a moment later).
const LINK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct DmBackend {
    lvm: Lvm,
}

impl DmBackend {
    pub fn new(lvm: Lvm) -> DmBackend {
        DmBackend { lvm }
    }
}

fn lv_device(vg: &str, lv: &str) -> PathBuf {
    Path::new("/dev").join(vg).join(lv)
}

impl Backend for DmBackend {
    fn plan(&self, _devs: &Devices, _vg: &str, _lv: &str) -> Result<Mapping, ActivationError> {
        Ok(Mapping::DeviceMapper)
    }

    fn attach(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &str,
        _m: &Mapping,
    ) -> Result<(PathBuf, u64), ActivationError> {
        let device = lv_device(vg, lv);
        // Active already (another user outside this process, or a leftover): make sure the
        // table matches the metadata, as VDSM's activateLVs does.
        if device.exists() {
            self.lvm.lvchange_refresh(devs, vg, &[lv])?;
        } else {
            self.lvm.lvchange_activate(devs, vg, &[lv], true)?;
        }
        let until = Instant::now() + LINK_WAIT;
        while !device.exists() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        let checked = self
            .lvm
            .lv(devs, vg, lv)
            .map_err(ActivationError::from)
            .and_then(|info| {
                let actual = device_size(&device).unwrap_or(0);
                if actual == info.size {
                    Ok(actual)
                } else {
                    Err(ActivationError::SizeMismatch {
                        vg: vg.to_string(),
                        lv: lv.to_string(),
                        device: device.clone(),
                        expected: info.size,
                        actual,
                    })
                }
            });
        match checked {
            Ok(size) => Ok((device, size)),
            Err(e) => {
                // No record will describe this activation: undo it now.
                let _ = self.lvm.lvchange_activate(devs, vg, &[lv], false);
                Err(e)
            }
        }
    }

    fn detach(&self, record: &Record) -> Result<(), ActivationError> {
        let devs = Devices::new(&record.devices)?;
        self.lvm
            .lvchange_activate(&devs, &record.vg, &[&record.lv], false)?;
        Ok(())
    }

    fn cleanup(&self, record: &Record) -> Result<Vec<PathBuf>, ActivationError> {
        let devs = Devices::new(&record.devices)?;
        match self
            .lvm
            .lvchange_activate(&devs, &record.vg, &[&record.lv], false)
        {
            Ok(()) => Ok(vec![lv_device(&record.vg, &record.lv)]),
            // Removed since (or its VG gone): nothing left to deactivate.
            Err(LvmError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn refresh(&self, record: &Record) -> Result<(), ActivationError> {
        let devs = Devices::new(&record.devices)?;
        self.lvm
            .lvchange_refresh(&devs, &record.vg, &[&record.lv])?;
        Ok(())
    }
}
