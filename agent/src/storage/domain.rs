//! A file storage domain: `<root>/<sd_id>/{dom_md,images}` as oVirt lays it out (format V5).
//!
//! Creation builds the whole tree in a hidden sibling directory and renames it into place, so a
//! crash never leaves a half-formatted directory that domain discovery (`*-*-*-*-*/dom_md`)
//! would pick up.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdm_lease::LeaseBackend;
use sdm_proto::{is_canonical_uuid, Uuid};

use super::md::DomainMetadata;
use super::StorageError;
use crate::durable;

/// Lease area alignment for 512-byte sectors (oVirt's ALIGNMENT).
pub const ALIGNMENT: u64 = 1 << 20;
/// Sector size written in new domains.
pub const BLOCK_SIZE: u64 = 512;
/// Size of the mailbox files.
pub const MAILBOX_SIZE: u64 = 16 << 20;
/// Domain format version sdm writes and requires.
pub const DOMAIN_VERSION: u32 = 5;
/// Longest domain description (oVirt's API limit).
pub const MAX_DOMAIN_DESCRIPTION: usize = 50;
/// Prefix of images being deleted.
pub const REMOVE_ME_PREFIX: &str = "_remove_me_";
/// Prefix of images being deleted with wipe.
pub const REMOVE_ME_ZERO_PREFIX: &str = "_remove_me_ZERO_";

const XLEASES_INDEX_SIZE: usize = 62 * 4096;
const XLEASES_MAGIC: i32 = 0x1215_2016;
const XLEASES_MAX_RECORDS: usize = 3960;

/// An attached domain.
#[derive(Debug)]
pub struct Domain {
    /// Domain id.
    pub sd_id: Uuid,
    /// The domain directory, `<root>/<sd_id>`, canonical.
    pub dir: PathBuf,
    /// Metadata as read at attach.
    pub metadata: DomainMetadata,
    /// Lease backend of this domain's volumes.
    pub leases: Arc<dyn LeaseBackend>,
}

/// Files of one volume.
#[derive(Clone, Debug)]
pub struct VolumePaths {
    /// Data file.
    pub data: PathBuf,
    /// `<vol>.meta`.
    pub meta: PathBuf,
    /// `<vol>.lease`.
    pub lease: PathBuf,
}

impl Domain {
    /// Formats a new domain at `root/<sd_id>`. Returns the domain directory.
    pub fn create(
        root: &Path,
        sd_id: &Uuid,
        description: &str,
        leases: &dyn LeaseBackend,
        io_timeout_s: u32,
    ) -> Result<PathBuf, StorageError> {
        if description.chars().count() > MAX_DOMAIN_DESCRIPTION {
            return Err(StorageError::Invalid(format!(
                "domain description is longer than {MAX_DOMAIN_DESCRIPTION} characters"
            )));
        }
        let meta = fs::metadata(root).map_err(|e| StorageError::NotADomain {
            path: root.to_path_buf(),
            why: format!("cannot create a domain there: {e}"),
        })?;
        if !meta.is_dir() {
            return Err(StorageError::Invalid(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let root = root
            .canonicalize()
            .map_err(|e| StorageError::io("resolve", root, e))?;
        let final_dir = root.join(sd_id.as_str());
        if final_dir.exists() {
            return Err(StorageError::DomainExists(sd_id.to_string()));
        }
        let tmp = root.join(format!(".{sd_id}.creating"));
        if tmp.exists() {
            // A previous create crashed half-way; nothing refers to it.
            fs::remove_dir_all(&tmp).map_err(|e| StorageError::io("remove", &tmp, e))?;
        }
        let res = Self::format_tree(&tmp, &root, sd_id, description, leases, io_timeout_s);
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &final_dir).map_err(|e| StorageError::io("rename", &tmp, e))?;
        durable::sync_dir(&root)?;
        Ok(final_dir)
    }

    fn format_tree(
        dir: &Path,
        root: &Path,
        sd_id: &Uuid,
        description: &str,
        leases: &dyn LeaseBackend,
        io_timeout_s: u32,
    ) -> Result<(), StorageError> {
        let mkdir = |p: &Path| {
            fs::DirBuilder::new()
                .mode(0o775)
                .create(p)
                .map_err(|e| StorageError::io("mkdir", p, e))
        };
        mkdir(dir)?;
        let dom_md = dir.join("dom_md");
        mkdir(&dom_md)?;
        mkdir(&dir.join("images"))?;
        for (name, size) in [
            ("ids", 0),
            ("leases", 0),
            ("inbox", MAILBOX_SIZE),
            ("outbox", MAILBOX_SIZE),
        ] {
            create_sized(&dom_md.join(name), size)?;
        }
        let shared = leases.kind() != "local";
        if shared {
            write_xleases(&dom_md.join("xleases"), sd_id)?;
        }
        leases.format_domain(
            sd_id.as_str(),
            &dom_md.join("ids"),
            &dom_md.join("leases"),
            io_timeout_s,
        )?;

        let mut md = DomainMetadata::default();
        md.set("ALIGNMENT", ALIGNMENT.to_string());
        md.set("BLOCK_SIZE", BLOCK_SIZE.to_string());
        md.set("CLASS", "Data");
        md.set("DESCRIPTION", description);
        md.set("IOOPTIMEOUTSEC", "10");
        md.set("LEASERETRIES", "3");
        md.set("LEASETIMESEC", "60");
        md.set("LOCKPOLICY", "");
        md.set("LOCKRENEWALINTERVALSEC", "5");
        md.set("POOL_UUID", "");
        md.set("REMOTE_PATH", root.to_string_lossy());
        md.set("ROLE", "Regular");
        md.set("SDUUID", sd_id.as_str());
        md.set("TYPE", if shared { "POSIXFS" } else { "LOCALFS" });
        md.set("VERSION", DOMAIN_VERSION.to_string());
        durable::replace(&dom_md.join("metadata"), &md.to_bytes())?;
        durable::sync_dir(&dom_md)?;
        durable::sync_dir(dir)?;
        Ok(())
    }

    /// Opens the domain whose directory is `dir`, verifying its metadata.
    pub fn open(dir: &Path, leases: Arc<dyn LeaseBackend>) -> Result<Domain, StorageError> {
        let not = |why: String| StorageError::NotADomain {
            path: dir.to_path_buf(),
            why,
        };
        let dir = dir.canonicalize().map_err(|e| not(e.to_string()))?;
        if !dir.is_dir() {
            return Err(not("not a directory".into()));
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !is_canonical_uuid(name) {
            return Err(not("the directory name is not a domain UUID".into()));
        }
        let md_path = dir.join("dom_md").join("metadata");
        let raw = durable::read_direct(&md_path).map_err(|e| {
            if e.is_not_found() {
                not("dom_md/metadata is missing".into())
            } else {
                StorageError::Durable(e)
            }
        })?;
        let metadata = DomainMetadata::parse(&raw)?;
        if metadata.get("SDUUID") != Some(name) {
            return Err(not(format!(
                "SDUUID {:?} does not match the directory name",
                metadata.get("SDUUID").unwrap_or("")
            )));
        }
        match metadata.get("VERSION").map(str::trim) {
            Some("5") => {}
            Some(v) => {
                return Err(StorageError::Unsupported(format!(
                    "domain {name} has format version {v}; sdm handles version 5 (upgrade the domain with oVirt first)"
                )))
            }
            None => return Err(not("metadata has no VERSION".into())),
        }
        if metadata.get("CLASS").map(str::trim) != Some("Data") {
            return Err(StorageError::Unsupported(format!(
                "domain {name} is of class {:?}; sdm handles Data domains",
                metadata.get("CLASS").unwrap_or("")
            )));
        }
        if !dir.join("images").is_dir() {
            return Err(not("images/ is missing".into()));
        }
        Ok(Domain {
            sd_id: Uuid::parse(name).map_err(not)?,
            dir,
            metadata,
            leases,
        })
    }

    /// `dom_md/`.
    pub fn dom_md(&self) -> PathBuf {
        self.dir.join("dom_md")
    }

    /// The lockspace file.
    pub fn ids_path(&self) -> PathBuf {
        self.dom_md().join("ids")
    }

    /// `images/`.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// `images/<img>`.
    pub fn image_dir(&self, img: &Uuid) -> PathBuf {
        self.images_dir().join(img.as_str())
    }

    /// Checks that `path` (a volume's data file, or an image directory) really lies inside
    /// this domain before the agent writes to it: it, and every directory above it, may be a
    /// link only within the domain — except that a volume may be a link to a block device, as
    /// oVirt block domains link images to logical volumes. Anything else is refused, so a link
    /// planted in a domain can never make the agent write, wipe or delete outside it.
    pub fn check_contained(&self, path: &Path) -> Result<(), StorageError> {
        use std::os::unix::fs::FileTypeExt;
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

    /// The files of a volume (in a live image).
    pub fn volume_paths(&self, img: &Uuid, vol: &Uuid) -> VolumePaths {
        volume_paths_in(&self.image_dir(img), vol)
    }

    /// The domain's description.
    pub fn description(&self) -> &str {
        self.metadata.get("DESCRIPTION").unwrap_or("")
    }

    /// Live images (directories named by a UUID; `_remove_me_` leftovers are not listed).
    pub fn list_images(&self) -> Result<Vec<Uuid>, StorageError> {
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

    /// Leftover directories of deletions (`_remove_me_*`), by name.
    pub fn list_leftovers(&self) -> Result<Vec<String>, StorageError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                if name.starts_with(REMOVE_ME_PREFIX) {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Volumes of a live image: every `<uuid>.meta` in its directory.
    pub fn list_volumes(&self, img: &Uuid) -> Result<Vec<Uuid>, StorageError> {
        let dir = self.image_dir(img);
        list_volumes_in(&dir).map_err(|e| match e {
            StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StorageError::ImageNotFound {
                    sd: self.sd_id.to_string(),
                    img: img.to_string(),
                }
            }
            e => e,
        })
    }

    /// Size and free space of the file system holding the domain.
    pub fn space(&self) -> (u64, u64) {
        statvfs_space(&self.dir).unwrap_or((0, 0))
    }
}

/// The files of volume `vol` in image directory `dir`.
pub fn volume_paths_in(dir: &Path, vol: &Uuid) -> VolumePaths {
    VolumePaths {
        data: dir.join(vol.as_str()),
        meta: dir.join(format!("{vol}.meta")),
        lease: dir.join(format!("{vol}.lease")),
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

fn statvfs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize;
    Some((st.f_blocks * frsize, st.f_bavail * frsize))
}

fn create_sized(path: &Path, size: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))?;
    f.set_len(size)
        .map_err(|e| StorageError::io("truncate", path, e))?;
    f.sync_all().map_err(|e| StorageError::io("fsync", path, e))
}

/// Formats the external-leases volume: slot 0 unused, the index at 1×ALIGNMENT (a 512-byte
/// header, then 3960 empty 64-byte records).
fn write_xleases(path: &Path, sd_id: &Uuid) -> Result<(), StorageError> {
    let mut index = vec![0u8; XLEASES_INDEX_SIZE];
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&XLEASES_MAGIC.to_be_bytes());
    h.push(0);
    h.extend_from_slice(b"0001");
    h.push(0);
    let mut ls = [0u8; 48];
    ls[..36].copy_from_slice(sd_id.as_str().as_bytes());
    h.extend_from_slice(&ls);
    h.push(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    h.extend_from_slice(format!("{now:010}").as_bytes());
    h.push(0);
    h.push(b'-');
    h.extend_from_slice(&[0u8; 440]);
    h.push(b'\n');
    debug_assert_eq!(h.len(), 512);
    index[..512].copy_from_slice(&h);
    for i in 0..XLEASES_MAX_RECORDS {
        let rec = &mut index[512 + i * 64..512 + (i + 1) * 64];
        rec[49..60].copy_from_slice(b"00000000000");
        rec[61] = b'-';
        rec[62] = b'-';
        rec[63] = b'\n';
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))?;
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(ALIGNMENT))
        .map_err(|e| StorageError::io("seek", path, e))?;
    f.write_all(&index)
        .map_err(|e| StorageError::io("write", path, e))?;
    f.sync_all().map_err(|e| StorageError::io("fsync", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdm_lease::LocalLeases;

    #[test]
    fn create_then_open_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let sd = Uuid::new_v4();
        let leases = Arc::new(LocalLeases::new(1));
        let dir = Domain::create(root.path(), &sd, "test domain", leases.as_ref(), 10).unwrap();
        assert_eq!(dir, root.path().canonicalize().unwrap().join(sd.as_str()));
        for f in ["metadata", "ids", "leases", "inbox", "outbox"] {
            assert!(dir.join("dom_md").join(f).exists(), "{f}");
        }
        assert_eq!(
            fs::metadata(dir.join("dom_md/inbox")).unwrap().len(),
            MAILBOX_SIZE
        );
        let d = Domain::open(&dir, leases.clone()).unwrap();
        assert_eq!(d.sd_id, sd);
        assert_eq!(d.description(), "test domain");
        assert_eq!(d.metadata.get("TYPE"), Some("LOCALFS"));
        assert!(matches!(
            Domain::create(root.path(), &sd, "again", leases.as_ref(), 10),
            Err(StorageError::DomainExists(_))
        ));
        assert!(d.list_images().unwrap().is_empty());
    }

    #[test]
    fn open_refuses_what_is_not_a_domain() {
        let root = tempfile::tempdir().unwrap();
        let leases: Arc<dyn LeaseBackend> = Arc::new(LocalLeases::new(1));
        assert!(matches!(
            Domain::open(root.path(), leases.clone()),
            Err(StorageError::NotADomain { .. })
        ));
        let fake = root.path().join(Uuid::new_v4().as_str());
        fs::create_dir_all(fake.join("dom_md")).unwrap();
        assert!(matches!(
            Domain::open(&fake, leases),
            Err(StorageError::NotADomain { .. })
        ));
    }
}
