//! Inputs of the LVM commands that create and size things.

use crate::error::LvmError;

/// `pvcreate` settings; the default is VDSM's (`--metadatasize 128m --metadatacopies 2
/// --metadataignore y`: two metadata copies per PV, ignored until
/// [`Lvm::pv_enable_metadata`] turns them on for the first PV only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvCreateOptions {
    /// Metadata area size in MiB; 0 leaves LVM's defaults (and the other two fields unused).
    pub metadata_size_mib: u64,
    pub metadata_copies: u32,
    pub metadata_ignore: bool,
    /// `-y -ff`: re-initialise a device that looks used. Off unless the caller was told to.
    pub force: bool,
}

impl Default for PvCreateOptions {
    fn default() -> Self {
        PvCreateOptions {
            metadata_size_mib: 128,
            metadata_copies: 2,
            metadata_ignore: true,
            force: false,
        }
    }
}

/// `vgcreate` settings; the default is VDSM's 128 MiB extents and no tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgCreateOptions {
    pub extent_size_mib: u64,
    /// Tags added at creation (VDSM: `RHAT_storage_domain_UNREADY`). Already encoded.
    pub tags: Vec<String>,
}

impl Default for VgCreateOptions {
    fn default() -> Self {
        VgCreateOptions {
            extent_size_mib: 128,
            tags: Vec::new(),
        }
    }
}

/// An LV size for `lvcreate`/`lvextend`. LVM rounds up to whole extents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvSize {
    /// `--size <n>m`.
    Mib(u64),
    /// `--extents <n>`.
    Extents(u64),
}

impl LvSize {
    pub(crate) fn args(self) -> Result<[String; 2], LvmError> {
        match self {
            LvSize::Mib(0) | LvSize::Extents(0) => {
                Err(LvmError::InvalidArgument("an LV size must not be 0".into()))
            }
            LvSize::Mib(n) => Ok(["--size".into(), format!("{n}m")]),
            LvSize::Extents(n) => Ok(["--extents".into(), n.to_string()]),
        }
    }

    /// Bytes after LVM's rounding up to `extent_size`.
    pub fn bytes(self, extent_size: u64) -> u64 {
        match self {
            LvSize::Mib(n) => (n << 20).div_ceil(extent_size) * extent_size,
            LvSize::Extents(n) => n * extent_size,
        }
    }
}

/// What [`Lvm::lvcreate`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvCreate {
    pub name: String,
    pub size: LvSize,
    /// Tags, already encoded (e.g. `OVIRT_VOL_INITIALIZING`).
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lv_size_args_and_rounding() {
        assert_eq!(LvSize::Mib(300).args().unwrap(), ["--size", "300m"]);
        assert_eq!(LvSize::Extents(3).args().unwrap(), ["--extents", "3"]);
        assert!(LvSize::Mib(0).args().is_err());
        let ext = 128 << 20;
        assert_eq!(LvSize::Mib(300).bytes(ext), 3 * ext);
        assert_eq!(LvSize::Mib(256).bytes(ext), 2 * ext);
        assert_eq!(LvSize::Extents(2).bytes(ext), 2 * ext);
    }
}
