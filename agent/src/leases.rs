//! The agent's lease backends: `local` always, `sanlock` registered with the daemon the first
//! time a domain needs it (so an agent with only local domains runs without sanlock installed).

use std::sync::{Arc, Mutex};

use sdm_lease::{
    LeaseBackend, LeaseError, LocalLeases, LostSubscription, RegistrationLost, SanlockLeases,
    SanlockOptions,
};

use crate::config::{LeaseBackendKind, LeasesConfig};

/// What to call when this process loses a sanlock registration (on the lease crate's watcher
/// thread: short, never blocking).
pub type OnLost = Arc<dyn Fn(&RegistrationLost) + Send + Sync>;

/// Backends by kind.
pub struct LeaseBackends {
    host_id: u64,
    cfg: LeasesConfig,
    local: Arc<dyn LeaseBackend>,
    sanlock: Mutex<Option<(Arc<dyn LeaseBackend>, LostSubscription)>>,
    on_lost: OnLost,
}

impl LeaseBackends {
    /// Backends for this host; `on_lost` is subscribed to registration losses as soon as
    /// sanlock is in use.
    pub fn new(host_id: u64, cfg: LeasesConfig, on_lost: OnLost) -> LeaseBackends {
        LeaseBackends {
            host_id,
            cfg,
            local: Arc::new(LocalLeases::new(host_id)),
            sanlock: Mutex::new(None),
            on_lost,
        }
    }

    /// The backend of `kind`, registering with sanlock on first use.
    pub fn get(&self, kind: LeaseBackendKind) -> Result<Arc<dyn LeaseBackend>, LeaseError> {
        match kind {
            LeaseBackendKind::Local => Ok(self.local.clone()),
            LeaseBackendKind::Sanlock => {
                let mut slot = self.sanlock.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((b, _)) = slot.as_ref() {
                    return Ok(b.clone());
                }
                let opts = SanlockOptions {
                    io_timeout_s: self.cfg.sanlock_io_timeout_s,
                    run_dir: self.cfg.sanlock_run_dir.clone(),
                };
                let s = SanlockLeases::new(self.host_id, opts)?;
                let on_lost = self.on_lost.clone();
                let sub = s.on_registration_lost(move |lost| on_lost(lost));
                let b: Arc<dyn LeaseBackend> = Arc::new(s);
                tracing::info!(host_id = self.host_id, "registered with the sanlock daemon");
                *slot = Some((b.clone(), sub));
                Ok(b)
            }
        }
    }

    /// The configured default kind.
    pub fn default_kind(&self) -> LeaseBackendKind {
        self.cfg.default_backend
    }

    /// sanlock io_timeout: for new lockspaces, for joins, and for how long a job may go
    /// without a confirmed lease (`ops::lease_watch`).
    pub fn io_timeout_s(&self) -> u32 {
        self.cfg.sanlock_io_timeout_s
    }

    /// Kinds this agent can offer: local always, sanlock when libsanlock can be loaded and
    /// its daemon's socket is there (checked without registering), or sanlock is in use.
    pub fn available(&self) -> Vec<String> {
        let mut v = vec!["local".to_string()];
        if self.sanlock.lock().map(|s| s.is_some()).unwrap_or(false)
            || (sdm_lease::libsanlock_available() && sanlock_daemon_present(&self.cfg))
        {
            v.push("sanlock".to_string());
        }
        v
    }
}

fn sanlock_daemon_present(cfg: &LeasesConfig) -> bool {
    let dir = cfg
        .sanlock_run_dir
        .clone()
        .or_else(|| std::env::var_os("SANLOCK_RUN_DIR").map(Into::into))
        .unwrap_or_else(|| "/run/sanlock".into());
    dir.join("sanlock.sock").exists()
}
