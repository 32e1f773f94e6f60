//! The agent's state and its synchronous verbs (domains, images, volumes, hosts). Data
//! operations that run as jobs live in `ops`, which builds on this module (never the reverse).
//!
//! Every method here may block on file IO; the RPC layer calls them on blocking threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_proto::api::{AttachDomainParams, CreateDomainParams, CreateVolumeParams};
use sdm_proto::{
    ApiError, Capabilities, Description, DomainInfo, ErrorCode, HostStats, InvalidVolumeInfo,
    Legality, Size, StorageDomainInfo, Uuid, VolumeInfoReply,
};

use crate::config::{Config, LeaseBackendKind};
use crate::error::AgentError;
use crate::holders::LeaseHolders;
use crate::jobs::Jobs;
use crate::leases::LeaseBackends;
use crate::locks::{domain_key, image_key, LockManager, LockSet, Mode};
use crate::storage::backend::DomainKind;
use crate::storage::domain::Domain;
use crate::storage::registry::Registry;
use crate::storage::volume::{self, NewVolume};
use crate::storage::StorageError;

/// How long a synchronous verb waits for an image lock held by a job before giving up.
pub const SYNC_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The running agent.
pub struct Agent {
    /// Effective configuration.
    pub cfg: Config,
    /// Attached domains.
    pub registry: Registry,
    /// Host jobs.
    pub jobs: Arc<Jobs>,
    /// In-process locks.
    pub locks: Arc<LockManager>,
    /// Lease backends.
    pub leases: LeaseBackends,
    /// Jobs holding sanlock leases, stopped when their registration is lost.
    pub holders: Arc<LeaseHolders>,
    /// Data path.
    pub engine: sdm_io::Engine,
    started: Instant,
}

/// The outcome of attaching a domain: `fresh` holds the domain when this call attached it (not
/// when it was attached already), so that the caller, which holds the `Arc<Agent>`, collects its
/// deletion leftovers (`ops::gc`).
pub struct Attached {
    /// The domain's id.
    pub sd_id: Uuid,
    /// Its lease backend, as its metadata records it.
    pub lease_backend: LeaseBackendKind,
    /// The domain, when newly attached.
    pub fresh: Option<Arc<Domain>>,
}

impl Agent {
    /// Builds the agent: probes the data path, attaches the domains it had, those configured,
    /// and (embedded default, first start) creates two local domains. The caller collects the
    /// garbage of the attached domains (`ops::gc::collect_all`) before serving.
    pub fn start(cfg: Config) -> Result<Arc<Agent>, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| StorageError::io("create state directory", &cfg.state_dir, e))?;
        crate::durable::set_writer_host(cfg.host_id);
        let engine = sdm_io::Engine::new(engine_config(&cfg));
        let holders = Arc::new(LeaseHolders::default());
        let table = holders.clone();
        let leases = LeaseBackends::new(
            cfg.host_id,
            cfg.leases.clone(),
            Arc::new(move |lost| {
                table.registration_lost(lost);
            }),
        );
        let agent = Arc::new(Agent {
            holders,
            registry: Registry::new(&cfg.state_dir),
            jobs: Jobs::new(cfg.io.max_running_jobs, cfg.autodelete()),
            locks: Arc::new(LockManager::default()),
            leases,
            engine,
            started: Instant::now(),
            cfg,
        });
        agent.attach_at_start()?;
        Ok(agent)
    }

    fn attach_at_start(&self) -> Result<(), AgentError> {
        // (path, expected lease backend, force): a domain attaches with the backend it was
        // formatted for; only the config may expect one (and is refused when it differs).
        let mut wanted: Vec<(PathBuf, Option<LeaseBackendKind>, bool)> = Vec::new();
        for a in self.registry.persisted()? {
            wanted.push((a.path, None, a.force));
        }
        for d in &self.cfg.domains {
            wanted.push((d.path.clone(), d.lease_backend, d.force));
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
                wanted.extend(existing.into_iter().map(|p| (p, None, false)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (path, expected, force) in wanted {
            let canon = path.canonicalize().unwrap_or(path.clone());
            if !seen.insert(canon) {
                continue;
            }
            match self.attach_path(&path, expected, force) {
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
    #[allow(clippy::type_complexity)]
    fn create_embedded(
        &self,
        root: &Path,
        kind: LeaseBackendKind,
    ) -> Result<Vec<(PathBuf, Option<LeaseBackendKind>, bool)>, AgentError> {
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
                DomainKind::File,
                &own_root,
                &sd,
                &format!("sdm local domain {n}"),
                backend.as_ref(),
                self.leases.io_timeout_s(),
            )?;
            tracing::info!(sd_id = %sd, path = %dir.display(), lease_backend = kind.as_str(), "created embedded domain");
            out.push((dir, Some(kind), false));
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

    /// Takes locks for a synchronous verb (short wait).
    pub fn lock_sync(&self, wanted: &[(String, Mode)]) -> Result<LockSet, AgentError> {
        self.locks
            .lock(wanted, SYNC_LOCK_TIMEOUT, &|| false)
            .map_err(AgentError::from)
    }

    // --- host -----------------------------------------------------------------------------

    /// `Host.getCapabilities`.
    pub fn capabilities(&self) -> Capabilities {
        let host = crate::hostinfo::capabilities();
        Capabilities {
            version: env!("CARGO_PKG_VERSION").to_string(),
            host_id: self.cfg.host_id,
            io_uring: self.engine.backend() == sdm_io::BackendKind::IoUring,
            io_fallback_reason: self.engine.fallback_reason().map(str::to_string),
            lease_backends: self.leases.available(),
            domains: self
                .registry
                .all()
                .into_iter()
                .map(|(d, _)| d.sd_id.clone())
                .collect(),
            cpu_threads: host.cpu_threads,
            online_cpus: host.online_cpus,
            mem_size: host.mem_size,
            kernel_args: host.kernel_args,
            domain_versions: Some(vec![crate::storage::md::DOMAIN_VERSION]),
        }
    }

    /// `Host.getStats`.
    pub fn stats(&self) -> HostStats {
        let (running, pending) = self.jobs.counts();
        let rate = self.jobs.total_rate();
        let host = crate::hostinfo::stats();
        let uptime = self.started.elapsed().as_secs();
        HostStats {
            jobs_running: running,
            jobs_pending: pending,
            // Every byte a job moves is read once and written once (wipes only write, checksums
            // only read); the per-job rate is the logical rate, reported on both sides.
            read_bps: rate,
            write_bps: rate,
            max_running_jobs: self.jobs.max_running() as u64,
            uptime_s: uptime,
            rss_bytes: proc_rss(),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0),
            cpu_load: host.cpu_load,
            mem_free: host.mem_free,
            mem_used: host.mem_used,
            swap_total: host.swap_total,
            swap_free: host.swap_free,
            elapsed_time: Some(uptime.to_string()),
            boot_time: host.boot_time,
        }
    }

    // --- domains --------------------------------------------------------------------------

    /// Attaches the domain at `path` with the lease backend its metadata records. Refused
    /// (StorageDomainTypeError, nothing changed) when `expected` names the other backend, and
    /// when a local domain is on a shared file system unless `force`.
    fn attach_path(
        &self,
        path: &Path,
        expected: Option<LeaseBackendKind>,
        force: bool,
    ) -> Result<Attached, AgentError> {
        let mut dom = Domain::open(
            DomainKind::File,
            path,
            self.leases.get(LeaseBackendKind::Local)?,
        )?;
        let kind = dom.metadata.lease_backend()?;
        if let Some(want) = expected.filter(|w| *w != kind) {
            return Err(StorageError::DomainType(format!(
                "domain {} at {} was formatted for {} leases (TYPE={}); attaching it with {} leases is refused: \
                 hosts that disagree on the lease backend do not exclude each other",
                dom.sd_id,
                dom.path().display(),
                kind.as_str(),
                dom.metadata.get("TYPE").unwrap_or(""),
                want.as_str()
            ))
            .into());
        }
        check_local_allowed(kind, dom.path(), force)?;
        if let Ok(existing) = self.registry.get(&dom.sd_id) {
            if existing.path() == dom.path() {
                return Ok(Attached {
                    sd_id: dom.sd_id,
                    lease_backend: kind,
                    fresh: None,
                });
            }
        }
        dom.leases = self.leases.get(kind)?;
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
        let (sd, path) = (&p.sd_id, p.path.as_str());
        let description = p
            .description
            .as_ref()
            .map(Description::as_str)
            .unwrap_or("");
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
        if self.registry.get(sd).is_ok() {
            return Err(StorageError::DomainExists(sd.to_string()).into());
        }
        let kind = p
            .lease_backend
            .map(LeaseBackendKind::from)
            .unwrap_or(self.leases.default_kind());
        let force = flag(p.force);
        check_local_allowed(kind, &canon, force)?;
        let leases = self.leases.get(kind)?;
        let dir = Domain::create(
            DomainKind::File,
            &canon,
            sd,
            description,
            leases.as_ref(),
            self.leases.io_timeout_s(),
        )?;
        tracing::info!(sd_id = %sd, path = %dir.display(), lease_backend = kind.as_str(), "created domain");
        self.attach_path(&dir, Some(kind), force)
    }

    /// `StorageDomain.attach`: with the lease backend the domain records (never the host's
    /// default: two hosts must agree on it).
    pub fn attach_domain(&self, p: &AttachDomainParams) -> Result<Attached, AgentError> {
        let dir = absolute(&p.path)?;
        let a = self.attach_path(
            &dir,
            p.lease_backend.map(LeaseBackendKind::from),
            flag(p.force),
        )?;
        tracing::info!(sd_id = %a.sd_id, path = %dir.display(), lease_backend = a.lease_backend.as_str(), "attached domain");
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

    /// An attached domain.
    pub fn domain(&self, sd: &Uuid) -> Result<Arc<Domain>, AgentError> {
        Ok(self.registry.get(sd)?)
    }

    /// `StorageDomain.getInfo`.
    pub fn domain_info(&self, sd: &Uuid) -> Result<StorageDomainInfo, AgentError> {
        Ok(crate::storage::domain_info::domain_info(
            self.domain(sd)?.as_ref(),
        ))
    }

    /// `StorageDomain.getImages`.
    pub fn get_images(&self, sd: &Uuid) -> Result<Vec<Uuid>, AgentError> {
        Ok(self.domain(sd)?.backend.list_images()?)
    }

    /// `Image.getVolumes`: `[]` for an image the domain does not have, as VDSM answers.
    pub fn get_volumes(&self, sd: &Uuid, img: &Uuid) -> Result<Vec<Uuid>, AgentError> {
        match self.domain(sd)?.backend.list_volumes(img) {
            Err(StorageError::ImageNotFound { .. }) => Ok(Vec::new()),
            r => Ok(r?),
        }
    }

    // --- volumes --------------------------------------------------------------------------

    /// `Volume.create`: creates the volume at once and answers the id of a job registered as
    /// done, which stands for the task VDSM would answer.
    pub fn create_volume(&self, p: &CreateVolumeParams) -> Result<Uuid, AgentError> {
        let (sd, img) = (&p.sd_id, &p.img_id);
        let unsupported = |what: &str| -> AgentError {
            ApiError::new(ErrorCode::UnsupportedOperation, what.to_string()).into()
        };
        if p.parent_img_id
            .as_ref()
            .is_some_and(|i| !i.is_blank() && i != img)
        {
            return Err(unsupported(
                "a parent in another image (srcImgUUID, a template) is not supported",
            ));
        }
        if p.add_bitmaps.is_some_and(|f| f.get()) || p.bitmap.is_some() {
            return Err(unsupported(
                "bitmaps (addBitmaps, bitmap) are not supported",
            ));
        }
        let dom = self.domain(sd)?;
        let _locks = self.lock_sync(&[
            (domain_key(sd.as_str()), Mode::Shared),
            (image_key(sd.as_str(), img.as_str()), Mode::Exclusive),
        ])?;
        let req = NewVolume {
            img: img.clone(),
            vol: p.vol_id.clone(),
            capacity: p.capacity.get(),
            format: p.format,
            allocation: p.preallocate,
            parent: p.parent_vol_id.clone().filter(|v| !v.is_blank()),
            description: p
                .description
                .as_ref()
                .map(Description::as_str)
                .unwrap_or("")
                .to_string(),
            legality: if p.legal.is_none_or(|l| l.get()) {
                Legality::Legal
            } else {
                Legality::Illegal
            },
            disktype: p
                .disk_type
                .map(|d| d.as_str())
                .unwrap_or("DATA")
                .to_string(),
            sequence: p.sequence.map(u64::from).unwrap_or(0),
        };
        volume::create(&dom, &req)?;
        tracing::info!(sd_id = %sd, img_id = %img, vol_id = %p.vol_id, capacity = req.capacity, format = %p.format, "created volume");
        Ok(self.jobs.record_done(&Uuid::new_v4(), "create_volume")?)
    }

    /// `Volume.getInfo`: VDSM's INVALID answer when the volume's metadata or sizes cannot be
    /// read (a missing volume is VolumeDoesNotExist, as in VDSM).
    pub fn volume_info(
        &self,
        sd: &Uuid,
        img: &Uuid,
        vol: &Uuid,
    ) -> Result<VolumeInfoReply, AgentError> {
        let dom = self.domain(sd)?;
        match volume::info(&dom, img, vol) {
            Ok(i) => Ok(VolumeInfoReply::Info(Box::new(i))),
            Err(e @ StorageError::VolumeNotFound { .. }) => Err(e.into()),
            // VDSM looks for the volume only: VolumeDoesNotExist, also when its image is missing.
            Err(StorageError::ImageNotFound { .. }) => Err(StorageError::VolumeNotFound {
                sd: sd.to_string(),
                img: img.to_string(),
                vol: vol.to_string(),
            }
            .into()),
            Err(
                e @ (StorageError::BadMetadata(_)
                | StorageError::Io { .. }
                | StorageError::Durable(_)
                | StorageError::QemuImg(_)),
            ) => {
                tracing::warn!(sd_id = %sd, img_id = %img, vol_id = %vol, error = %crate::error::chain_message(&e), "volume metadata cannot be read: INVALID");
                Ok(VolumeInfoReply::Invalid(InvalidVolumeInfo::new()))
            }
            Err(e) => Err(e.into()),
        }
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

fn flag(f: Option<sdm_proto::Flag>) -> bool {
    f.is_some_and(sdm_proto::Flag::get)
}

fn engine_config(cfg: &Config) -> sdm_io::EngineConfig {
    let mut e = sdm_io::EngineConfig {
        backend: match cfg.io.backend.as_str() {
            "io_uring" => sdm_io::BackendChoice::IoUring,
            "sync" => sdm_io::BackendChoice::Sync,
            _ => sdm_io::BackendChoice::Auto,
        },
        ..Default::default()
    };
    if cfg.io.queue_depth > 0 {
        e.queue_depth = cfg.io.queue_depth;
    }
    if cfg.io.chunk_size > 0 {
        e.chunk_size = cfg.io.chunk_size;
    }
    e
}

fn absolute(path: &str) -> Result<PathBuf, AgentError> {
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return Err(ApiError::invalid("path must be a non-empty absolute path").into());
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(ApiError::invalid(format!("path {path:?} is not absolute")).into());
    }
    Ok(p)
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

fn proc_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
