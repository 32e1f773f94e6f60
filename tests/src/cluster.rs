//! Several real agents over one set of shared domains, the way an engine's hosts share storage:
//! the first agent creates the two embedded domains, the others attach the same directories at
//! start. Leases are the `local` backend (OFD locks), which conflict across these processes just
//! as sanlock leases conflict across hosts.
//!
//! Also: test disks with known content, SIGSTOP/SIGCONT, and [`FlakyProxy`], an HTTP relay that
//! loses chosen answers on their way back (the request reaches the agent, the reply does not).
//!
//! Rooms: this file holds [`Cluster`] itself (start, clients, jobs, signals); `disk` the test
//! disks and the checks of a source and a moved disk; `proxy` [`FlakyProxy`]; `engine` what an
//! engine-side test needs (event log, pool and follow settings, journal, [`Disks`] and a move
//! in the background).
//!
//! [`Disks`]: sdm_client::Disks

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{JobInfo, JobStatus, Uuid};

use crate::{volume_path, AgentOptions, AgentProc};

mod disk;
mod engine;
mod proxy;

pub use disk::{assert_moved, assert_source_untouched, create_disk, TestDisk, TestVolume};
pub use engine::{engine, engine_over, open_journal, spawn_move, test_follow, test_pool, EventLog};
pub use proxy::FlakyProxy;

/// Agents sharing two domains.
pub struct Cluster {
    /// The agents; agent 0 owns the domain directories (in its state directory).
    pub agents: Vec<AgentProc>,
    /// First domain ("sdm local domain 1").
    pub sd1: Uuid,
    /// Second domain.
    pub sd2: Uuid,
    /// Directory of `sd1`.
    pub dir1: PathBuf,
    /// Directory of `sd2`.
    pub dir2: PathBuf,
}

impl Cluster {
    /// Starts `n` agents (host ids 1..=n) over the two domains of the first.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Like [`start`](Self::start); `env` goes to every agent.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_each(n, |_| env.to_vec()).await
    }

    /// Like [`start`](Self::start); agent `i` (0-based) gets the environment `env(i)`.
    pub async fn start_each<'a>(
        n: usize,
        env: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
    ) -> Cluster {
        Self::start_configured(n, env, "").await
    }

    /// Like [`start_each`](Self::start_each), with `extra` TOML (e.g. an `[io]` table) in
    /// every agent's config.
    pub async fn start_configured<'a>(
        n: usize,
        env: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
        extra: &str,
    ) -> Cluster {
        let env_of = |i: usize| -> Vec<(String, String)> {
            env(i)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let first = AgentProc::start(AgentOptions {
            host_id: Some(1),
            config: (!extra.is_empty()).then(|| format!("create_default_domains = true\n{extra}")),
            env: env_of(0),
            ..Default::default()
        });
        let (sd1, sd2, dir1, dir2) = crate::default_domains(&first.client()).await;
        let mut agents = vec![first];
        for i in 2..=n {
            let config = format!(
                "create_default_domains = false\n\n[[domains]]\npath = {:?}\n\n[[domains]]\npath = {:?}\n{extra}",
                dir1.display().to_string(),
                dir2.display().to_string()
            );
            agents.push(AgentProc::start(AgentOptions {
                host_id: Some(i as u64),
                config: Some(config),
                env: env_of(i - 1),
                ..Default::default()
            }));
        }
        for a in &agents {
            let caps = a
                .client()
                .api()
                .get_capabilities()
                .await
                .via(&a.client())
                .expect("caps");
            assert!(
                caps.domains.contains(&sd1) && caps.domains.contains(&sd2),
                "agent {} sees both domains",
                a.url
            );
        }
        Cluster {
            agents,
            sd1,
            sd2,
            dir1,
            dir2,
        }
    }

    /// URLs of the agents.
    pub fn urls(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.url.clone()).collect()
    }

    /// Client of agent `i`.
    pub fn client(&self, i: usize) -> AgentClient {
        self.agents[i].client()
    }

    /// Index of the agent at `url`.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.url == url)
    }

    /// Directory of a domain.
    pub fn dir(&self, sd: &Uuid) -> &Path {
        if sd == &self.sd1 {
            &self.dir1
        } else {
            &self.dir2
        }
    }

    /// The data file of a volume.
    pub fn volume_path(&self, sd: &Uuid, img: &Uuid, vol: &Uuid) -> PathBuf {
        volume_path(self.dir(sd), img, vol)
    }

    /// Every job of every live agent: (agent index, job). Agents are asked at once, each with a
    /// short timeout, so a frozen agent costs one timeout.
    pub async fn jobs(&self) -> Vec<(usize, JobInfo)> {
        let mut asks = tokio::task::JoinSet::new();
        for (i, a) in self.agents.iter().enumerate().filter(|(_, a)| a.pid() != 0) {
            let c = a
                .client()
                .with_timeout(Duration::from_secs(2))
                .expect("client");
            asks.spawn(async move {
                let m = match c.api().get_jobs(None, None).await {
                    Ok(m) => m,
                    Err(e) => {
                        if std::env::var_os("SDM_TEST_DEBUG").is_some() {
                            eprintln!("agent {i}: getJobs failed: {e}");
                        }
                        Default::default()
                    }
                };
                m.into_values().map(|j| (i, j)).collect::<Vec<_>>()
            });
        }
        let mut out: Vec<(usize, JobInfo)> = asks.join_all().await.into_iter().flatten().collect();
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Waits until some agent runs a job with `description` that has started moving data (its
    /// destination is ILLEGAL and leased) and reports at least `min_bytes` done; returns the
    /// agent's index and the job.
    pub async fn wait_running(
        &self,
        description: &str,
        min_bytes: u64,
        timeout: Duration,
    ) -> (usize, JobInfo) {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, j) in self.jobs().await {
                if std::env::var_os("SDM_TEST_DEBUG").is_some() {
                    eprintln!(
                        "agent {i}: {} {} {}/{} {:?}",
                        j.description, j.status, j.bytes_done, j.bytes_total, j.progress
                    );
                }
                if j.description == description
                    && j.status == JobStatus::Running
                    && j.progress.is_some()
                    && j.bytes_done >= min_bytes
                {
                    return (i, j);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {description} job started moving data within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes agent `i` (SIGSTOP): its sockets stay open and its locks stay held.
    pub fn freeze(&self, i: usize) {
        signal(self.agents[i].pid(), libc::SIGSTOP);
    }

    /// Thaws agent `i` (SIGCONT).
    pub fn thaw(&self, i: usize) {
        signal(self.agents[i].pid(), libc::SIGCONT);
    }

    /// kill -9 of agent `i`.
    pub fn kill9(&mut self, i: usize) {
        self.agents[i].kill9();
    }

    /// Fails if any live agent still runs a job or if either domain has leftovers or findings
    /// other than the ones allowed.
    pub async fn assert_clean(&self) {
        for (i, j) in self.jobs().await {
            assert!(!j.status.is_active(), "agent {i} still runs {j:?}");
        }
        let c = self.live_client();
        for sd in [&self.sd1, &self.sd2] {
            let fixes = c
                .api()
                .check_domain(sd.clone())
                .await
                .via(&c)
                .expect("check");
            assert!(fixes.is_empty(), "domain {sd} has findings: {fixes:?}");
        }
    }

    /// A client of the first live agent.
    pub fn live_client(&self) -> AgentClient {
        self.agents
            .iter()
            .find(|a| a.pid() != 0)
            .expect("a live agent")
            .client()
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    assert!(pid != 0, "agent is not running");
    // SAFETY: kill(2) on the pid of a child process we own and have not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}
