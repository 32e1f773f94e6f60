//! Storage domains in oVirt's V5 layouts: formats ([`md`]), the backend seam between what all
//! kinds share and what differs ([`backend`]), attached domains ([`domain`], [`registry`]),
//! the rules of volumes ([`volume`]), the file backend ([`file`]), the block (LVM) backend
//! ([`block`]), qemu-img ([`qemu`]) and the external-leases index both kinds format
//! ([`xleases`]).
//!
//! Module dependencies run one way: `registry → domain → {file, block, backend}`,
//! `volume → domain`, `file → {backend, md, qemu, xleases}`, `block → {backend, md, qemu,
//! xleases}`, `backend → md`; [`StorageError`] is everyone's.

pub mod backend;
pub mod block;
pub mod checkpoint;
pub mod domain;
pub mod domain_info;
pub mod file;
pub mod fstype;
pub mod md;
pub mod qcow2;
pub mod qemu;
pub mod registry;
pub mod volume;
pub mod xleases;

use std::io;
use std::path::PathBuf;

use crate::durable::DurableError;

/// Errors of domain and volume handling.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The domain is not attached.
    #[error("storage domain {0} is not attached")]
    DomainNotAttached(String),
    /// The path holds no storage domain.
    #[error("{path} is not a storage domain: {why}")]
    NotADomain {
        /// The path given.
        path: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
    /// The domain exists already.
    #[error("storage domain {0} already exists")]
    DomainExists(String),
    /// The domain metadata checksum does not match its content.
    #[error("domain metadata seal is broken (MetaDataSealIsBroken): stored checksum {stored}, computed {computed}")]
    SealBroken {
        /// `_SHA_CKSUM` as stored.
        stored: String,
        /// What the content hashes to.
        computed: String,
    },
    /// Metadata could not be understood.
    #[error("invalid metadata: {0}")]
    BadMetadata(String),
    /// No such image.
    #[error("image {img} does not exist in domain {sd}")]
    ImageNotFound {
        /// Domain.
        sd: String,
        /// Image.
        img: String,
    },
    /// No such volume.
    #[error("volume {vol} does not exist in image {img} of domain {sd}")]
    VolumeNotFound {
        /// Domain.
        sd: String,
        /// Image.
        img: String,
        /// Volume.
        vol: String,
    },
    /// The volume exists already.
    #[error("volume {0} already exists")]
    VolumeExists(String),
    /// A shared (template) volume cannot be deleted.
    #[error("volume {0} is shared (a template) and cannot be deleted")]
    SharedVolume(String),
    /// A request that is malformed given the state it refers to.
    #[error("{0}")]
    Invalid(String),
    /// Not supported by sdm.
    #[error("{0}")]
    Unsupported(String),
    /// The domain is in use.
    #[error("{0}")]
    Busy(String),
    /// The domain's type forbids this use: a lease backend other than the one it was
    /// formatted with, or local leases on a shared file system without force.
    #[error("{0}")]
    DomainType(String),
    /// A system call failed.
    #[error("{op} {path} failed")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A metadata write failed.
    #[error("metadata write failed: {0}")]
    Durable(#[from] DurableError),
    /// A lease operation failed.
    #[error("lease: {0}")]
    Lease(#[from] sdm_lease::LeaseError),
    /// qemu-img failed.
    #[error("qemu-img failed: {0}")]
    QemuImg(String),
    /// LVM, activation or the metadata-writer lease of a block domain.
    #[error(transparent)]
    Block(#[from] block::BlockError),
}

impl StorageError {
    /// An IO error with its context.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
