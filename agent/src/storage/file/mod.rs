//! The file domain backend: oVirt's V5 file layout ([`layout`]), volumes as files ([`volume`]).
//!
//! A volume is `images/<img>/<vol>` (data), `<vol>.meta` (metadata, replaced durably) and
//! `<vol>.lease` (its lease at offset 0); it exists once its `.meta` exists. An image marked for
//! removal is its directory renamed to `_remove_me_<img>` or `_remove_me_ZERO_<img>`.
//!
//! Shared storage can be written by anyone who can mount it, so every path the agent writes,
//! wipes or removes is checked to lie inside the domain first ([`FileDomain::check_contained`]).

pub mod layout;
pub mod paths;
pub mod volume;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sdm_lease::{Lease, LeaseBackend};
use sdm_proto::{Preallocation, Uuid, VolumeFormat};

use self::paths::{
    is_temp_file_name, is_volume_file_name, list_volumes_in, volume_paths_in, VolumePaths,
};
use super::backend::{
    Creation, DomainBackend, DomainKind, LeaseLocation, Leftover, Prepared, VolumeSize,
};
use super::md::{DomainMetadata, VolumeMetadata};
use super::StorageError;
use crate::durable;

/// A file domain: `<root>/<sd_id>`.
#[derive(Debug)]
pub struct FileDomain {
    sd_id: Uuid,
    /// The domain directory, canonical.
    dir: PathBuf,
}

impl FileDomain {
    /// Opens the file domain whose directory is `dir` (see [`layout::open`]).
    pub fn open(dir: &Path) -> Result<(FileDomain, DomainMetadata), StorageError> {
        let (sd_id, dir, md) = layout::open(dir)?;
        Ok((FileDomain { sd_id, dir }, md))
    }

    /// `images/`.
    fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// `images/<img>`.
    fn image_dir(&self, img: &Uuid) -> PathBuf {
        self.images_dir().join(img.as_str())
    }

    /// A leftover's directory.
    fn leftover_dir(&self, l: &Leftover) -> PathBuf {
        self.images_dir().join(l.name())
    }

    /// The files of a volume of a live image.
    pub fn volume_paths(&self, img: &Uuid, vol: &Uuid) -> VolumePaths {
        volume_paths_in(&self.image_dir(img), vol)
    }

    /// Checks that `path` (a volume's data file, or an image directory) really lies inside
    /// this domain before the agent writes to it: it, and every directory above it, may be a
    /// link only within the domain — except that a volume may be a link to a block device, as
    /// oVirt block domains link images to logical volumes. Anything else is refused, so a link
    /// planted in a domain can never make the agent write, wipe or delete outside it.
    pub fn check_contained(&self, path: &Path) -> Result<(), StorageError> {
        let outside = |why: &str| {
            StorageError::Invalid(format!("{} {why}; refusing to use it", path.display()))
        };
        let (probe, exists) = match fs::symlink_metadata(path) {
            Ok(_) => (path.to_path_buf(), true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (path.parent().unwrap_or(path).to_path_buf(), false)
            }
            Err(e) => return Err(StorageError::io("stat", path, e)),
        };
        let real = probe
            .canonicalize()
            .map_err(|e| StorageError::io("resolve", &probe, e))?;
        if real.starts_with(&self.dir) {
            return Ok(());
        }
        if exists {
            let m = fs::metadata(&real).map_err(|e| StorageError::io("stat", &real, e))?;
            if m.file_type().is_block_device() {
                return Ok(());
            }
        }
        Err(outside(&format!(
            "resolves to {}, outside the domain",
            real.display()
        )))
    }

    /// A directory of `images/` that is a real directory inside the domain (not a link).
    pub fn check_real_dir(&self, dir: &Path) -> Result<(), StorageError> {
        let m = fs::symlink_metadata(dir).map_err(|e| StorageError::io("stat", dir, e))?;
        if !m.is_dir() {
            return Err(StorageError::Invalid(format!(
                "{} is not a directory (a link?); refusing to use it",
                dir.display()
            )));
        }
        self.check_contained(dir)
    }

    fn image_not_found(&self, img: &Uuid) -> StorageError {
        StorageError::ImageNotFound {
            sd: self.sd_id.to_string(),
            img: img.to_string(),
        }
    }
}

impl DomainBackend for FileDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::File
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn read_domain_metadata(&self) -> Result<DomainMetadata, StorageError> {
        let raw = durable::read_direct(&self.dir.join("dom_md").join("metadata"))?;
        DomainMetadata::parse(&raw)
    }

    fn lockspace_path(&self) -> PathBuf {
        self.dir.join("dom_md").join("ids")
    }

    fn space(&self) -> (u64, u64) {
        layout::statvfs_space(&self.dir).unwrap_or((0, 0))
    }

    fn supports_sparse(&self) -> bool {
        true
    }

    fn reads_zeros_when_new(&self, format: VolumeFormat, allocation: Preallocation) -> bool {
        // A freshly truncated raw sparse file reads as zeros.
        format == VolumeFormat::Raw && allocation == Preallocation::Sparse
    }

    fn list_images(&self) -> Result<Vec<Uuid>, StorageError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(id) = Uuid::parse(name) {
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(id);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn image_exists(&self, img: &Uuid) -> bool {
        self.image_dir(img).is_dir()
    }

    fn list_volumes(&self, img: &Uuid) -> Result<Vec<Uuid>, StorageError> {
        list_volumes_in(&self.image_dir(img)).map_err(|e| match e {
            StorageError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                self.image_not_found(img)
            }
            e => e,
        })
    }

    fn orphans(&self, img: &Uuid) -> Result<Vec<String>, StorageError> {
        let dir = self.image_dir(img);
        let vols = list_volumes_in(&dir)?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or("");
            let owned = Uuid::parse(stem).is_ok_and(|u| vols.contains(&u));
            let is_temp = is_temp_file_name(&name);
            if (!owned || is_temp) && is_volume_file_name(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn half_made_volume_leases(
        &self,
        img: &Uuid,
    ) -> Result<Vec<(Uuid, LeaseLocation)>, StorageError> {
        let dir = self.image_dir(img);
        let vols = list_volumes_in(&dir)?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
            let Some(vol) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".lease"))
                .and_then(|stem| Uuid::parse(stem).ok())
            else {
                continue;
            };
            // A regular file only: a link planted in the domain is not a lease of ours.
            if vols.contains(&vol) || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            out.push((
                vol,
                LeaseLocation {
                    path: entry.path(),
                    offset: 0,
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn is_orphan_name(&self, name: &str) -> bool {
        is_volume_file_name(name)
    }

    fn remove_orphan(&self, img: &Uuid, name: &str) -> Result<(), StorageError> {
        if !is_volume_file_name(name) {
            return Err(StorageError::Invalid("not a volume file name".into()));
        }
        let dir = self.image_dir(img);
        let stem = Uuid::parse(&name[..36]).map_err(StorageError::Invalid)?;
        let is_temp = is_temp_file_name(name);
        if !is_temp && list_volumes_in(&dir)?.contains(&stem) {
            return Err(StorageError::Invalid(format!(
                "{name} belongs to a volume now"
            )));
        }
        let p = dir.join(name);
        fs::remove_file(&p).map_err(|e| StorageError::io("remove", &p, e))?;
        durable::sync_dir(&dir)?;
        tracing::info!(sd_id = %self.sd_id, file = %p.display(), "removed orphaned file");
        Ok(())
    }

    fn read_metadata(&self, img: &Uuid, vol: &Uuid) -> Result<VolumeMetadata, StorageError> {
        let paths = self.volume_paths(img, vol);
        volume::read_metadata_at(&paths.meta).map_err(|e| match e {
            StorageError::Durable(d) if d.is_not_found() => {
                if self.image_dir(img).is_dir() {
                    StorageError::VolumeNotFound {
                        sd: self.sd_id.to_string(),
                        img: img.to_string(),
                        vol: vol.to_string(),
                    }
                } else {
                    self.image_not_found(img)
                }
            }
            e => e,
        })
    }

    fn write_metadata(
        &self,
        img: &Uuid,
        vol: &Uuid,
        md: &VolumeMetadata,
    ) -> Result<(), StorageError> {
        volume::store_metadata(&self.volume_paths(img, vol), md)
    }

    fn volume_lease(&self, img: &Uuid, vol: &Uuid) -> Result<LeaseLocation, StorageError> {
        Ok(LeaseLocation {
            path: self.volume_paths(img, vol).lease,
            offset: 0,
        })
    }

    fn prepare(&self, img: &Uuid, vol: &Uuid) -> Result<Prepared, StorageError> {
        let data = self.volume_paths(img, vol).data;
        self.check_contained(&data)?;
        Ok(Prepared::at(data))
    }

    fn volume_size(&self, img: &Uuid, vol: &Uuid) -> Result<VolumeSize, StorageError> {
        let data = self.volume_paths(img, vol).data;
        let st = fs::metadata(&data).map_err(|e| StorageError::io("stat", &data, e))?;
        Ok(VolumeSize {
            apparent: st.len(),
            allocated: st.blocks() * 512,
        })
    }

    fn grow_raw(&self, img: &Uuid, vol: &Uuid, capacity: u64) -> Result<(), StorageError> {
        let data = self.volume_paths(img, vol).data;
        self.check_contained(&data)?;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .map_err(|e| StorageError::io("open", &data, e))?;
        f.set_len(capacity)
            .and_then(|_| f.sync_all())
            .map_err(|e| StorageError::io("extend", &data, e))
    }

    fn reserve(&self, _img: &Uuid, _vol: &Uuid, _bytes: u64) -> Result<(), StorageError> {
        // A file grows as it is written.
        Ok(())
    }

    fn chain_dir(&self, img: &Uuid) -> PathBuf {
        self.image_dir(img)
    }

    fn create_volume(
        &self,
        leases: &dyn LeaseBackend,
        c: &Creation<'_>,
    ) -> Result<(), StorageError> {
        let img_dir = self.image_dir(c.img);
        if !img_dir.exists() {
            volume::make_image_dir(&img_dir)?;
            durable::sync_dir(&self.images_dir())?;
        }
        self.check_real_dir(&img_dir)?;
        volume::create(&self.sd_id, &img_dir, leases, c)
    }

    fn remove_volume(&self, img: &Uuid, vol: &Uuid, lease: Lease) -> Result<(), StorageError> {
        volume::remove(&self.image_dir(img), vol, lease)
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    fn read_checkpoint(&self, img: &Uuid, vol: &Uuid) -> Result<Option<Vec<u8>>, StorageError> {
        // Past the page cache: on NFS the record may have been replaced by another host.
        let p = self.volume_paths(img, vol).checkpoint;
        match durable::read_direct(&p) {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write_checkpoint(&self, img: &Uuid, vol: &Uuid, data: &[u8]) -> Result<(), StorageError> {
        let p = self.volume_paths(img, vol).checkpoint;
        self.check_contained(&p)?;
        Ok(durable::replace(&p, data)?)
    }

    fn remove_checkpoint(&self, img: &Uuid, vol: &Uuid) -> Result<(), StorageError> {
        let p = self.volume_paths(img, vol).checkpoint;
        match fs::remove_file(&p) {
            Ok(()) => Ok(durable::sync_dir(&self.image_dir(img))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove", &p, e)),
        }
    }

    fn mark_for_removal(&self, img: &Uuid, wipe: bool) -> Result<Leftover, StorageError> {
        let l = Leftover::of(img, wipe);
        let (dir, target) = (self.image_dir(img), self.leftover_dir(&l));
        fs::rename(&dir, &target).map_err(|e| StorageError::io("rename", &dir, e))?;
        durable::sync_dir(&self.images_dir())?;
        Ok(l)
    }

    fn list_leftovers(&self) -> Result<Vec<Leftover>, StorageError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
            if let Some(l) = entry.file_name().to_str().and_then(Leftover::found) {
                out.push(l);
            }
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    fn leftover_exists(&self, l: &Leftover) -> bool {
        self.leftover_dir(l).is_dir()
    }

    fn check_leftover(&self, l: &Leftover) -> Result<(), StorageError> {
        self.check_real_dir(&self.leftover_dir(l))
    }

    fn leftover_volumes(&self, l: &Leftover) -> Result<Vec<(Uuid, LeaseLocation)>, StorageError> {
        let dir = self.leftover_dir(l);
        Ok(list_volumes_in(&dir)?
            .into_iter()
            .map(|v| {
                let path = volume_paths_in(&dir, &v).lease;
                (v, LeaseLocation { path, offset: 0 })
            })
            .collect())
    }

    fn wipe_targets(&self, l: &Leftover) -> Result<Vec<(Prepared, u64)>, StorageError> {
        let dir = self.leftover_dir(l);
        self.check_real_dir(&dir)?;
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let e = e.map_err(|e| StorageError::io("list", &dir, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Anything that is not metadata, a lease or a temporary file holds data.
            if name.ends_with(".meta")
                || name.ends_with(".lease")
                || name.ends_with(".checkpoint")
                || is_temp_file_name(&name)
            {
                continue;
            }
            // A link that leads outside the domain (other than to a block device) is not ours
            // to wipe: it is skipped here and only the link itself is removed with the
            // directory.
            if let Err(e) = self.check_contained(&e.path()) {
                tracing::warn!(error = %e, "not wiping a volume that leads outside the domain");
                continue;
            }
            // Follow links: a volume may be a link to a block device, as on oVirt block domains.
            let md =
                fs::metadata(e.path()).map_err(|err| StorageError::io("stat", e.path(), err))?;
            if md.is_file() || md.file_type().is_block_device() {
                out.push((Prepared::at(e.path()), md.len()));
            }
        }
        out.sort_by(|a, b| a.0.path().cmp(b.0.path()));
        Ok(out)
    }

    fn purge(&self, l: &Leftover) -> Result<(), StorageError> {
        let dir = self.leftover_dir(l);
        self.check_real_dir(&dir)?;
        // Links inside are removed, never followed.
        fs::remove_dir_all(&dir).map_err(|e| StorageError::io("remove", &dir, e))?;
        durable::sync_dir(&self.images_dir())?;
        Ok(())
    }

    fn remove_stale_temp_files(&self, older_than: Duration) -> Result<usize, StorageError> {
        let mut dirs = vec![self.dir.join("dom_md")];
        let images = self.images_dir();
        for e in fs::read_dir(&images).map_err(|e| StorageError::io("list", &images, e))? {
            let e = e.map_err(|e| StorageError::io("list", &images, e))?;
            // Real directories only: a link planted in the domain is not followed.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        let mut removed = 0;
        for dir in dirs {
            removed += layout::remove_stale_temp_files_in(&dir, older_than)?;
        }
        if removed > 0 {
            tracing::info!(sd_id = %self.sd_id, removed, "removed temporary files of metadata writers that died");
        }
        Ok(removed)
    }
}
