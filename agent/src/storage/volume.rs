//! Volumes, the rules every kind of domain shares: `Volume.create` (parents, capacity,
//! legality, the chain-order sequence number), metadata reads and updates, and
//! `Volume.getInfo`. Where the
//! data, metadata and lease live is the backend's ([`super::backend::DomainBackend`]).

use sdm_proto::{
    LeaseInfo, Legality, Preallocation, Size, Timestamp, Uuid, VolumeFormat, VolumeInfo, VolumeRole,
};

use super::backend::Creation;
use super::domain::Domain;
use super::md::{VolumeMetadata, CAPACITY_ALIGN};
use super::StorageError;

/// What `Volume.create` asks for.
#[derive(Clone, Debug)]
pub struct NewVolume {
    /// Image (created if missing).
    pub img: Uuid,
    /// Volume.
    pub vol: Uuid,
    /// Virtual size in bytes (rounded up to 4 KiB).
    pub capacity: u64,
    /// RAW or COW.
    pub format: VolumeFormat,
    /// SPARSE or PREALLOCATED.
    pub allocation: Preallocation,
    /// Parent in the same image (COW only).
    pub parent: Option<Uuid>,
    /// Description.
    pub description: String,
    /// Legality written at creation (ILLEGAL for copy destinations).
    pub legality: Legality,
    /// Disk type (DATA unless copying another volume's).
    pub disktype: String,
    /// Place in the chain (SEQ), newer volumes higher; copies keep their source's.
    pub sequence: u64,
    /// Bytes about to be copied into it, when known (see [`Creation::initial_size`]).
    pub initial_size: Option<u64>,
    /// The client's `initialSize` (see [`Creation::requested_initial_size`]).
    pub requested_initial_size: Option<u64>,
}

/// Reads a volume's metadata.
pub fn read_metadata(dom: &Domain, img: &Uuid, vol: &Uuid) -> Result<VolumeMetadata, StorageError> {
    dom.backend.read_metadata(img, vol)
}

/// Writes a changed volume's metadata atomically and durably. The sequence number (SEQ, the
/// volume's place in its chain) is written back as read: as in VDSM, only creation sets it
/// (CONTRACT: never changed by metadata writes, copies or moves). The caller holds the image
/// lock.
pub fn update_metadata(
    dom: &Domain,
    img: &Uuid,
    vol: &Uuid,
    md: &mut VolumeMetadata,
) -> Result<(), StorageError> {
    dom.backend.write_metadata(img, vol, md)
}

fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates a volume. The caller holds the domain (shared) and image (exclusive) locks.
pub fn create(dom: &Domain, req: &NewVolume) -> Result<(), StorageError> {
    if req.parent.is_some() && req.format != VolumeFormat::Cow {
        return Err(StorageError::Invalid(
            "a volume with a parent must be COW".into(),
        ));
    }
    // Rounded up to 4 KiB, it must still fit a file size (i64).
    let capacity = req
        .capacity
        .checked_next_multiple_of(CAPACITY_ALIGN)
        .filter(|c| *c <= i64::MAX as u64)
        .ok_or_else(|| StorageError::Invalid(format!("capacity {} is too large", req.capacity)))?;
    // The parent's metadata is rewritten below (LEAF → INTERNAL): like every metadata writer,
    // this holds the parent's lease around the read and the write, never waiting for another
    // holder (651). Its existence is checked first, so a missing parent stays a clear error.
    let parent = req.parent.as_ref().filter(|p| !p.is_blank());
    let parent_lease = match parent {
        Some(p) => {
            parent_metadata(dom, req, p, capacity)?;
            Some(dom.acquire_volume_lease(&req.img, p)?)
        }
        None => None,
    };
    let parent_md = match parent {
        Some(p) => Some((p.clone(), parent_metadata(dom, req, p, capacity)?)),
        None => None,
    };
    let md = VolumeMetadata {
        capacity,
        ctime: now_epoch(),
        description: req.description.clone(),
        disktype: req.disktype.clone(),
        domain: dom.sd_id.to_string(),
        image: req.img.to_string(),
        format: req.format,
        generation: 0,
        legality: req.legality,
        parent: parent_md
            .as_ref()
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| Uuid::blank().to_string()),
        sequence: req.sequence,
        allocation: req.allocation,
        role: VolumeRole::Leaf,
    };
    if let Some(lease) = &parent_lease {
        lease.verify()?;
    }
    let creation = Creation {
        img: &req.img,
        vol: &req.vol,
        md: &md,
        parent: parent_md.as_ref().map(|(p, pmd)| (p, pmd)),
        initial_size: req.initial_size,
        requested_initial_size: req.requested_initial_size,
    };
    dom.backend.create_volume(dom.leases.as_ref(), &creation)?;
    if let (Some((p, mut pmd)), Some(lease)) = (parent_md, parent_lease) {
        if pmd.role == VolumeRole::Leaf {
            lease.verify()?;
            pmd.role = VolumeRole::Internal;
            update_metadata(dom, &req.img, &p, &mut pmd)?;
        }
        if let Err(e) = lease.release() {
            tracing::warn!(vol_id = %p, error = %e, "releasing the parent's lease failed");
        }
    }
    Ok(())
}

/// The parent's metadata, if a volume of `capacity` may sit on it.
fn parent_metadata(
    dom: &Domain,
    req: &NewVolume,
    p: &Uuid,
    capacity: u64,
) -> Result<VolumeMetadata, StorageError> {
    if p == &req.vol {
        return Err(StorageError::Invalid(
            "a volume cannot be its own parent".into(),
        ));
    }
    let md = read_metadata(dom, &req.img, p).map_err(|e| match e {
        StorageError::VolumeNotFound { .. } | StorageError::ImageNotFound { .. } => {
            StorageError::Invalid(format!(
                "parent volume {p} does not exist in image {}",
                req.img
            ))
        }
        e => e,
    })?;
    // A LEGAL volume cannot sit on an untrusted parent; an ILLEGAL one (a copy destination
    // being built parents first) may.
    if md.legality != Legality::Legal && req.legality == Legality::Legal {
        return Err(StorageError::Invalid(format!(
            "parent volume {p} is {}",
            md.legality
        )));
    }
    if capacity < md.capacity {
        return Err(StorageError::Invalid(format!(
            "capacity {capacity} is smaller than the parent's {}",
            md.capacity
        )));
    }
    Ok(md)
}

/// `Volume.getInfo`.
pub fn info(dom: &Domain, img: &Uuid, vol: &Uuid) -> Result<VolumeInfo, StorageError> {
    let md = read_metadata(dom, img, vol)?;
    let size = dom.backend.volume_size(img, vol)?;
    let at = dom.volume_lease(img, vol)?;
    let lease = dom.lease_status(img, vol)?;
    let status = match md.legality {
        Legality::Illegal => "ILLEGAL",
        _ => "OK",
    };
    Ok(VolumeInfo {
        uuid: vol.clone(),
        image: img.clone(),
        domain: dom.sd_id.clone(),
        format: md.format,
        allocation: md.allocation,
        voltype: md.role,
        capacity: Size(md.capacity),
        apparentsize: Size(size.apparent),
        truesize: Size(size.allocated),
        parent: Uuid::parse(&md.parent).unwrap_or_else(|_| Uuid::blank()),
        description: md.description,
        disktype: md.disktype,
        ctime: Timestamp(md.ctime),
        mtime: Timestamp(0),
        pool: String::new(),
        children: Vec::new(),
        legality: md.legality,
        generation: md.generation,
        sequence: md.sequence,
        status: status.into(),
        lease: LeaseInfo {
            path: at.path.to_string_lossy().into_owned(),
            offset: at.offset,
            owners: lease.owners,
            version: lease.version,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::domain::{NewSite, Site};
    use sdm_lease::LocalLeases;
    use std::process::Command;

    fn domain() -> (tempfile::TempDir, Domain) {
        let root = tempfile::tempdir().unwrap();
        let leases = Arc::new(LocalLeases::new(1));
        let sd = Uuid::new_v4();
        let dir = Domain::create(
            &NewSite::Dir(root.path().to_path_buf()),
            &sd,
            "t",
            leases.as_ref(),
            10,
        )
        .unwrap();
        let d = Domain::open(&Site::Dir(dir), leases).unwrap();
        (root, d)
    }

    fn new(img: &Uuid, format: VolumeFormat, parent: Option<Uuid>) -> NewVolume {
        NewVolume {
            img: img.clone(),
            vol: Uuid::new_v4(),
            capacity: 1 << 20,
            format,
            allocation: Preallocation::Sparse,
            parent,
            description: "d".into(),
            legality: Legality::Legal,
            disktype: "DATA".into(),
            sequence: 0,
            initial_size: None,
            requested_initial_size: None,
        }
    }

    #[test]
    fn sequence_is_set_at_creation_and_kept_by_metadata_writes() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let mut req = new(&img, VolumeFormat::Raw, None);
        req.sequence = 7;
        create(&d, &req).unwrap();
        let mut md = read_metadata(&d, &img, &req.vol).unwrap();
        assert_eq!(md.sequence, 7);
        md.legality = Legality::Illegal;
        update_metadata(&d, &img, &req.vol, &mut md).unwrap();
        let i = info(&d, &img, &req.vol).unwrap();
        assert_eq!((i.sequence, i.legality), (7, Legality::Illegal));
    }

    #[test]
    fn raw_sparse_and_preallocated() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let mut req = new(&img, VolumeFormat::Raw, None);
        req.capacity = 1_000_000; // rounds up to 4 KiB
        create(&d, &req).unwrap();
        let i = info(&d, &img, &req.vol).unwrap();
        assert_eq!(i.capacity.0, 1_003_520);
        assert_eq!(i.apparentsize.0, 1_003_520);
        assert_eq!(i.truesize.0, 0);
        assert_eq!(i.legality, Legality::Legal);
        assert_eq!(i.sequence, 0);
        assert!(i.lease.owners.is_empty());
        let mut pre = new(&img, VolumeFormat::Raw, None);
        pre.allocation = Preallocation::Preallocated;
        create(&d, &pre).unwrap();
        assert!(info(&d, &img, &pre.vol).unwrap().truesize.0 >= 1 << 20);
        assert!(matches!(
            create(&d, &req),
            Err(StorageError::VolumeExists(_))
        ));
        assert_eq!(d.backend.list_volumes(&img).unwrap().len(), 2);
    }

    /// What a creation killed between its metadata's temporary file and the rename leaves.
    fn half_made(d: &Domain, img: &Uuid, vol: &Uuid) -> std::path::PathBuf {
        let dir = d.backend.path().join("images").join(img.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(vol.as_str()), b"stale bytes").unwrap();
        d.leases
            .init_volume_lease(
                d.sd_id.as_str(),
                vol.as_str(),
                &dir.join(format!("{vol}.lease")),
            )
            .unwrap();
        let meta = dir.join(format!("{vol}.meta"));
        std::fs::write(crate::durable::temp_path(&meta), b"DOMAIN=").unwrap();
        dir
    }

    #[test]
    fn a_refused_create_leaves_nothing_and_the_volume_can_be_created_after() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let mut req = new(&img, VolumeFormat::Cow, None);
        // qemu-img refuses a qcow2 this large (after the lease was made and taken).
        req.capacity = 1 << 60;
        assert!(create(&d, &req).is_err());
        let dir = d.backend.path().join("images").join(img.as_str());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "a refused create left {left:?}");
        assert!(d.backend.half_made_volume_leases(&img).unwrap().is_empty());

        req.capacity = 1 << 20;
        create(&d, &req).unwrap();
        assert_eq!(info(&d, &img, &req.vol).unwrap().capacity.0, 1 << 20);
    }

    #[test]
    fn create_takes_over_a_half_made_volume_only_with_its_lease_free() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let req = new(&img, VolumeFormat::Raw, None);
        let dir = half_made(&d, &img, &req.vol);
        assert!(d.backend.list_volumes(&img).unwrap().is_empty());
        assert_eq!(d.backend.orphans(&img).unwrap().len(), 3);
        assert_eq!(d.backend.half_made_volume_leases(&img).unwrap().len(), 1);

        // Its creator (or another taking it over) holds the lease: refused, nothing touched.
        let held = d.acquire_volume_lease(&img, &req.vol).unwrap();
        let e = create(&d, &req).unwrap_err();
        assert!(matches!(&e, StorageError::Lease(l) if l.is_busy()), "{e:?}");
        assert_eq!(
            std::fs::read(dir.join(req.vol.as_str())).unwrap(),
            b"stale bytes"
        );
        drop(held);

        create(&d, &req).unwrap();
        let i = info(&d, &img, &req.vol).unwrap();
        assert_eq!(i.capacity.0, 1 << 20);
        assert_eq!(i.apparentsize.0, 1 << 20);
        assert!(
            d.backend.orphans(&img).unwrap().is_empty(),
            "stale pieces gone"
        );
        assert!(d.backend.half_made_volume_leases(&img).unwrap().is_empty());
        assert!(matches!(
            create(&d, &req),
            Err(StorageError::VolumeExists(_))
        ));

        // A volume whose creation stopped before its lease (data alone) is taken over too.
        let other = new(&img, VolumeFormat::Cow, None);
        std::fs::write(dir.join(other.vol.as_str()), b"x").unwrap();
        create(&d, &other).unwrap();
        assert_eq!(
            info(&d, &img, &other.vol).unwrap().format,
            VolumeFormat::Cow
        );
        assert!(d.backend.orphans(&img).unwrap().is_empty());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names.len(),
            6,
            "data, .meta and .lease of two volumes: {names:?}"
        );
    }

    #[test]
    fn cow_chain_uses_bare_parent_uuid() {
        let (_t, d) = domain();
        let img = Uuid::new_v4();
        let base = new(&img, VolumeFormat::Cow, None);
        create(&d, &base).unwrap();
        let mut top = new(&img, VolumeFormat::Cow, Some(base.vol.clone()));
        top.sequence = 7;
        create(&d, &top).unwrap();
        assert_eq!(
            info(&d, &img, &base.vol).unwrap().voltype,
            VolumeRole::Internal
        );
        // Making the parent INTERNAL is a metadata write; it keeps the chain order.
        assert_eq!(info(&d, &img, &base.vol).unwrap().sequence, 0);
        let ti = info(&d, &img, &top.vol).unwrap();
        assert_eq!(ti.parent, base.vol);
        assert_eq!(ti.sequence, 7);
        let mut md = read_metadata(&d, &img, &top.vol).unwrap();
        md.generation = 5;
        update_metadata(&d, &img, &top.vol, &mut md).unwrap();
        assert_eq!(info(&d, &img, &top.vol).unwrap().sequence, 7);
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(d.backend.prepare(&img, &top.vol).unwrap().path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["backing-filename"], base.vol.as_str());
        assert_eq!(v["backing-filename-format"], "qcow2");
        assert_eq!(v["format"], "qcow2");
        let raw_child = new(&img, VolumeFormat::Raw, Some(base.vol.clone()));
        assert!(matches!(
            create(&d, &raw_child),
            Err(StorageError::Invalid(_))
        ));
    }
}
