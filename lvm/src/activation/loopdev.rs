//! Loop-mapped activation: an LV's extents as a loop device over its PV.
//!
//! The mapping is computed from LVM metadata: a linear LV of one segment occupies the
//! physical extents `first..=last` of one PV, so its bytes are the PV's bytes from
//! `pe_start + first × extent_size` for `extent_count × extent_size`. `losetup --offset
//! --sizelimit --direct-io=on` exposes exactly that range. Loop devices are found again
//! through sysfs (`/sys/block/loopN/loop/{backing_file,offset,sizelimit}`), which is how a
//! stale one is recognised before it is detached.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::state::{Mapping, Record};
use super::{ActivationError, Backend};
use crate::exec;
use crate::lvm::Lvm;
use crate::names::Devices;

#[derive(Debug)]
pub(crate) struct LoopBackend {
    lvm: Lvm,
}

impl LoopBackend {
    pub fn new(lvm: Lvm) -> LoopBackend {
        LoopBackend { lvm }
    }

    fn losetup(&self, args: &[String]) -> Result<String, ActivationError> {
        let cfg = self.lvm.config();
        let out = exec::run(&cfg.losetup_path, args, cfg.timeout)?;
        if !out.success() {
            return Err(ActivationError::Losetup(out.failure().to_string()));
        }
        Ok(out.stdout)
    }

    fn detach_device(&self, device: &Path) -> Result<(), ActivationError> {
        self.losetup(&["--detach".to_string(), device.display().to_string()])
            .map(drop)
    }
}

impl Backend for LoopBackend {
    fn plan(&self, devs: &Devices, vg: &str, lv: &str) -> Result<Mapping, ActivationError> {
        let info = self.lvm.lv(devs, vg, lv)?;
        let [segment] = info.segments.as_slice() else {
            return Err(ActivationError::MultiSegment {
                vg: vg.to_string(),
                lv: lv.to_string(),
                segments: info.segments.len(),
            });
        };
        let unsupported = || ActivationError::Unsupported {
            vg: vg.to_string(),
            lv: lv.to_string(),
            segtype: segment.segtype.clone(),
            stripes: segment.stripes,
        };
        let [range] = segment.ranges.as_slice() else {
            return Err(unsupported());
        };
        if segment.segtype != "linear"
            || segment.stripes != 1
            || range.last + 1 - range.first != segment.extent_count
        {
            return Err(unsupported());
        }
        let pv = self
            .lvm
            .pvs(devs)?
            .into_iter()
            .find(|pv| pv.name == range.pv)
            .ok_or_else(|| ActivationError::Changed {
                vg: vg.to_string(),
                lv: lv.to_string(),
                detail: format!("its PV {} is not among the devices", range.pv.display()),
            })?;
        let size = segment.extent_count * info.extent_size;
        if size != info.size {
            return Err(ActivationError::Changed {
                vg: vg.to_string(),
                lv: lv.to_string(),
                detail: format!("segment covers {size} bytes, LV has {}", info.size),
            });
        }
        Ok(Mapping::Loop {
            pv: range.pv.clone(),
            offset: pv.pe_start + range.first * info.extent_size,
            size,
        })
    }

    fn attach(
        &self,
        _devs: &Devices,
        vg: &str,
        lv: &str,
        m: &Mapping,
    ) -> Result<(PathBuf, u64), ActivationError> {
        let Mapping::Loop { pv, offset, size } = m else {
            return Err(ActivationError::Config(
                "loop backend got a dm mapping".into(),
            ));
        };
        let out = self.losetup(&[
            "--find".to_string(),
            "--show".to_string(),
            "--direct-io=on".to_string(),
            "--offset".to_string(),
            offset.to_string(),
            "--sizelimit".to_string(),
            size.to_string(),
            pv.display().to_string(),
        ])?;
        let device = PathBuf::from(out.trim());
        if !device.starts_with("/dev") {
            return Err(ActivationError::Losetup(format!(
                "losetup --show printed {out:?}"
            )));
        }
        let actual = device_size(&device).unwrap_or(0);
        if actual != *size {
            let _ = self.detach_device(&device);
            return Err(ActivationError::SizeMismatch {
                vg: vg.to_string(),
                lv: lv.to_string(),
                device,
                expected: *size,
                actual,
            });
        }
        if read_sys(&device, "loop/dio").as_deref() != Some("1") {
            tracing::warn!(device = %device.display(), pv = %pv.display(),
                "loop device without direct I/O; the PV does not support it");
        }
        Ok((device, actual))
    }

    fn detach(&self, record: &Record) -> Result<(), ActivationError> {
        let (Some(device), Mapping::Loop { pv, offset, size }) = (&record.device, &record.mapping)
        else {
            return Ok(());
        };
        // Someone else detached it (and the number may serve another mapping now).
        if !maps(device, pv, *offset, *size) {
            tracing::warn!(device = %device.display(), vg = %record.vg, lv = %record.lv,
                "loop device no longer maps the LV; not detaching it");
            return Ok(());
        }
        self.detach_device(device)
    }

    fn cleanup(&self, record: &Record) -> Result<Vec<PathBuf>, ActivationError> {
        let Mapping::Loop { pv, offset, size } = &record.mapping else {
            return Err(ActivationError::BadRecord {
                path: PathBuf::from(format!("{}/{}", record.vg, record.lv)),
                detail: "device-mapper record in loop-mapped mode".into(),
            });
        };
        // The recorded device if it still maps our range; without one (killed between
        // attach and record), every loop device mapping exactly that range.
        let candidates = match &record.device {
            Some(device) => vec![device.clone()],
            None => loop_devices(),
        };
        let mut removed = Vec::new();
        for device in candidates {
            if maps(&device, pv, *offset, *size) {
                self.detach_device(&device)?;
                removed.push(device);
            }
        }
        Ok(removed)
    }

    fn refresh(&self, record: &Record) -> Result<(), ActivationError> {
        let devs = Devices::new(&record.devices)?;
        let now = self.plan(&devs, &record.vg, &record.lv)?;
        if now == record.mapping {
            return Ok(());
        }
        Err(ActivationError::Changed {
            vg: record.vg.clone(),
            lv: record.lv.clone(),
            detail: format!("mapped {:?}, LVM now says {now:?}", record.mapping),
        })
    }
}

/// All bound loop devices (`/dev/loopN` whose sysfs has a backing file).
pub(crate) fn loop_devices() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.starts_with("loop"))
        .filter(|name| {
            Path::new("/sys/block")
                .join(name)
                .join("loop/backing_file")
                .exists()
        })
        .map(|name| PathBuf::from("/dev").join(name))
        .collect();
    out.sort();
    out
}

/// The loop devices whose backing file is the block device `pv` (any range).
#[cfg_attr(not(feature = "test-support"), allow(dead_code))]
pub(crate) fn loop_devices_over(pv: &Path) -> Vec<PathBuf> {
    let Some(rdev) = rdev(pv) else {
        return Vec::new();
    };
    loop_devices()
        .into_iter()
        .filter(|d| backing_rdev(d) == Some(rdev))
        .collect()
}

/// Whether loop device `device` maps `size` bytes of block device `pv` from `offset`.
fn maps(device: &Path, pv: &Path, offset: u64, size: u64) -> bool {
    let num = |attr: &str| read_sys(device, attr).and_then(|v| v.parse::<u64>().ok());
    rdev(pv).is_some()
        && backing_rdev(device) == rdev(pv)
        && num("loop/offset") == Some(offset)
        && num("loop/sizelimit") == Some(size)
}

fn backing_rdev(device: &Path) -> Option<u64> {
    let backing = read_sys(device, "loop/backing_file")?;
    rdev(Path::new(&backing))
}

/// Device number of a block device node; `None` for anything else.
fn rdev(path: &Path) -> Option<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = fs::metadata(path).ok()?;
    meta.file_type().is_block_device().then(|| meta.rdev())
}

/// `/sys/block/<name>/<attr>`, trimmed.
fn read_sys(device: &Path, attr: &str) -> Option<String> {
    let name = device.file_name()?;
    let text = fs::read_to_string(Path::new("/sys/block").join(name).join(attr)).ok()?;
    Some(text.trim().to_string())
}

/// Size in bytes of a block device, from `/sys/dev/block/<major>:<minor>/size` (sectors of
/// 512 bytes whatever the logical block size).
pub(crate) fn device_size(device: &Path) -> Option<u64> {
    let rdev = rdev(device)?;
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let text = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/size")).ok()?;
    text.trim().parse::<u64>().ok().map(|sectors| sectors * 512)
}
