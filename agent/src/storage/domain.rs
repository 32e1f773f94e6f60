//! An attached domain: what every kind shares (id, metadata, lease backend) around its
//! [`DomainBackend`], and the one place that dispatches on [`DomainKind`] to discover, format
//! and open domains.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdm_lease::{Lease, LeaseBackend, LeaseError, LeaseStatus};
use sdm_proto::Uuid;

use super::backend::{DomainBackend, DomainKind, LeaseLocation};
use super::file;
use super::md::{DomainMetadata, MAX_DOMAIN_DESCRIPTION};
use super::StorageError;

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
    /// Domains of this kind found under `root` (file: every `<uuid>/dom_md` directly below).
    pub fn discover(self, root: &Path) -> Vec<PathBuf> {
        match self {
            DomainKind::File => file::layout::discover(root),
        }
    }
}

impl Domain {
    /// Formats a new domain of `kind` at `root` (file: `root/<sd_id>`). Returns where it is to
    /// be attached from.
    pub fn create(
        kind: DomainKind,
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
        match kind {
            DomainKind::File => {
                file::layout::create(root, sd_id, description, leases, io_timeout_s)
            }
        }
    }

    /// Opens the domain of `kind` at `path`, verifying its metadata.
    pub fn open(
        kind: DomainKind,
        path: &Path,
        leases: Arc<dyn LeaseBackend>,
    ) -> Result<Domain, StorageError> {
        let (backend, metadata): (Box<dyn DomainBackend>, DomainMetadata) = match kind {
            DomainKind::File => {
                let (b, md) = file::FileDomain::open(path)?;
                (Box::new(b), md)
            }
        };
        let sd_id = Uuid::parse(metadata.get("SDUUID").unwrap_or("")).map_err(|why| {
            StorageError::NotADomain {
                path: path.to_path_buf(),
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
    pub fn volume_lease(&self, img: &Uuid, vol: &Uuid) -> LeaseLocation {
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
    pub fn acquire_volume_lease(&self, img: &Uuid, vol: &Uuid) -> Result<Lease, LeaseError> {
        self.acquire_lease(vol, &self.volume_lease(img, vol))
    }

    /// Who holds a volume's lease.
    pub fn lease_status(&self, img: &Uuid, vol: &Uuid) -> Result<LeaseStatus, LeaseError> {
        let at = self.volume_lease(img, vol);
        self.leases
            .status(self.sd_id.as_str(), vol.as_str(), &at.path, at.offset)
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
            DomainKind::File,
            root.path(),
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
        let d = Domain::open(DomainKind::File, &dir, leases.clone()).unwrap();
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
                DomainKind::File,
                root.path(),
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
            Domain::open(DomainKind::File, root.path(), leases.clone()),
            Err(StorageError::NotADomain { .. })
        ));
        let fake = root.path().join(Uuid::new_v4().as_str());
        fs::create_dir_all(fake.join("dom_md")).unwrap();
        assert!(matches!(
            Domain::open(DomainKind::File, &fake, leases),
            Err(StorageError::NotADomain { .. })
        ));
    }
}
