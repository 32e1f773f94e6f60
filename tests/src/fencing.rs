//! Two hosts over one shared domain, each an agent with its own sanlock daemon and host id,
//! lockspace io_timeout 1 s: the set-up of the fencing tests (`tests/fencing.rs`), and what
//! they do to a host (freeze it, take a lease away behind its back).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sdm_client::{SdmApiClient, Via};
use sdm_lease::test_support::{sanlock_available, sanlock_binary, SanlockDaemon};
use sdm_proto::Uuid;

use crate::{uuid, AgentOptions, AgentProc};

/// One host: a sanlock daemon and the agent bound to it.
pub struct SanlockHost {
    /// The agent (dropped first: it holds a registration with the daemon).
    pub agent: AgentProc,
    /// Its own daemon.
    pub daemon: SanlockDaemon,
    /// Its host id in the lockspace.
    pub host_id: u64,
}

/// Agent config of a sanlock host that may create domains under `shared`.
pub fn sanlock_config(shared: &Path, run_dir: &Path) -> String {
    format!(
        "create_default_domains = false\ndomain_roots = [{shared:?}]\n[leases]\n\
         default_backend = \"sanlock\"\nsanlock_io_timeout_s = 1\nsanlock_run_dir = {run_dir:?}\n"
    )
}

impl SanlockHost {
    /// Starts a daemon and an agent (host `host_id`, extra environment `env`, e.g.
    /// FAILPOINTS) that may create domains under `shared`.
    pub fn start(name: &str, host_id: u64, shared: &Path, env: &[(&str, &str)]) -> SanlockHost {
        SanlockHost::start_with(name, host_id, shared, env, "")
    }

    /// [`start`](Self::start) with `extra` TOML after the generated config (e.g. an `[io]`
    /// table).
    pub fn start_with(
        name: &str,
        host_id: u64,
        shared: &Path,
        env: &[(&str, &str)],
        extra: &str,
    ) -> SanlockHost {
        let daemon = SanlockDaemon::start(name);
        let agent = AgentProc::start(AgentOptions {
            config: Some(sanlock_config(shared, daemon.run_dir()) + extra),
            host_id: Some(host_id),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        });
        SanlockHost {
            agent,
            daemon,
            host_id,
        }
    }

    /// Freezes the whole host: its sanlock daemon, then its agent (SIGSTOP).
    pub fn freeze(&self) {
        signal(self.daemon.pid(), libc::SIGSTOP);
        signal(self.agent.pid(), libc::SIGSTOP);
    }

    /// Thaws the whole host, the daemon first, then the agent, back to back.
    pub fn thaw(&self) {
        signal(self.daemon.pid(), libc::SIGCONT);
        if self.agent.pid() != 0 {
            signal(self.agent.pid(), libc::SIGCONT);
        }
    }

    /// Whether the agent process still runs (a zombie, killed by sanlock, counts as gone).
    pub fn agent_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.agent.pid())) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    /// `sanlock client release` of the lease at `path:offset` (volume `vol` of domain `sd`)
    /// from this host's agent, behind its back: as an operator or a revocation would.
    pub fn release_from_outside(&self, sd: &Uuid, vol: &Uuid, path: &str, offset: u64) {
        let out = std::process::Command::new(sanlock_binary().expect("sanlock binary"))
            .args(["client", "release", "-r"])
            .arg(format!("{sd}:{vol}:{path}:{offset}"))
            .args(["-p", &self.agent.pid().to_string()])
            .env("SANLOCK_RUN_DIR", self.daemon.run_dir())
            .output()
            .expect("run sanlock client release");
        assert!(
            out.status.success(),
            "sanlock client release: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Hosts A (id 1) and B (id 2) over one shared directory, in which B formatted a sanlock
/// domain that A attached (with the backend the domain records).
pub struct TwoHosts {
    /// Host A.
    pub a: SanlockHost,
    /// Host B.
    pub b: SanlockHost,
    /// The shared domain.
    pub sd: Uuid,
    /// Its directory.
    pub dir: PathBuf,
    /// The shared directory (removed last).
    pub shared: tempfile::TempDir,
}

/// Whether the sanlock tests can run here; prints `SKIPPED <test>: why` when not.
pub fn sanlock_or_skip(test: &str) -> bool {
    match sanlock_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

impl TwoHosts {
    /// Starts both hosts (`env_a`, `env_b`: extra environment of each agent), has B create
    /// the domain and A attach it. Joins take about 3 s each.
    pub async fn start(name: &str, env_a: &[(&str, &str)], env_b: &[(&str, &str)]) -> TwoHosts {
        TwoHosts::start_with(name, env_a, env_b, "").await
    }

    /// [`start`](Self::start) with `extra` TOML in both agents' config.
    pub async fn start_with(
        name: &str,
        env_a: &[(&str, &str)],
        env_b: &[(&str, &str)],
        extra: &str,
    ) -> TwoHosts {
        let shared = tempfile::Builder::new()
            .prefix("sdm-fence-")
            .tempdir()
            .expect("shared dir");
        let a = SanlockHost::start_with(&format!("{name}-a"), 1, shared.path(), env_a, extra);
        let b = SanlockHost::start_with(&format!("{name}-b"), 2, shared.path(), env_b, extra);
        let sd = uuid();
        let cb = b.agent.client();
        cb.api()
            .create_domain(
                sd.clone(),
                Some(shared.path().to_string_lossy().into()),
                None,
                None,
                None,
                None,
                None,
            )
            .await
            .via(&cb)
            .expect("B creates the shared domain");
        let dir = shared.path().join(sd.as_str());
        let ca = a.agent.client();
        ca.api()
            .attach_domain(dir.to_string_lossy().into(), None, None, None, None)
            .await
            .via(&ca)
            .expect("A attaches the shared domain");
        TwoHosts {
            a,
            b,
            sd,
            dir,
            shared,
        }
    }
}

/// Sends `sig` to `pid` (a process this test started).
pub fn signal(pid: u32, sig: libc::c_int) {
    assert!(pid != 0, "process is not running");
    // SAFETY: kill(2) on the pid of a process this test started and has not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `f` every `every` until it returns Some, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
