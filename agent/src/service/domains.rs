//! Domains on this host: attached at start (configured, embedded default, remembered), created
//! (file or block), attached and detached by the verbs, and listed. A domain attaches with the
//! lease backend its metadata records; the checks that refuse a mismatch or local leases on a
//! shared file system live here too.

use super::*;

impl Agent {
    pub(super) fn attach_at_start(&self) -> Result<(), AgentError> {
        // (path, expected lease backend, force, kind): a domain attaches with the backend it
        // was formatted for; only the config may expect one (and is refused when it differs).
        let mut wanted: Vec<Wanted> = Vec::new();
        for a in self.registry.persisted()? {
            let dkind = DomainKind::parse(&a.kind).unwrap_or(DomainKind::File);
            wanted.push((a.path, None, a.force, dkind));
        }
        for d in &self.cfg.domains {
            let dkind = match d.kind {
                Some(sdm_proto::DomainKindName::Block) => DomainKind::Block,
                _ => DomainKind::File,
            };
            wanted.push((d.path.clone(), d.lease_backend, d.force, dkind));
        }
        if self.cfg.create_default_domains {
            let root = self.default_domain_root();
            let existing = embedded_domains(&root);
            if existing.is_empty() {
                // The default backend is local unless the config says otherwise (the fault
                // suites run the same default domains over sanlock).
                let kind = self.leases.default_kind();
                match check_local_allowed(kind, &self.cfg.state_dir, false) {
                    Ok(()) => wanted.extend(self.create_embedded(&root, kind)?),
                    Err(e) => {
                        let e = ApiError::from(AgentError::from(e));
                        tracing::error!(error = %e.message, "not creating the embedded domains");
                    }
                }
            } else {
                wanted.extend(
                    existing
                        .into_iter()
                        .map(|p| (p, None, false, DomainKind::File)),
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (path, expected, force, dkind) in wanted {
            let canon = path.canonicalize().unwrap_or(path.clone());
            if !seen.insert(canon) {
                continue;
            }
            let attached = Site::of(dkind, &path, self.block.as_ref())
                .map_err(AgentError::from)
                .and_then(|site| self.attach_site(&site, expected, force));
            match attached {
                Ok(a) => {
                    tracing::info!(sd_id = %a.sd_id, path = %path.display(), lease_backend = a.lease_backend.as_str(), "attached domain")
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    tracing::error!(path = %path.display(), error = %e.message, "cannot attach domain at start")
                }
            }
        }
        Ok(())
    }

    /// Creates the embedded default's two domains with `kind` leases.
    fn create_embedded(
        &self,
        root: &Path,
        kind: LeaseBackendKind,
    ) -> Result<Vec<Wanted>, AgentError> {
        let backend = self.leases.get(kind)?;
        let mut out = Vec::new();
        for n in 1..=2 {
            // Each under a root of its own, as each real file domain has its own export:
            // VDSM's discovery finds one domain per mounted directory.
            let own_root = root.join(n.to_string());
            std::fs::create_dir_all(&own_root)
                .map_err(|e| StorageError::io("mkdir", &own_root, e))?;
            let sd = Uuid::new_v4();
            let dir = Domain::create(
                &NewSite::Dir(own_root.clone()),
                &sd,
                &format!("sdm local domain {n}"),
                backend.as_ref(),
                self.leases.io_timeout_s(),
            )?;
            tracing::info!(sd_id = %sd, path = %dir.display(), lease_backend = kind.as_str(), "created embedded domain");
            out.push((dir, Some(kind), false, DomainKind::File));
        }
        Ok(out)
    }

    fn default_domain_root(&self) -> PathBuf {
        self.cfg.state_dir.join("domains")
    }

    /// Directories under which `StorageDomain.create` may format domains.
    pub fn domain_roots(&self) -> Vec<PathBuf> {
        let mut roots = self.cfg.domain_roots.clone();
        roots.push(self.default_domain_root());
        roots
    }

    /// Attaches the domain at `site` with the lease backend its metadata records. Refused
    /// (StorageDomainTypeError, nothing changed) when `expected` names the other backend, and
    /// when a local file domain is on a shared file system unless `force`.
    fn attach_site(
        &self,
        site: &Site,
        expected: Option<LeaseBackendKind>,
        force: bool,
    ) -> Result<Attached, AgentError> {
        if let Site::Vg { sd_id, .. } = site {
            // Attached already: opening it again would activate its LVs a second time.
            if let Ok(existing) = self.registry.get(sd_id) {
                if existing.backend.kind() == DomainKind::Block {
                    let kind = existing.metadata.lease_backend()?;
                    check_expected(&existing.metadata, existing.path(), kind, expected)?;
                    return Ok(Attached {
                        sd_id: sd_id.clone(),
                        lease_backend: kind,
                        fresh: None,
                    });
                }
            }
        }
        // The backend is chosen from the metadata before a block domain's LVs are activated
        // (its metadata-writer lease is taken with it), and refusals change nothing.
        let leases_for = |md: &DomainMetadata| -> Result<Arc<dyn LeaseBackend>, StorageError> {
            let kind = md.lease_backend()?;
            check_expected(md, &site_path(site), kind, expected)?;
            if let Site::Dir(path) = site {
                check_local_allowed(kind, path, force)?;
            }
            Ok(self.leases.get(kind)?)
        };
        let dom = Domain::open_with(site, &leases_for)?;
        let kind = dom.metadata.lease_backend()?;
        if let Ok(existing) = self.registry.get(&dom.sd_id) {
            if existing.path() == dom.path() {
                return Ok(Attached {
                    sd_id: dom.sd_id,
                    lease_backend: kind,
                    fresh: None,
                });
            }
        }
        dom.join_lockspace()?;
        let dom = Arc::new(dom);
        let fresh = self.registry.insert(dom.clone(), kind, force)?;
        Ok(Attached {
            sd_id: dom.sd_id.clone(),
            lease_backend: kind,
            fresh: fresh.then_some(dom),
        })
    }

    /// `StorageDomain.create`.
    pub fn create_domain(&self, p: &CreateDomainParams) -> Result<Attached, AgentError> {
        let sd = &p.sd_id;
        let description = p
            .description
            .as_ref()
            .map(Description::as_str)
            .unwrap_or("");
        if p.kind == Some(sdm_proto::DomainKindName::Block) {
            return self.create_block_domain(p, description);
        }
        let path = p
            .path
            .as_deref()
            .ok_or_else(|| ApiError::invalid("path is required to create a file domain"))?;
        let root = absolute(path)?;
        let canon = root
            .canonicalize()
            .map_err(|e| StorageError::Invalid(format!("cannot use {path}: {e}")))?;
        let allowed = self
            .domain_roots()
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|r| canon.starts_with(&r));
        if !allowed {
            return Err(ApiError::invalid(format!(
                "{path} is not under a configured domain root ({}); add it to `domain_roots` in the agent config",
                self.domain_roots().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )).into());
        }
        self.refuse_attached(sd)?;
        let kind = self.requested_backend(p);
        let force = flag(p.force);
        check_local_allowed(kind, &canon, force)?;
        let leases = self.leases.get(kind)?;
        let dir = Domain::create(
            &NewSite::Dir(canon),
            sd,
            description,
            leases.as_ref(),
            self.leases.io_timeout_s(),
        )?;
        tracing::info!(sd_id = %sd, path = %dir.display(), lease_backend = kind.as_str(), "created domain");
        self.attach_site(&Site::Dir(dir), Some(kind), force)
    }

    /// A domain id this host has attached already cannot be formatted again.
    fn refuse_attached(&self, sd: &Uuid) -> Result<(), AgentError> {
        match self.registry.get(sd) {
            Ok(_) => Err(StorageError::DomainExists(sd.to_string()).into()),
            Err(_) => Ok(()),
        }
    }

    /// The lease backend a new domain is formatted for: the request's, else the host's default.
    fn requested_backend(&self, p: &CreateDomainParams) -> LeaseBackendKind {
        p.lease_backend
            .map(LeaseBackendKind::from)
            .unwrap_or(self.leases.default_kind())
    }

    fn create_block_domain(
        &self,
        p: &CreateDomainParams,
        description: &str,
    ) -> Result<Attached, AgentError> {
        let sd = &p.sd_id;
        let env = self.block_env()?;
        let devices: Vec<PathBuf> = p
            .devices
            .iter()
            .flatten()
            .map(|d| absolute(d))
            .collect::<Result<_, _>>()?;
        self.refuse_attached(sd)?;
        // TYPE is ISCSI either way; local leases (one host only) are recorded as the
        // `MDT_SDM_LEASES=local` tag. No statfs check: block devices have no file system type.
        let kind = self.requested_backend(p);
        let leases = self.leases.get(kind)?;
        let site = NewSite::Devices {
            env: env.clone(),
            devices: devices.clone(),
        };
        let path = Domain::create(
            &site,
            sd,
            description,
            leases.as_ref(),
            self.leases.io_timeout_s(),
        )?;
        tracing::info!(sd_id = %sd, path = %path.display(), devices = ?devices, lease_backend = kind.as_str(), "created block domain");
        self.attach_site(
            &Site::Vg {
                env: env.clone(),
                sd_id: sd.clone(),
            },
            Some(kind),
            false,
        )
    }

    /// `StorageDomain.attach`: with the lease backend the domain records (never the host's
    /// default: two hosts must agree on it).
    pub fn attach_domain(&self, p: &AttachDomainParams) -> Result<Attached, AgentError> {
        let site = if p.kind == Some(sdm_proto::DomainKindName::Block) {
            let named = || {
                p.path
                    .strip_prefix("/dev/")
                    .and_then(|id| Uuid::parse(id).ok())
            };
            let sd_id = p.sd_id.clone().or_else(named).ok_or_else(|| {
                ApiError::invalid("a block domain is attached by sd_id (or path /dev/<sd_id>)")
            })?;
            Site::Vg {
                env: self.block_env()?.clone(),
                sd_id,
            }
        } else {
            Site::Dir(absolute(&p.path)?)
        };
        let a = self.attach_site(
            &site,
            p.lease_backend.map(LeaseBackendKind::from),
            flag(p.force),
        )?;
        tracing::info!(sd_id = %a.sd_id, kind = site.kind().as_str(), lease_backend = a.lease_backend.as_str(), "attached domain");
        Ok(a)
    }

    /// `StorageDomain.detach`: refused while a job holds the domain.
    pub fn detach_domain(&self, sd: &Uuid) -> Result<(), AgentError> {
        let dom = self.registry.get(sd)?;
        let _guard = self
            .locks
            .lock(
                &[(domain_key(sd.as_str()), Mode::Exclusive)],
                Duration::from_millis(200),
                &|| false,
            )
            .map_err(|_| {
                StorageError::Busy(format!("storage domain {sd} is in use by running jobs"))
            })?;
        self.registry.remove(sd)?;
        if let Err(e) = dom.leave_lockspace() {
            tracing::warn!(sd_id = %sd, error = %e, "leaving the lockspace failed");
        }
        tracing::info!(sd_id = %sd, "detached domain");
        Ok(())
    }

    /// `StorageDomain.list`.
    pub fn list_domains(&self) -> Vec<DomainInfo> {
        self.registry
            .all()
            .into_iter()
            .map(|(d, kind)| {
                let (capacity, free) = d.backend.space();
                DomainInfo {
                    sd_id: d.sd_id.clone(),
                    path: d.path().to_string_lossy().into_owned(),
                    kind: d.backend.kind().as_str().into(),
                    description: d.description().to_string(),
                    capacity: Size(capacity),
                    free: Size(free),
                    lease_backend: kind.as_str().into(),
                    version: 5,
                }
            })
            .collect()
    }
}

/// Local leases on a file system other hosts may mount are refused unless forced: OFD locks
/// do not reach other hosts, so two of them could write one volume at once.
fn check_local_allowed(
    kind: LeaseBackendKind,
    path: &Path,
    force: bool,
) -> Result<(), StorageError> {
    if kind != LeaseBackendKind::Local || force {
        return Ok(());
    }
    match crate::storage::fstype::shared_fs(path)? {
        None => Ok(()),
        Some(fs) => Err(StorageError::DomainType(format!(
            "{} is on {fs}, which other hosts can mount: local leases (OFD locks) do not exclude \
             them; use a sanlock domain there, or force it if this host alone ever uses it",
            path.display()
        ))),
    }
}

/// Refuses a domain formatted for `kind` leases when the caller expects the other backend:
/// hosts that disagree on it do not exclude each other.
fn check_expected(
    md: &DomainMetadata,
    path: &Path,
    kind: LeaseBackendKind,
    expected: Option<LeaseBackendKind>,
) -> Result<(), StorageError> {
    match expected.filter(|w| *w != kind) {
        None => Ok(()),
        Some(want) => Err(StorageError::DomainType(format!(
            "domain {} at {} was formatted for {} leases (TYPE={}{}); attaching it with {} leases \
             is refused: hosts that disagree on the lease backend do not exclude each other",
            md.get("SDUUID").unwrap_or(""),
            path.display(),
            kind.as_str(),
            md.get("TYPE").unwrap_or(""),
            md.get(SDM_LEASES_KEY)
                .map(|v| format!(", {SDM_LEASES_KEY}={v}"))
                .unwrap_or_default(),
            want.as_str()
        ))),
    }
}

/// Where a site is attached from, for messages.
fn site_path(site: &Site) -> PathBuf {
    match site {
        Site::Dir(p) => p.clone(),
        Site::Vg { sd_id, .. } => crate::storage::block::format::domain_path(sd_id),
    }
}

/// The embedded default's domains under `root`: `<root>/<n>/<sd_id>`, and `<root>/<sd_id>` as
/// agents before that layout made them (such a state directory keeps working as it is).
fn embedded_domains(root: &Path) -> Vec<PathBuf> {
    let mut found = DomainKind::File.discover(root);
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            e.path().is_dir().then(|| (n, e.path()))
        })
        .collect();
    numbered.sort();
    for (_, dir) in numbered {
        found.extend(DomainKind::File.discover(&dir));
    }
    found
}
