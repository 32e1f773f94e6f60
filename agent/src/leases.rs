//! The agent's lease backends: `local` always, `sanlock` registered with the daemon the first
//! time a domain needs it (so an agent with only local domains runs without sanlock installed).

use std::sync::{Arc, Mutex};

use sdm_lease::{LeaseBackend, LeaseError, LocalLeases, SanlockLeases, SanlockOptions};

use crate::config::{LeaseBackendKind, LeasesConfig};

/// Backends by kind.
pub struct LeaseBackends {
    host_id: u64,
    cfg: LeasesConfig,
    local: Arc<dyn LeaseBackend>,
    sanlock: Mutex<Option<Arc<dyn LeaseBackend>>>,
}

impl LeaseBackends {
    /// Backends for this host.
    pub fn new(host_id: u64, cfg: LeasesConfig) -> LeaseBackends {
        LeaseBackends {
            host_id,
            cfg,
            local: Arc::new(LocalLeases::new(host_id)),
            sanlock: Mutex::new(None),
        }
    }

    /// The backend of `kind`, registering with sanlock on first use.
    pub fn get(&self, kind: LeaseBackendKind) -> Result<Arc<dyn LeaseBackend>, LeaseError> {
        match kind {
            LeaseBackendKind::Local => Ok(self.local.clone()),
            LeaseBackendKind::Sanlock => {
                let mut slot = self.sanlock.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(b) = slot.as_ref() {
                    return Ok(b.clone());
                }
                let opts = SanlockOptions {
                    io_timeout_s: self.cfg.sanlock_io_timeout_s,
                    run_dir: self.cfg.sanlock_run_dir.clone(),
                };
                let b: Arc<dyn LeaseBackend> = Arc::new(SanlockLeases::new(self.host_id, opts)?);
                tracing::info!(host_id = self.host_id, "registered with the sanlock daemon");
                *slot = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// The configured default kind.
    pub fn default_kind(&self) -> LeaseBackendKind {
        self.cfg.default_backend
    }

    /// sanlock io_timeout for new lockspaces.
    pub fn io_timeout_s(&self) -> u32 {
        self.cfg.sanlock_io_timeout_s
    }

    /// Kinds this agent can offer: local always, sanlock when its client library can reach a
    /// daemon (checked without registering).
    pub fn available(&self) -> Vec<String> {
        let mut v = vec!["local".to_string()];
        if self.sanlock.lock().map(|s| s.is_some()).unwrap_or(false)
            || sanlock_daemon_present(&self.cfg)
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
