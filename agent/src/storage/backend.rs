//! The storage backend seam: what differs between a file domain and a block (LVM) domain.
//!
//! Everything above this trait — legality and generation rules, leases (acquire, verify,
//! release), in-process locks, jobs, the data path — is shared; [`super::domain::Domain`] holds
//! one `Box<dyn DomainBackend>` per attached domain, and copy, move, delete, garbage collection,
//! check, `SDM.update_volume` and `Volume.checksum` reach storage only through it. A backend
//! answers for:
//!
//! - where a volume's bytes live and how they are made usable ([`DomainBackend::prepare`]: a
//!   path, valid while the returned [`Prepared`] lives — a block domain activates the LV there
//!   and deactivates it when the guard drops);
//! - where its metadata lives and how it is read and written (the same V5 `key=value` text:
//!   `<vol>.meta` replaced durably, or a 512-byte slot of the `metadata` LV written O_DIRECT);
//! - where its lease lives ([`LeaseLocation`]: `<vol>.lease` at 0, or the `leases` LV at
//!   (100 + slot) MiB);
//! - how a volume is created and removed, how an image is marked for removal (a renamed
//!   directory, or retagged LVs: both named by a [`Leftover`]) and purged;
//! - how images, volumes, leftovers and orphans are listed, and how the domain's space is
//!   reported;
//! - properties the shared code asks instead of testing the kind: sparse RAW volumes, whether
//!   a new volume reads as zeros.
//!
//! How a domain is discovered, formatted and opened differs too, before there is a backend to
//! ask: [`DomainKind`] names the kinds and `super::domain` dispatches on it, in one place.

use std::fmt;
use std::path::{Path, PathBuf};

use sdm_lease::{Lease, LeaseBackend};
use sdm_proto::{is_canonical_uuid, Preallocation, Uuid, VolumeFormat};

use super::md::{DomainMetadata, VolumeMetadata};
use super::StorageError;

/// Prefix of images being deleted.
pub const REMOVE_ME_PREFIX: &str = "_remove_me_";
/// Prefix of images being deleted with wipe.
pub const REMOVE_ME_ZERO_PREFIX: &str = "_remove_me_ZERO_";

/// The kinds of storage domain sdm serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// A directory tree (NFS, POSIX, local): `<root>/<sd_id>/{dom_md,images}`.
    File,
    /// An LVM volume group named by the domain id, on shared LUNs.
    Block,
}

impl DomainKind {
    /// The wire spelling (`DomainInfo.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainKind::File => "file",
            DomainKind::Block => "block",
        }
    }

    /// The kind a wire or registry spelling names (unknown: None).
    pub fn parse(name: &str) -> Option<DomainKind> {
        match name {
            "file" => Some(DomainKind::File),
            "block" => Some(DomainKind::Block),
            _ => None,
        }
    }
}

/// Where a volume's lease lives: the lease backend's (path, offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseLocation {
    /// File or device.
    pub path: PathBuf,
    /// Byte offset of the lease in it.
    pub offset: u64,
}

/// A volume's bytes made usable: the path to open, valid while this value lives. Dropping it
/// undoes what making it usable needed (a block domain deactivates the LV).
pub struct Prepared {
    path: PathBuf,
    _active: Option<Box<dyn Send>>,
}

impl Prepared {
    /// Bytes that are usable as they are (a file).
    pub fn at(path: PathBuf) -> Prepared {
        Prepared {
            path,
            _active: None,
        }
    }

    /// Bytes usable while `guard` lives (its `Drop` deactivates them).
    pub fn guarded(path: PathBuf, guard: Box<dyn Send>) -> Prepared {
        Prepared {
            path,
            _active: Some(guard),
        }
    }

    /// The path to open.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("path", &self.path)
            .field("guarded", &self._active.is_some())
            .finish()
    }
}

/// Sizes of a volume's data as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeSize {
    /// Bytes addressable (file length, LV size).
    pub apparent: u64,
    /// Bytes allocated on storage.
    pub allocated: u64,
}

/// An image marked for removal, by the name both kinds give it: `_remove_me_<img>` (remove),
/// `_remove_me_ZERO_<img>` (wipe, then remove). A file domain renames the image directory to
/// it; a block domain retags the image's LVs `IU_<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    name: String,
    wipe: bool,
}

impl Leftover {
    /// The leftover that marking `img` for removal makes.
    pub fn of(img: &Uuid, wipe: bool) -> Leftover {
        let prefix = if wipe {
            REMOVE_ME_ZERO_PREFIX
        } else {
            REMOVE_ME_PREFIX
        };
        Leftover {
            name: format!("{prefix}{img}"),
            wipe,
        }
    }

    /// A leftover found in storage: any name with the prefix (garbage collection removes odd
    /// ones too).
    pub fn found(name: &str) -> Option<Leftover> {
        name.starts_with(REMOVE_ME_PREFIX).then(|| Leftover {
            name: name.to_string(),
            wipe: name.starts_with(REMOVE_ME_ZERO_PREFIX),
        })
    }

    /// A leftover named by a client (`StorageDomain.fix`): only `<prefix><image uuid>`.
    pub fn parse(name: &str) -> Option<Leftover> {
        let img = name
            .strip_prefix(REMOVE_ME_ZERO_PREFIX)
            .or_else(|| name.strip_prefix(REMOVE_ME_PREFIX))?;
        if is_canonical_uuid(img) {
            Leftover::found(name)
        } else {
            None
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether its data must be wiped before removal.
    pub fn wipe(&self) -> bool {
        self.wipe
    }
}

/// A volume the shared rules decided to create (capacity rounded, parent checked).
pub struct Creation<'a> {
    /// Image (created when missing).
    pub img: &'a Uuid,
    /// Volume.
    pub vol: &'a Uuid,
    /// Its metadata as it is to be written (legality, generation 0, parent).
    pub md: &'a VolumeMetadata,
    /// The parent volume and its metadata (COW children).
    pub parent: Option<(&'a Uuid, &'a VolumeMetadata)>,
    /// Bytes about to be written into the new volume, when known (a copy's source size): a
    /// hint for backends that allocate up front (block: a sparse COW LV is made that large,
    /// up to its maximum). File domains ignore it.
    pub initial_size: Option<u64>,
    /// The initial size the client asked for (`Volume.create`'s `initialSize`): block domains
    /// size a COW LV by it as VDSM does (and refuse it for RAW or beyond the volume's maximum);
    /// file volumes grow on write and ignore it.
    pub requested_initial_size: Option<u64>,
}

/// What differs between kinds of domain; see the module documentation. Volume methods name
/// volumes of live images; a [`Leftover`]'s volumes are reached through the leftover methods.
pub trait DomainBackend: Send + Sync + fmt::Debug {
    // --- the domain ---------------------------------------------------------------------

    /// The kind of this domain.
    fn kind(&self) -> DomainKind;

    /// Where the domain is attached from: what `StorageDomain.attach` takes and the agent's
    /// state keeps (file: the domain directory, canonical).
    fn path(&self) -> &Path;

    /// The domain metadata as stored now, seal verified (file: `dom_md/metadata`; block: the
    /// VG's `MDT_` tags).
    fn read_domain_metadata(&self) -> Result<DomainMetadata, StorageError>;

    /// The sanlock lockspace the lease backend joins (file: `dom_md/ids`; block: the `ids` LV).
    fn lockspace_path(&self) -> PathBuf;

    /// Capacity and free bytes of the domain.
    fn space(&self) -> (u64, u64);

    /// Whether RAW volumes may be sparse (block: no, RAW is always preallocated).
    fn supports_sparse(&self) -> bool;

    /// Whether a volume just created in `format` with `allocation` reads as zeros, so that a
    /// copy into it can skip the source's holes.
    fn reads_zeros_when_new(&self, format: VolumeFormat, allocation: Preallocation) -> bool;

    // --- listing ------------------------------------------------------------------------

    /// Live images (leftovers are not listed).
    fn list_images(&self) -> Result<Vec<Uuid>, StorageError>;

    /// Whether a live image exists (possibly without volumes).
    fn image_exists(&self, img: &Uuid) -> bool;

    /// Volumes of a live image (those with metadata); ImageNotFound when there is no image.
    fn list_volumes(&self, img: &Uuid) -> Result<Vec<Uuid>, StorageError>;

    /// Pieces of volumes in a live image that have no metadata, by name (file: data, lease and
    /// temporary files without `.meta`; block: LVs still tagged `OVIRT_VOL_INITIALIZING`).
    fn orphans(&self, img: &Uuid) -> Result<Vec<String>, StorageError>;

    /// The leases of a live image's half-made volumes: begun but never finished (no
    /// metadata), whose lease was made (file: a regular `<vol>.lease` without `<vol>.meta`).
    /// A creator holds its volume's lease until the metadata is written, so a deletion takes
    /// these too and never removes a volume that is being created. None where the backend
    /// cannot tell (the default).
    fn half_made_volume_leases(
        &self,
        img: &Uuid,
    ) -> Result<Vec<(Uuid, LeaseLocation)>, StorageError> {
        let _ = img;
        Ok(Vec::new())
    }

    /// Whether `name` could name an orphan (checked before a fix is scheduled).
    fn is_orphan_name(&self, name: &str) -> bool;

    /// Removes an orphan; refused (Invalid) if it belongs to a volume by now.
    fn remove_orphan(&self, img: &Uuid, name: &str) -> Result<(), StorageError>;

    // --- one volume of a live image -----------------------------------------------------

    /// Reads its metadata; VolumeNotFound / ImageNotFound when missing.
    fn read_metadata(&self, img: &Uuid, vol: &Uuid) -> Result<VolumeMetadata, StorageError>;

    /// Writes its metadata as given, atomically and durably.
    fn write_metadata(
        &self,
        img: &Uuid,
        vol: &Uuid,
        md: &VolumeMetadata,
    ) -> Result<(), StorageError>;

    /// Where its lease lives (block: the slot is read from its LV's tags, so it can fail).
    fn volume_lease(&self, img: &Uuid, vol: &Uuid) -> Result<LeaseLocation, StorageError>;

    /// Makes its bytes usable for reading and writing, after checking that they are the
    /// domain's own (a file domain refuses links that lead outside it).
    fn prepare(&self, img: &Uuid, vol: &Uuid) -> Result<Prepared, StorageError>;

    /// Sizes of its data.
    fn volume_size(&self, img: &Uuid, vol: &Uuid) -> Result<VolumeSize, StorageError>;

    /// Makes a RAW volume's data `capacity` bytes long when it is shorter, durably (file:
    /// extends the file; block: an LV is never shorter than its capacity).
    fn grow_raw(&self, img: &Uuid, vol: &Uuid, capacity: u64) -> Result<(), StorageError>;

    /// Makes sure its data can hold `bytes` (what a copy is about to write), before it is
    /// prepared (file: nothing to do, files grow; block: extends the LV under the
    /// metadata-writer lease, up to 1.1 × capacity for COW).
    fn reserve(&self, img: &Uuid, vol: &Uuid, bytes: u64) -> Result<(), StorageError>;

    /// The directory in which the image's qcow2 backing files resolve by bare volume UUID, as
    /// oVirt writes them (file: `images/<img>`).
    fn chain_dir(&self, img: &Uuid) -> PathBuf;

    /// Creates a volume: its data (RAW or qcow2 on top of its parent), its lease initialized
    /// with `leases`, and its metadata, such that a crash half-way never leaves a volume that
    /// looks complete (file: metadata last; block: the LV tagged `OVIRT_VOL_INITIALIZING` until
    /// done). VolumeExists when it exists. (file: under the volume's lease, taking over a
    /// half-made volume whose creator is gone; 651 while another creator holds the lease.)
    fn create_volume(
        &self,
        leases: &dyn LeaseBackend,
        c: &Creation<'_>,
    ) -> Result<(), StorageError>;

    /// Removes a volume whose lease the caller holds: metadata first (then it no longer
    /// exists), its data, and its lease area after `lease` is released; the image goes with
    /// its last volume.
    fn remove_volume(&self, img: &Uuid, vol: &Uuid, lease: Lease) -> Result<(), StorageError>;

    // --- checkpoints of copies into a volume (`super::checkpoint` owns the format) --------

    /// Whether this kind of domain stores checkpoints. A copy into one that does not runs
    /// without the checkpoint hook: no digest reads and no extra fdatasync for nothing.
    fn keeps_checkpoints(&self) -> bool {
        false
    }

    /// The stored checkpoint bytes of a copy into the volume, if any (file: `<vol>.checkpoint`;
    /// block: the second 4 KiB of the volume's metadata slot). A backend without checkpoints
    /// has none.
    fn read_checkpoint(&self, _img: &Uuid, _vol: &Uuid) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(None)
    }

    /// Replaces the volume's checkpoint, atomically and durably.
    fn write_checkpoint(&self, _img: &Uuid, _vol: &Uuid, _data: &[u8]) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "{} domains keep no copy checkpoints yet",
            self.kind().as_str()
        )))
    }

    /// Removes the volume's checkpoint, durably; none is not an error.
    fn remove_checkpoint(&self, _img: &Uuid, _vol: &Uuid) -> Result<(), StorageError> {
        Ok(())
    }

    // --- deletion -----------------------------------------------------------------------

    /// Marks a live image for removal, durably, and returns the leftover it became.
    fn mark_for_removal(&self, img: &Uuid, wipe: bool) -> Result<Leftover, StorageError>;

    /// Leftovers of deletions (`_remove_me_*`), sorted by name.
    fn list_leftovers(&self) -> Result<Vec<Leftover>, StorageError>;

    /// Whether a leftover is still there.
    fn leftover_exists(&self, l: &Leftover) -> bool;

    /// Checks that a leftover is the domain's own before anything acts on it (file: a real
    /// directory inside the domain, not a link).
    fn check_leftover(&self, l: &Leftover) -> Result<(), StorageError>;

    /// The volumes of a leftover with their leases.
    fn leftover_volumes(&self, l: &Leftover) -> Result<Vec<(Uuid, LeaseLocation)>, StorageError>;

    /// The data of a leftover to wipe, made usable, with sizes (never anything outside the
    /// domain).
    fn wipe_targets(&self, l: &Leftover) -> Result<Vec<(Prepared, u64)>, StorageError>;

    /// Removes a leftover and all it holds, durably.
    fn purge(&self, l: &Leftover) -> Result<(), StorageError>;

    /// Removes the temporary files of metadata writers that died before their rename
    /// (`crate::durable::is_temp_name`, nothing else) older than `older_than`; returns how
    /// many. A backend whose metadata writes leave no such files has none.
    fn remove_stale_temp_files(
        &self,
        older_than: std::time::Duration,
    ) -> Result<usize, StorageError> {
        let _ = older_than;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names() {
        let img = Uuid::new_v4();
        let l = Leftover::of(&img, true);
        assert_eq!(l.name(), format!("_remove_me_ZERO_{img}"));
        assert_eq!(Leftover::parse(l.name()), Some(l.clone()));
        assert_eq!(Leftover::found(l.name()), Some(l));
        let plain = Leftover::of(&img, false);
        assert!(!plain.wipe());
        assert_eq!(Leftover::parse(plain.name()), Some(plain));
        assert_eq!(Leftover::parse("_remove_me_x"), None);
        assert_eq!(Leftover::parse(img.as_str()), None);
        assert!(Leftover::found("_remove_me_x").is_some_and(|l| !l.wipe()));
        assert_eq!(Leftover::found("images"), None);
    }
}
