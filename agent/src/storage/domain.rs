//! An attached domain: what every kind shares (id, metadata, lease backend) around its
//! [`DomainBackend`], and the one place that dispatches on [`DomainKind`] to discover, format
//! and open domains.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdm_lease::{Lease, LeaseBackend, LeaseError, LeaseStatus};
use sdm_proto::Uuid;

use super::backend::{DomainBackend, DomainKind, LeaseLocation};
use super::block::{self, BlockEnv, BlockError};
use super::file;
use super::md::{DomainMetadata, MAX_DOMAIN_DESCRIPTION};
use super::StorageError;

/// Picks a domain's lease backend from its metadata (or refuses the domain).
pub type LeasesFor<'a> =
    dyn Fn(&DomainMetadata) -> Result<Arc<dyn LeaseBackend>, StorageError> + 'a;

/// Where an existing domain is.
#[derive(Clone, Debug)]
pub enum Site {
    /// A file domain: its directory (`.../<sd_id>`).
    Dir(PathBuf),
    /// A block domain: the VG named `sd_id` among the host's block devices.
    Vg {
        /// The host's block layer.
        env: Arc<BlockEnv>,
        /// The domain.
        sd_id: Uuid,
    },
}

/// Where a new domain is made.
#[derive(Clone, Debug)]
pub enum NewSite {
    /// A file domain at `<root>/<sd_id>`.
    Dir(PathBuf),
    /// A block domain: a VG named by the domain id on these devices (its PVs, the first
    /// holding the VG metadata).
    Devices {
        /// The host's block layer.
        env: Arc<BlockEnv>,
        /// The devices, as the client named them.
        devices: Vec<PathBuf>,
    },
}

impl Site {
    /// The site of a domain of `kind` attached from `path` before (what the registry keeps:
    /// a file domain's directory, a block domain's `/dev/<sd_id>`).
    pub fn of(
        kind: DomainKind,
        path: &Path,
        env: Option<&Arc<BlockEnv>>,
    ) -> Result<Site, StorageError> {
        match kind {
            DomainKind::File => Ok(Site::Dir(path.to_path_buf())),
            DomainKind::Block => {
                let env = env.ok_or(BlockError::NotConfigured)?;
                let sd_id = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| Uuid::parse(n).ok())
                    .ok_or_else(|| StorageError::NotADomain {
                        path: path.to_path_buf(),
                        why: "a block domain is named /dev/<sd_id>".into(),
                    })?;
                Ok(Site::Vg {
                    env: env.clone(),
                    sd_id,
                })
            }
        }
    }

    /// The kind of domain found there.
    pub fn kind(&self) -> DomainKind {
        match self {
            Site::Dir(_) => DomainKind::File,
            Site::Vg { .. } => DomainKind::Block,
        }
    }
}

/// An attached domain.
#[derive(Debug)]
pub struct Domain {
    /// Domain id.
    pub sd_id: Uuid,
    /// Metadata as read at attach.
    pub metadata: DomainMetadata,
    /// Lease backend of this domain's volumes.
    pub leases: Arc<dyn LeaseBackend>,
    /// How this kind of domain stores what it stores.
    pub backend: Box<dyn DomainBackend>,
}

impl DomainKind {
    /// Domains of this kind found under `root` (file: every `<uuid>/dom_md` directly below;
    /// block domains are not found in directories).
    pub fn discover(self, root: &Path) -> Vec<PathBuf> {
        match self {
            DomainKind::File => file::layout::discover(root),
            DomainKind::Block => Vec::new(),
        }
    }
}

impl Domain {
    /// Formats a new domain at `site` (file: `root/<sd_id>`; block: a VG on the devices).
    /// Returns where it is to be attached from.
    pub fn create(
        site: &NewSite,
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
        match site {
            NewSite::Dir(root) => {
                file::layout::create(root, sd_id, description, leases, io_timeout_s)
            }
            NewSite::Devices { env, devices } => {
                block::format::create(env, devices, sd_id, description, leases, io_timeout_s)
            }
        }
    }

    /// Opens the domain at `site`, verifying its metadata, with `leases` as its lease backend.
    pub fn open(site: &Site, leases: Arc<dyn LeaseBackend>) -> Result<Domain, StorageError> {
        Domain::open_with(site, &|_| Ok(leases.clone()))
    }

    /// Opens the domain at `site`, verifying its metadata; `leases_for` picks its lease backend
    /// from that metadata (and may refuse it) before anything is activated or joined: a block
    /// domain's metadata-writer lease is taken with the backend chosen here.
    pub fn open_with(site: &Site, leases_for: &LeasesFor<'_>) -> Result<Domain, StorageError> {
        let (backend, metadata, leases): (Box<dyn DomainBackend>, DomainMetadata, _) = match site {
            Site::Dir(path) => {
                let (b, md) = file::FileDomain::open(path)?;
                let leases = leases_for(&md)?;
                (Box::new(b), md, leases)
            }
            Site::Vg { env, sd_id } => {
                let (b, md, leases) = block::BlockDomain::open(env, sd_id, leases_for)?;
                (Box::new(b), md, leases)
            }
        };
        let sd_id = Uuid::parse(metadata.get("SDUUID").unwrap_or("")).map_err(|why| {
            StorageError::NotADomain {
                path: backend.path().to_path_buf(),
                why,
            }
        })?;
        Ok(Domain {
            sd_id,
            metadata,
            leases,
            backend,
        })
    }

    /// Where the domain is attached from.
    pub fn path(&self) -> &Path {
        self.backend.path()
    }

    /// The domain's description.
    pub fn description(&self) -> &str {
        self.metadata.get("DESCRIPTION").unwrap_or("")
    }

    /// Where a volume's lease lives.
    pub fn volume_lease(&self, img: &Uuid, vol: &Uuid) -> Result<LeaseLocation, StorageError> {
        self.backend.volume_lease(img, vol)
    }

    /// Takes a volume's lease, never waiting for another holder.
    pub fn acquire_lease(&self, vol: &Uuid, at: &LeaseLocation) -> Result<Lease, LeaseError> {
        let started = std::time::Instant::now();
        let r = self
            .leases
            .acquire(self.sd_id.as_str(), vol.as_str(), &at.path, at.offset);
        crate::metrics::lease_acquired(
            started.elapsed(),
            r.as_ref()
                .err()
                .map(|e| crate::metrics::lease_failure(e.kind())),
        );
        r
    }

    /// Takes the lease of a volume of a live image, never waiting for another holder.
    pub fn acquire_volume_lease(&self, img: &Uuid, vol: &Uuid) -> Result<Lease, StorageError> {
        Ok(self.acquire_lease(vol, &self.volume_lease(img, vol)?)?)
    }

    /// Who holds a volume's lease.
    pub fn lease_status(&self, img: &Uuid, vol: &Uuid) -> Result<LeaseStatus, StorageError> {
        let at = self.volume_lease(img, vol)?;
        Ok(self
            .leases
            .status(self.sd_id.as_str(), vol.as_str(), &at.path, at.offset)?)
    }

    /// Joins the domain's lockspace.
    pub fn join_lockspace(&self) -> Result<(), LeaseError> {
        self.leases
            .join(self.sd_id.as_str(), &self.backend.lockspace_path())
    }

    /// Leaves the domain's lockspace.
    pub fn leave_lockspace(&self) -> Result<(), LeaseError> {
        self.leases
            .leave(self.sd_id.as_str(), &self.backend.lockspace_path())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::file::layout::MAILBOX_SIZE;
    use sdm_lease::LocalLeases;

    #[test]
    fn create_then_open_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let sd = Uuid::new_v4();
        let leases = Arc::new(LocalLeases::new(1));
        let dir = Domain::create(
            &NewSite::Dir(root.path().to_path_buf()),
            &sd,
            "test domain",
            leases.as_ref(),
            10,
        )
        .unwrap();
        assert_eq!(dir, root.path().canonicalize().unwrap().join(sd.as_str()));
        for f in ["metadata", "ids", "leases", "inbox", "outbox"] {
            assert!(dir.join("dom_md").join(f).exists(), "{f}");
        }
        assert_eq!(
            fs::metadata(dir.join("dom_md/inbox")).unwrap().len(),
            MAILBOX_SIZE
        );
        let d = Domain::open(&Site::Dir(dir.clone()), leases.clone()).unwrap();
        assert_eq!(d.sd_id, sd);
        assert_eq!(d.description(), "test domain");
        assert_eq!(d.metadata.get("TYPE"), Some("LOCALFS"));
        assert_eq!(
            d.metadata.lease_backend().unwrap(),
            crate::config::LeaseBackendKind::Local
        );
        let mut md = d.metadata.clone();
        for (t, want) in [
            ("NFS", Some(crate::config::LeaseBackendKind::Sanlock)),
            ("POSIXFS", Some(crate::config::LeaseBackendKind::Sanlock)),
            ("GLUSTERFS", Some(crate::config::LeaseBackendKind::Sanlock)),
            ("LOCALFS", Some(crate::config::LeaseBackendKind::Local)),
            ("FLOPPY", None),
        ] {
            md.set("TYPE", t);
            assert_eq!(md.lease_backend().ok(), want, "{t}");
        }
        assert!(matches!(
            Domain::create(
                &NewSite::Dir(root.path().to_path_buf()),
                &sd,
                "again",
                leases.as_ref(),
                10
            ),
            Err(StorageError::DomainExists(_))
        ));
        assert!(d.backend.list_images().unwrap().is_empty());
    }

    #[test]
    fn open_refuses_what_is_not_a_domain() {
        let root = tempfile::tempdir().unwrap();
        let leases: Arc<dyn LeaseBackend> = Arc::new(LocalLeases::new(1));
        assert!(matches!(
            Domain::open(&Site::Dir(root.path().to_path_buf()), leases.clone()),
            Err(StorageError::NotADomain { .. })
        ));
        let fake = root.path().join(Uuid::new_v4().as_str());
        fs::create_dir_all(fake.join("dom_md")).unwrap();
        assert!(matches!(
            Domain::open(&Site::Dir(fake.clone()), leases),
            Err(StorageError::NotADomain { .. })
        ));
    }
}
