//! The agent's state and its synchronous verbs (domains, images, volumes, hosts). Data
//! operations that run as jobs live in `ops`, which builds on this module (never the reverse).
//!
//! Every method here may block on file IO; the RPC layer calls them on blocking threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_lease::LeaseBackend;

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
use crate::storage::block::{BlockEnv, BlockError};
use crate::storage::domain::{Domain, NewSite, Site};
use crate::storage::md::{DomainMetadata, SDM_LEASES_KEY};
use crate::storage::registry::Registry;
use crate::storage::volume::{self, NewVolume};
use crate::storage::StorageError;

mod domains;

/// A domain to attach at start: where, the lease backend expected (if any), force, its kind.
type Wanted = (PathBuf, Option<LeaseBackendKind>, bool, DomainKind);

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
    /// Block domains' LVM and activation layer (None when it could not be set up; `block_error`
    /// says why).
    pub block: Option<Arc<BlockEnv>>,
    block_error: Option<String>,
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
        let (block, block_error) = start_block(&cfg);
        let agent = Arc::new(Agent {
            holders,
            block,
            block_error,
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
            block_activation: self.block.as_ref().map(|b| b.mode().as_str().to_string()),
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

    /// The block layer, or why there is none.
    pub fn block_env(&self) -> Result<&Arc<BlockEnv>, AgentError> {
        self.block.as_ref().ok_or_else(|| {
            StorageError::from(BlockError::Unavailable(
                self.block_error.clone().unwrap_or_default(),
            ))
            .into()
        })
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
            initial_size: None,
            requested_initial_size: p.initial_size.map(|s| s.get()),
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
            sequence: p.sequence.map_or(0, sdm_proto::Sequence::get),
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

fn flag(f: Option<sdm_proto::Flag>) -> bool {
    f.is_some_and(sdm_proto::Flag::get)
}

/// Sets up the block layer and undoes activations a killed agent left. Failing leaves the
/// agent without block domains (and says why), never without file domains.
fn start_block(cfg: &Config) -> (Option<Arc<BlockEnv>>, Option<String>) {
    let env = match BlockEnv::new(&cfg.block, &cfg.state_dir) {
        Ok(env) => env,
        Err(e) => {
            let why = e.to_string();
            tracing::error!(error = %why, "block domains are unavailable");
            return (None, Some(why));
        }
    };
    match env.cleanup_stale() {
        Ok(r) if r.removed.is_empty() && r.failed.is_empty() => {}
        Ok(r) => {
            tracing::info!(removed = ?r.removed, failed = ?r.failed, "undid LV activations left by an earlier run")
        }
        Err(e) => tracing::error!(error = %e, "cannot undo LV activations left by an earlier run"),
    }
    tracing::info!(activation = env.mode().as_str(), "block layer ready");
    (Some(Arc::new(env)), None)
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
    if cfg.io.block_queue_depth > 0 {
        e.block_queue_depth = cfg.io.block_queue_depth;
    }
    if cfg.io.block_chunk_size > 0 {
        e.block_chunk_size = cfg.io.block_chunk_size;
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
