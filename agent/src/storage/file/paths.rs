//! Where a file domain keeps a volume: `<vol>`, `<vol>.meta`, `<vol>.lease` in its image
//! directory, and which names belong to volumes.

use std::fs;
use std::path::{Path, PathBuf};

use sdm_proto::{is_canonical_uuid, Uuid};

use crate::durable;
use crate::storage::StorageError;

/// Files of one volume.
#[derive(Clone, Debug)]
pub struct VolumePaths {
    /// Data file.
    pub data: PathBuf,
    /// `<vol>.meta`.
    pub meta: PathBuf,
    /// `<vol>.lease`.
    pub lease: PathBuf,
    /// `<vol>.checkpoint`: a copy into the volume, how far (`storage::checkpoint`).
    pub checkpoint: PathBuf,
}

/// The files of volume `vol` in image directory `dir`.
pub fn volume_paths_in(dir: &Path, vol: &Uuid) -> VolumePaths {
    VolumePaths {
        data: dir.join(vol.as_str()),
        meta: dir.join(format!("{vol}.meta")),
        lease: dir.join(format!("{vol}.lease")),
        checkpoint: dir.join(format!("{vol}.checkpoint")),
    }
}

/// Volumes (by `.meta` file) in an image directory.
pub fn list_volumes_in(dir: &Path) -> Result<Vec<Uuid>, StorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(stem) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".meta"))
        {
            if let Ok(id) = Uuid::parse(stem) {
                out.push(id);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A name a piece of a volume can have: `<uuid>`, `.meta`, `.lease`, `.checkpoint`, or a
/// temporary file.
pub fn is_volume_file_name(name: &str) -> bool {
    let stem = name.get(..36).unwrap_or("");
    is_canonical_uuid(stem)
        && (matches!(
            &name[36..],
            "" | ".meta" | ".lease" | ".checkpoint" | ".meta.new" | ".checkpoint.new" | ".new"
        ) || is_temp_file_name(name))
}

/// A temporary metadata file: one of [`durable::replace`]'s (`<vol>.meta.sdm-tmp-…`), or the
/// `.new` name older writers (and VDSM) use.
pub fn is_temp_file_name(name: &str) -> bool {
    name.ends_with(".new") || durable::is_temp_name(name)
}
