//! The block domain backend: oVirt's V5 block layout on LVM (`docs/block-domains.md`).
//!
//! A domain is a VG named by its UUID on shared LUNs ([`format`]); its metadata is sealed `MDT_`
//! VG tags ([`dommd`]). A volume is an LV named by its UUID, tagged `IU_<img>`, `PU_<parent>`,
//! `MD_<slot>` ([`layout`]); its metadata is the 512-byte slot at 1 MiB + slot × 8 KiB of the
//! `metadata` LV ([`direct`]), the checkpoint of a copy into it that slot's second 4 KiB
//! (`ckpt`), its lease the `leases` LV at (100 + slot) MiB ([`volumes`]).
//! Deleted images are retagged LVs ([`leftovers`]).
//!
//! Every LVM metadata change happens under the domain's metadata-writer lease ([`writer`]), so
//! any host can create and remove volumes, and every decision reads LVM metadata afresh. Bytes
//! are reached through activated LVs ([`links`]; `sdm_lvm::Activator`, device-mapper or
//! loop-mapped). The `metadata`, `ids` and `leases` LVs stay active while the domain is
//! attached: sanlock and the slot IO need stable devices.

mod ckpt;
pub mod direct;
pub mod dommd;
pub mod env;
mod error;
pub mod format;
pub mod layout;
mod leftovers;
pub mod links;
mod volumes;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdm_lease::{Lease, LeaseBackend};
use sdm_lvm::{ActiveLv, Devices, Lvm, LvmError};
use sdm_proto::{is_canonical_uuid, Preallocation, Uuid, VolumeFormat};

pub use self::env::BlockEnv;
pub use self::error::BlockError;
use self::layout::{
    lease_offset, slot_offset, VolLv, IDS_LV, LEASES_LV, METADATA_LV, SLOT_BYTES, SLOT_STRIDE,
};
use self::links::Links;
use self::writer::Writer;
use super::backend::{
    Creation, DomainBackend, DomainKind, LeaseLocation, Leftover, Prepared, VolumeSize,
};
use super::md::{DomainMetadata, VolumeMetadata};
use super::StorageError;

/// An attached block domain.
#[derive(Debug)]
pub struct BlockDomain {
    sd_id: Uuid,
    vg: String,
    path: PathBuf,
    env: Arc<BlockEnv>,
    devs: Devices,
    metadata_lv: ActiveLv,
    ids_lv: ActiveLv,
    leases_lv: ActiveLv,
    /// Stable links to the `ids` and `leases` devices: what sanlock is given.
    ids_link: PathBuf,
    leases_link: PathBuf,
    writer: Writer,
    links: Arc<Links>,
}

impl BlockDomain {
    /// Opens block domain `sd_id` (see [`format::find`]) and activates its `metadata`, `ids` and
    /// `leases` LVs for as long as it is attached. `leases_for` picks the domain's lease backend
    /// from its metadata (before anything is activated); it also holds the metadata-writer lease.
    pub fn open(
        env: &Arc<BlockEnv>,
        sd_id: &Uuid,
        leases_for: &super::domain::LeasesFor<'_>,
    ) -> Result<(BlockDomain, DomainMetadata, Arc<dyn LeaseBackend>), StorageError> {
        let (devs, md) = format::find(env, sd_id)?;
        let leases = leases_for(&md)?;
        let vg = sd_id.to_string();
        let activate = |lv: &str| {
            env.activator()
                .activate(&devs, &vg, lv)
                .map_err(|e| BlockError::Activate {
                    lv: format!("{vg}/{lv}"),
                    source: e,
                })
        };
        let metadata_lv = activate(METADATA_LV)?;
        let ids_lv = activate(IDS_LV)?;
        let leases_lv = activate(LEASES_LV)?;
        let links = Arc::new(Links::new(env.links_dir(&vg)));
        let ids_link = links.special(IDS_LV, ids_lv.path())?;
        let leases_link = links.special(LEASES_LV, leases_lv.path())?;
        let writer = Writer::new(
            &vg,
            leases.clone(),
            leases_link.clone(),
            env.lease_timeout(),
        );
        let d = BlockDomain {
            sd_id: sd_id.clone(),
            path: format::domain_path(sd_id),
            links,
            ids_link,
            leases_link,
            vg,
            env: env.clone(),
            devs,
            metadata_lv,
            ids_lv,
            leases_lv,
            writer,
        };
        Ok((d, md, leases))
    }

    fn lvm(&self) -> &Lvm {
        self.env.lvm()
    }

    /// Every volume LV (special LVs left out), read afresh.
    fn volume_lvs(&self) -> Result<Vec<VolLv>, StorageError> {
        Ok(self
            .lvm()
            .lvs(&self.devs, &self.vg)
            .map_err(BlockError::from)?
            .iter()
            .filter_map(VolLv::from_lv)
            .collect())
    }

    fn image_not_found(&self, img: &Uuid) -> StorageError {
        StorageError::ImageNotFound {
            sd: self.sd_id.to_string(),
            img: img.to_string(),
        }
    }

    fn volume_not_found(&self, img: &Uuid, vol: &Uuid) -> StorageError {
        if self.image_exists(img) {
            StorageError::VolumeNotFound {
                sd: self.sd_id.to_string(),
                img: img.to_string(),
                vol: vol.to_string(),
            }
        } else {
            self.image_not_found(img)
        }
    }

    /// A complete volume of live image `img` and its slot, read afresh.
    fn volume_lv(&self, img: &Uuid, vol: &Uuid) -> Result<(VolLv, u64), StorageError> {
        let lv = match self.lvm().lv(&self.devs, &self.vg, vol.as_str()) {
            Ok(lv) => lv,
            Err(LvmError::NotFound { .. }) => return Err(self.volume_not_found(img, vol)),
            Err(e) => return Err(BlockError::from(e).into()),
        };
        let Some(v) = VolLv::from_lv(&lv).filter(|v| v.is_volume_of(img.as_str())) else {
            return Err(self.volume_not_found(img, vol));
        };
        let slot = v.slot.ok_or_else(|| {
            StorageError::BadMetadata(format!("LV {}/{vol} has no MD_ tag", self.vg))
        })?;
        Ok((v, slot))
    }

    /// Fails when this host uses the LV (a job has it prepared): LVM cannot see loop mappings.
    fn check_unused(&self, lv: &str) -> Result<(), StorageError> {
        if self.env.activator().users(&self.vg, lv) > 0 {
            return Err(BlockError::InUse(format!(
                "LV {}/{lv} is in use on this host; not removed",
                self.vg
            ))
            .into());
        }
        Ok(())
    }

    /// Activates and links an LV under `<links>/<img>/`.
    fn prepare_lv(&self, img: &str, lv: &str) -> Result<(Prepared, u64), StorageError> {
        self.links
            .prepare(self.env.activator(), &self.devs, &self.vg, img, lv)
    }

    fn read_slot(&self, img: &Uuid, slot: u64) -> Result<VolumeMetadata, StorageError> {
        let raw = direct::read_at(self.metadata_lv.path(), slot_offset(slot), SLOT_BYTES)?;
        volumes::parse_slot(&raw, img.as_str(), slot)
    }

    fn write_slot(&self, slot: u64, md: &VolumeMetadata) -> Result<(), StorageError> {
        self.write_slot_bytes(slot, md.to_bytes()?)
    }

    /// A new volume's slot: its metadata and zeros over the rest of the 8 KiB, the checkpoint
    /// region included, in one write (one fdatasync, as any slot write).
    fn write_new_slot(&self, slot: u64, md: &VolumeMetadata) -> Result<(), StorageError> {
        let mut bytes = md.to_bytes()?;
        bytes.resize(SLOT_STRIDE as usize, 0);
        self.write_slot_bytes(slot, bytes)
    }

    fn write_slot_bytes(&self, slot: u64, bytes: Vec<u8>) -> Result<(), StorageError> {
        fail::fail_point!("sdm::block::slot_write", |_| Err(StorageError::io(
            "write (O_DIRECT)",
            self.metadata_lv.path(),
            std::io::Error::from_raw_os_error(libc::EIO)
        )));
        direct::write_at(self.metadata_lv.path(), slot_offset(slot), &bytes)
    }

    /// The activated `metadata` LV (slot IO), for tests and tools.
    pub fn metadata_device(&self) -> &Path {
        self.metadata_lv.path()
    }
}

impl Drop for BlockDomain {
    fn drop(&mut self) {
        // The special LVs are deactivated with their guards; their links would lead nowhere.
        self.links
            .remove_special(&self.ids_link, self.ids_lv.path());
        self.links
            .remove_special(&self.leases_link, self.leases_lv.path());
    }
}

impl DomainBackend for BlockDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::Block
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_domain_metadata(&self) -> Result<DomainMetadata, StorageError> {
        let vg = self
            .lvm()
            .vg(&self.devs, &self.vg)
            .map_err(BlockError::from)?;
        dommd::from_tags(&vg.tags)
    }

    fn lockspace_path(&self) -> PathBuf {
        self.ids_link.clone()
    }

    fn space(&self) -> (u64, u64) {
        self.lvm()
            .vg(&self.devs, &self.vg)
            .map(|vg| (vg.size, vg.free))
            .unwrap_or((0, 0))
    }

    fn supports_sparse(&self) -> bool {
        false
    }

    fn reads_zeros_when_new(&self, _format: VolumeFormat, _allocation: Preallocation) -> bool {
        // LVs are not zeroed when made: they hold whatever their extents held.
        false
    }

    fn list_images(&self) -> Result<Vec<Uuid>, StorageError> {
        let mut out: Vec<Uuid> = self
            .volume_lvs()?
            .iter()
            .filter_map(|v| v.live_image().and_then(|i| Uuid::parse(i).ok()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn image_exists(&self, img: &Uuid) -> bool {
        self.volume_lvs()
            .is_ok_and(|v| v.iter().any(|v| v.image.as_deref() == Some(img.as_str())))
    }

    fn list_volumes(&self, img: &Uuid) -> Result<Vec<Uuid>, StorageError> {
        let lvs = self.volume_lvs()?;
        if !lvs.iter().any(|v| v.image.as_deref() == Some(img.as_str())) {
            return Err(self.image_not_found(img));
        }
        let mut out: Vec<Uuid> = lvs
            .iter()
            .filter(|v| v.is_volume_of(img.as_str()))
            .filter_map(|v| Uuid::parse(&v.name).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    fn orphans(&self, img: &Uuid) -> Result<Vec<String>, StorageError> {
        Ok(self
            .volume_lvs()?
            .into_iter()
            .filter(|v| v.initializing && v.image.as_deref() == Some(img.as_str()))
            .map(|v| v.name)
            .collect())
    }

    fn is_orphan_name(&self, name: &str) -> bool {
        is_canonical_uuid(name)
    }

    fn remove_orphan(&self, img: &Uuid, name: &str) -> Result<(), StorageError> {
        if !is_canonical_uuid(name) {
            return Err(StorageError::Invalid("not a volume LV name".into()));
        }
        self.writer.run("remove a half-made volume", |lease| {
            let orphan = self.volume_lvs()?.into_iter().find(|v| {
                v.name == name && v.initializing && v.image.as_deref() == Some(img.as_str())
            });
            if orphan.is_none() {
                return Err(StorageError::Invalid(format!(
                    "{name} is no half-made volume of image {img} (completed or gone since)"
                )));
            }
            lease.verify()?;
            volumes::remove_lvs(self, &[name])
        })?;
        tracing::info!(sd_id = %self.sd_id, lv = name, "removed a half-made volume LV");
        Ok(())
    }

    fn read_metadata(&self, img: &Uuid, vol: &Uuid) -> Result<VolumeMetadata, StorageError> {
        let (_, slot) = self.volume_lv(img, vol)?;
        self.read_slot(img, slot)
    }

    fn write_metadata(
        &self,
        img: &Uuid,
        vol: &Uuid,
        md: &VolumeMetadata,
    ) -> Result<(), StorageError> {
        let (_, slot) = self.volume_lv(img, vol)?;
        // A slot another LV also claims belongs to nobody for sure: never write it.
        let lvs = self.volume_lvs()?;
        let rivals = volumes::slot_rivals(&lvs, vol.as_str(), slot);
        if !rivals.is_empty() {
            return Err(BlockError::SlotConflict {
                sd: self.sd_id.to_string(),
                slot,
                lvs: format!("{vol}, {}", rivals.join(", ")),
            }
            .into());
        }
        self.write_slot(slot, md)
    }

    fn volume_lease(&self, img: &Uuid, vol: &Uuid) -> Result<LeaseLocation, StorageError> {
        let (_, slot) = self.volume_lv(img, vol)?;
        Ok(LeaseLocation {
            path: self.leases_link.clone(),
            offset: lease_offset(slot),
        })
    }

    fn prepare(&self, img: &Uuid, vol: &Uuid) -> Result<Prepared, StorageError> {
        self.volume_lv(img, vol)?;
        Ok(self.prepare_lv(img.as_str(), vol.as_str())?.0)
    }

    fn volume_size(&self, img: &Uuid, vol: &Uuid) -> Result<VolumeSize, StorageError> {
        let (v, _) = self.volume_lv(img, vol)?;
        Ok(VolumeSize {
            apparent: v.size,
            allocated: v.size,
        })
    }

    fn grow_raw(&self, img: &Uuid, vol: &Uuid, capacity: u64) -> Result<(), StorageError> {
        volumes::reserve(self, img, vol, capacity)
    }

    fn reserve(&self, img: &Uuid, vol: &Uuid, bytes: u64) -> Result<(), StorageError> {
        volumes::reserve(self, img, vol, bytes)
    }

    fn chain_dir(&self, img: &Uuid) -> PathBuf {
        self.links.dir(img.as_str())
    }

    fn create_volume(
        &self,
        leases: &dyn LeaseBackend,
        c: &Creation<'_>,
    ) -> Result<(), StorageError> {
        volumes::create(self, leases, c)
    }

    fn remove_volume(&self, img: &Uuid, vol: &Uuid, lease: Lease) -> Result<(), StorageError> {
        volumes::remove(self, img, vol, lease)
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    fn read_checkpoint(&self, img: &Uuid, vol: &Uuid) -> Result<Option<Vec<u8>>, StorageError> {
        ckpt::read(self, img, vol)
    }

    fn write_checkpoint(&self, img: &Uuid, vol: &Uuid, data: &[u8]) -> Result<(), StorageError> {
        ckpt::write(self, img, vol, data)
    }

    fn remove_checkpoint(&self, img: &Uuid, vol: &Uuid) -> Result<(), StorageError> {
        ckpt::remove(self, img, vol)
    }

    fn mark_for_removal(&self, img: &Uuid, wipe: bool) -> Result<Leftover, StorageError> {
        leftovers::mark(self, img, wipe)
    }

    fn list_leftovers(&self) -> Result<Vec<Leftover>, StorageError> {
        leftovers::list(self)
    }

    fn leftover_exists(&self, l: &Leftover) -> bool {
        leftovers::exists(self, l)
    }

    fn check_leftover(&self, _l: &Leftover) -> Result<(), StorageError> {
        // A leftover is a set of this VG's LVs by their tags; nothing can lead outside it.
        Ok(())
    }

    fn leftover_volumes(&self, l: &Leftover) -> Result<Vec<(Uuid, LeaseLocation)>, StorageError> {
        leftovers::volumes(self, l)
    }

    fn wipe_targets(&self, l: &Leftover) -> Result<Vec<(Prepared, u64)>, StorageError> {
        leftovers::wipe_targets(self, l)
    }

    fn purge(&self, l: &Leftover) -> Result<(), StorageError> {
        leftovers::purge(self, l)
    }
}
