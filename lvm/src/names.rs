//! Checked inputs: VG and LV names, and the device set every command is limited to.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::LvmError;

/// LVM's limit for VG and LV names.
const MAX_NAME: usize = 127;

/// Checks a VG or LV name against LVM's rules (`[A-Za-z0-9+_.-]`, no leading `-`, not `.`
/// or `..`, at most 127 bytes), so a name never turns into an option or a path.
pub fn check_name(kind: &str, name: &str) -> Result<(), LvmError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'_' | b'.' | b'-'));
    if name.is_empty()
        || name.len() > MAX_NAME
        || !ok_chars
        || name.starts_with('-')
        || name == "."
        || name == ".."
    {
        return Err(LvmError::InvalidArgument(format!(
            "{kind} name {name:?} is not a valid LVM name"
        )));
    }
    Ok(())
}

/// The devices a command may see, passed as `--devices a,b,…`: LVM looks at nothing else,
/// so commands for one domain never scan the host's other disks (nor a parallel test's).
///
/// Paths are absolute, free of `,` (the list separator), valid UTF-8, sorted and unique.
/// The set is never empty: an empty `--devices` would mean "scan everything".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Devices(Vec<PathBuf>);

impl Devices {
    /// Validates and normalises a list of device paths.
    pub fn new<I, P>(paths: I) -> Result<Devices, LvmError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut out: Vec<PathBuf> = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let text = p.to_str().ok_or_else(|| {
                LvmError::InvalidArgument(format!("device path {} is not UTF-8", p.display()))
            })?;
            if !p.is_absolute() || text.contains(',') || text.contains('"') {
                return Err(LvmError::InvalidArgument(format!(
                    "device path {text:?} must be absolute and free of ',' and '\"'"
                )));
            }
            out.push(p.to_path_buf());
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(LvmError::InvalidArgument(
                "an empty device list would let LVM scan every disk of the host".into(),
            ));
        }
        Ok(Devices(out))
    }

    /// The paths, sorted.
    pub fn paths(&self) -> &[PathBuf] {
        &self.0
    }

    /// Whether `path` is one of the devices.
    pub fn contains(&self, path: &Path) -> bool {
        self.0.iter().any(|p| p == path)
    }

    /// Both sets together.
    pub fn union(&self, other: &Devices) -> Devices {
        let mut all = self.0.clone();
        all.extend(other.0.iter().cloned());
        all.sort();
        all.dedup();
        Devices(all)
    }

    /// Fails with [`LvmError::NotBlockDevice`] unless every path is a block device.
    pub fn require_block_devices(&self) -> Result<(), LvmError> {
        for path in &self.0 {
            let meta = std::fs::metadata(path).map_err(|source| LvmError::Device {
                path: path.clone(),
                source,
            })?;
            if !meta.file_type().is_block_device() {
                return Err(LvmError::NotBlockDevice { path: path.clone() });
            }
        }
        Ok(())
    }

    /// Logical and physical block size of each device, from sysfs (the backend enforces
    /// VDSM's rule: logical 512, physical ≥ logical, all alike).
    pub fn block_sizes(&self) -> Result<Vec<BlockSizes>, LvmError> {
        self.0
            .iter()
            .map(|path| {
                Ok(BlockSizes {
                    path: path.clone(),
                    logical: queue_attr(path, "logical_block_size")?,
                    physical: queue_attr(path, "physical_block_size")?,
                })
            })
            .collect()
    }

    /// The value of `--devices`.
    pub(crate) fn arg(&self) -> String {
        self.to_string()
    }
}

/// Block sizes of one device, see [`Devices::block_sizes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSizes {
    pub path: PathBuf,
    pub logical: u32,
    pub physical: u32,
}

/// `queue/<attr>` of a block device in sysfs; a partition has none of its own and uses its
/// disk's.
fn queue_attr(path: &Path, attr: &str) -> Result<u32, LvmError> {
    let device_err = |source| LvmError::Device {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(device_err)?;
    if !meta.file_type().is_block_device() {
        return Err(LvmError::NotBlockDevice {
            path: path.to_path_buf(),
        });
    }
    let rdev = meta.rdev();
    let dir = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    for queue in [dir.join("queue"), dir.join("../queue")] {
        if let Ok(text) = std::fs::read_to_string(queue.join(attr)) {
            if let Ok(n) = text.trim().parse() {
                return Ok(n);
            }
        }
    }
    Err(device_err(std::io::Error::other(format!(
        "no queue/{attr} under {}",
        dir.display()
    ))))
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            // Checked to be UTF-8 in `new`.
            f.write_str(&p.to_string_lossy())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_name_accepts_uuids_and_special_lv_names() {
        for name in [
            "6e2d1b2a-0c6f-4b8e-9f3a-2d7c5e1f0a9b",
            "metadata",
            "a+b_c.d",
        ] {
            check_name("VG", name).unwrap();
        }
    }

    #[test]
    fn check_name_refuses_options_paths_and_oversize() {
        for name in ["", "-n", ".", "..", "a/b", "a b", "a,b", &"x".repeat(128)] {
            assert_eq!(
                check_name("LV", name).unwrap_err().code(),
                "InvalidArgument"
            );
        }
    }

    #[test]
    fn devices_sorted_unique_and_joined() {
        let d = Devices::new(["/dev/loop3", "/dev/loop1", "/dev/loop3"]).unwrap();
        assert_eq!(d.arg(), "/dev/loop1,/dev/loop3");
        assert!(d.contains(Path::new("/dev/loop1")));
    }

    #[test]
    fn devices_refuses_empty_relative_and_comma() {
        let empty: [&str; 0] = [];
        for bad in [
            Devices::new(empty),
            Devices::new(["dev/loop1"]),
            Devices::new(["/dev/a,b"]),
        ] {
            assert_eq!(bad.unwrap_err().code(), "InvalidArgument");
        }
    }

    #[test]
    fn require_block_devices_refuses_regular_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let d = Devices::new([file.path()]).unwrap();
        assert_eq!(
            d.require_block_devices().unwrap_err().code(),
            "NotBlockDevice"
        );
        let missing = Devices::new(["/nonexistent/disk"]).unwrap();
        assert_eq!(
            missing.require_block_devices().unwrap_err().code(),
            "Device"
        );
    }
}
