//! The set of attached domains, persisted in the state directory so that a restarted agent
//! attaches the same domains again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sdm_proto::Uuid;
use serde::{Deserialize, Serialize};

use super::domain::Domain;
use super::StorageError;
use crate::config::LeaseBackendKind;
use crate::durable;

/// One attached domain as persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attached {
    /// Domain directory.
    pub path: PathBuf,
    /// Lease backend.
    pub lease_backend: String,
    /// Attached with force (a local domain on a shared file system).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    domains: Vec<Attached>,
}

/// An attached domain, its lease backend, and whether it was attached with force.
type Entry = (Arc<Domain>, LeaseBackendKind, bool);

/// Attached domains.
pub struct Registry {
    state_file: PathBuf,
    domains: RwLock<BTreeMap<Uuid, Entry>>,
}

impl Registry {
    /// An empty registry persisting to `<state_dir>/domains.json`.
    pub fn new(state_dir: &Path) -> Registry {
        Registry {
            state_file: state_dir.join("domains.json"),
            domains: RwLock::new(BTreeMap::new()),
        }
    }

    /// Domains attached before the last stop.
    pub fn persisted(&self) -> Result<Vec<Attached>, StorageError> {
        match std::fs::read(&self.state_file) {
            Ok(b) => serde_json::from_slice::<StateFile>(&b)
                .map(|s| s.domains)
                .map_err(|e| {
                    StorageError::BadMetadata(format!("{}: {e}", self.state_file.display()))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StorageError::io("read", &self.state_file, e)),
        }
    }

    fn persist(&self, map: &BTreeMap<Uuid, Entry>) -> Result<(), StorageError> {
        let state = StateFile {
            domains: map
                .values()
                .map(|(d, k, force)| Attached {
                    path: d.path().to_path_buf(),
                    lease_backend: k.as_str().to_string(),
                    force: *force,
                })
                .collect(),
        };
        let data = serde_json::to_vec_pretty(&state).expect("state serializes");
        durable::replace(&self.state_file, &data)?;
        Ok(())
    }

    /// Adds an opened domain (`force`: attached with force). Attaching the same domain (same
    /// directory) again is a no-op; another directory with the same id is refused.
    pub fn insert(
        &self,
        dom: Arc<Domain>,
        kind: LeaseBackendKind,
        force: bool,
    ) -> Result<bool, StorageError> {
        let mut map = self.domains.write().unwrap_or_else(|e| e.into_inner());
        if let Some((existing, _, _)) = map.get(&dom.sd_id) {
            if existing.path() == dom.path() {
                return Ok(false);
            }
            return Err(StorageError::DomainExists(format!(
                "{} (attached from {})",
                dom.sd_id,
                existing.path().display()
            )));
        }
        map.insert(dom.sd_id.clone(), (dom, kind, force));
        self.persist(&map)?;
        Ok(true)
    }

    /// Removes a domain.
    pub fn remove(&self, sd: &Uuid) -> Result<Arc<Domain>, StorageError> {
        let mut map = self.domains.write().unwrap_or_else(|e| e.into_inner());
        let (dom, _, _) = map
            .remove(sd)
            .ok_or_else(|| StorageError::DomainNotAttached(sd.to_string()))?;
        self.persist(&map)?;
        Ok(dom)
    }

    /// An attached domain.
    pub fn get(&self, sd: &Uuid) -> Result<Arc<Domain>, StorageError> {
        self.domains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sd)
            .map(|(d, _, _)| d.clone())
            .ok_or_else(|| StorageError::DomainNotAttached(sd.to_string()))
    }

    /// Every attached domain with its lease backend kind.
    pub fn all(&self) -> Vec<(Arc<Domain>, LeaseBackendKind)> {
        self.domains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(d, k, _)| (d.clone(), *k))
            .collect()
    }
}
