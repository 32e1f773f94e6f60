//! The hosts an engine knows, their health, the domains each sees, and which one runs a job.
//!
//! A [`HostPool`] holds one [`AgentClient`] per agent URL. [`HostPool::refresh`] asks every agent
//! for `Host.getCapabilities` (identity, attached domains) and `Host.getStats` (load) at once,
//! each with a short timeout, so one frozen host delays a refresh by that timeout and no more.
//! A host that answers both is [`Health::Up`]; one that does not is [`Health::Down`] until it
//! answers again.
//!
//! Placement is delegated to a [`PlacementPolicy`] ([`crate::placement`]): the pool narrows the
//! hosts to the *eligible* ones (up, and seeing every domain the job touches), drops those the
//! caller asks to avoid (hosts where the same work just failed) unless nothing else is left, and
//! lets the policy pick among the rest.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdm_proto::{Capabilities, HostStats, SdmApiClient, Uuid};

use crate::client::{AgentClient, ClientOptions, Via};
use crate::error::Error;

pub use crate::placement::{Health, HostView, LeastLoaded, PlacementPolicy, PlacementRequest};

/// Timeouts and freshness of a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Timeout of health probes and job polls: how long a silent host is given before it is
    /// treated as unreachable for this cycle.
    pub probe_timeout: Duration,
    /// Timeout of ordinary requests (volume creation, submissions).
    pub request_timeout: Duration,
    /// Stats older than this are read again before a placement.
    pub stats_max_age: Duration,
    /// Mutual TLS for `https://` agents.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            probe_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            stats_max_age: Duration::from_secs(1),
            tls: None,
        }
    }
}

#[derive(Debug)]
struct HostState {
    health: Health,
    caps: Option<Capabilities>,
    stats: Option<HostStats>,
    checked: Option<Instant>,
    /// `total_placed` when the last stats request was sent: placements after it may be missing
    /// from those stats.
    placed_at_stats: u64,
    inflight: u64,
    total_placed: u64,
}

#[derive(Debug)]
struct Host {
    url: String,
    client: AgentClient,
    probe: AgentClient,
    state: Mutex<HostState>,
}

impl Host {
    fn state(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> HostView {
        let st = self.state();
        HostView {
            url: self.url.clone(),
            host_id: st.caps.as_ref().map(|c| c.host_id),
            health: st.health.clone(),
            domains: st
                .caps
                .as_ref()
                .map(|c| c.domains.clone())
                .unwrap_or_default(),
            stats: st.stats.clone(),
            placed_since_stats: st.total_placed.saturating_sub(st.placed_at_stats),
            inflight: st.inflight,
            total_placed: st.total_placed,
            age_ms: st.checked.map(|t| t.elapsed().as_millis() as u64),
        }
    }
}

/// A job placed on a host by [`HostPool::place`]; the host counts it as in flight until this is
/// dropped.
#[derive(Debug)]
pub struct Placement {
    host: Arc<Host>,
}

impl Placement {
    /// The chosen host's URL.
    pub fn url(&self) -> &str {
        &self.host.url
    }

    /// A client of the chosen host (ordinary timeouts).
    pub fn client(&self) -> &AgentClient {
        &self.host.client
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        let mut st = self.host.state();
        st.inflight = st.inflight.saturating_sub(1);
    }
}

/// The agents an engine knows.
#[derive(Debug)]
pub struct HostPool {
    hosts: Vec<Arc<Host>>,
    policy: Box<dyn PlacementPolicy>,
    opts: PoolOptions,
}

impl HostPool {
    /// A pool of the agents at `urls`, with default options and the [`LeastLoaded`] policy.
    pub fn new<I, S>(urls: I) -> Result<HostPool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_options(urls, PoolOptions::default(), Box::new(LeastLoaded))
    }

    /// A pool with explicit options and policy.
    pub fn with_options<I, S>(
        urls: I,
        opts: PoolOptions,
        policy: Box<dyn PlacementPolicy>,
    ) -> Result<HostPool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut hosts: Vec<Arc<Host>> = Vec::new();
        for u in urls {
            let client = AgentClient::with_options(
                u.as_ref(),
                ClientOptions {
                    request_timeout: opts.request_timeout,
                    tls: opts.tls.clone(),
                    ..Default::default()
                },
            )?;
            if hosts.iter().any(|h| h.url == client.url()) {
                continue;
            }
            // Probes are not retried: a failed probe is itself the answer.
            let probe = AgentClient::with_options(
                client.url(),
                ClientOptions {
                    request_timeout: opts.probe_timeout,
                    retries: 0,
                    tls: opts.tls.clone(),
                },
            )?;
            hosts.push(Arc::new(Host {
                url: client.url().to_string(),
                client,
                probe,
                state: Mutex::new(HostState {
                    health: Health::Unknown,
                    caps: None,
                    stats: None,
                    checked: None,
                    placed_at_stats: 0,
                    inflight: 0,
                    total_placed: 0,
                }),
            }));
        }
        if hosts.is_empty() {
            return Err(Error::Usage(
                "a host pool needs at least one agent URL".into(),
            ));
        }
        Ok(HostPool {
            hosts,
            policy,
            opts,
        })
    }

    /// The pool's options.
    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// The placement policy.
    pub fn policy(&self) -> &dyn PlacementPolicy {
        self.policy.as_ref()
    }

    /// Every host as last seen, in pool order.
    pub fn hosts(&self) -> Vec<HostView> {
        self.hosts.iter().map(|h| h.view()).collect()
    }

    /// URLs of every host, in pool order.
    pub fn urls(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.url.clone()).collect()
    }

    fn host(&self, url: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.url == url)
    }

    /// A client of the host at `url` (ordinary timeouts), if it is in the pool.
    pub fn client(&self, url: &str) -> Option<AgentClient> {
        self.host(url).map(|h| h.client.clone())
    }

    /// A client of the host at `url` with the probe timeout, if it is in the pool.
    pub fn probe_client(&self, url: &str) -> Option<AgentClient> {
        self.host(url).map(|h| h.probe.clone())
    }

    /// Probes every host at once (capabilities and stats) and updates their health.
    pub async fn refresh(&self) {
        futures::future::join_all(self.hosts.iter().map(|h| probe(h))).await;
    }

    /// Probes the hosts whose last probe is older than `stats_max_age`; hosts that were down
    /// are probed again only after five times that, so that a frozen host does not add its
    /// probe timeout to every placement.
    pub async fn refresh_if_stale(&self) {
        let max = self.opts.stats_max_age;
        let stale: Vec<&Arc<Host>> = self
            .hosts
            .iter()
            .filter(|h| {
                let st = h.state();
                let limit = if matches!(st.health, Health::Down { .. }) {
                    max * 5
                } else {
                    max
                };
                st.checked.is_none_or(|t| t.elapsed() > limit)
            })
            .collect();
        if !stale.is_empty() {
            futures::future::join_all(stale.into_iter().map(|h| probe(h))).await;
        }
    }

    /// Records that `url` did not answer (a timeout or broken connection seen by a caller), so
    /// that placements avoid it until a probe finds it answering again.
    pub fn mark_down(&self, url: &str, error: &str) {
        if let Some(h) = self.host(url) {
            let mut st = h.state();
            if st.health
                != (Health::Down {
                    error: error.to_string(),
                })
            {
                tracing::warn!(host = %url, error, "host is not answering");
            }
            st.health = Health::Down {
                error: error.to_string(),
            };
        }
    }

    /// Chooses a host for a job (see the module documentation) and counts the job against it
    /// until the returned [`Placement`] is dropped.
    pub async fn place(&self, req: &PlacementRequest) -> Result<Placement, Error> {
        self.refresh_if_stale().await;
        let eligible: Vec<(usize, HostView)> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.view()))
            .filter(|(_, v)| v.is_up() && req.domains.iter().all(|d| v.sees(d)))
            .collect();
        let preferred: Vec<(usize, HostView)> = eligible
            .iter()
            .filter(|(_, v)| !req.avoid.contains(&v.url))
            .cloned()
            .collect();
        let pool = if preferred.is_empty() {
            eligible
        } else {
            preferred
        };
        let views: Vec<HostView> = pool.iter().map(|(_, v)| v.clone()).collect();
        let chosen = if views.is_empty() {
            None
        } else {
            self.policy.choose(req, &views)
        };
        let Some(&(idx, _)) = chosen.and_then(|c| pool.get(c)) else {
            return Err(Error::NoHost(describe_domains(&req.domains)));
        };
        let host = self.hosts[idx].clone();
        {
            let mut st = host.state();
            st.total_placed += 1;
            st.inflight += 1;
        }
        tracing::debug!(host = %host.url, domains = %describe_domains(&req.domains), "placed job");
        Ok(Placement { host })
    }

    /// Clients of the hosts that are up and see `sd`, least loaded first (for reads and
    /// fencing, which any such host can do).
    pub fn up_seeing(&self, sd: &Uuid) -> Vec<AgentClient> {
        let mut v: Vec<(f64, usize, AgentClient)> = self
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let view = h.view();
                (view.is_up() && view.sees(sd)).then(|| (view.load(), i, h.client.clone()))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, _, c)| c).collect()
    }

    /// Like [`up_seeing`](Self::up_seeing), with the probe timeout.
    pub fn up_seeing_probe(&self, sd: &Uuid) -> Vec<AgentClient> {
        self.up_seeing(sd)
            .into_iter()
            .filter_map(|c| self.probe_client(c.url()))
            .collect()
    }

    /// Hosts that are up and see every domain in `domains`.
    pub fn eligible(&self, domains: &[Uuid]) -> Vec<HostView> {
        self.hosts()
            .into_iter()
            .filter(|v| v.is_up() && domains.iter().all(|d| v.sees(d)))
            .collect()
    }
}

fn describe_domains(domains: &[Uuid]) -> String {
    if domains.is_empty() {
        return "any domain".into();
    }
    let names: Vec<&str> = domains.iter().map(Uuid::as_str).collect();
    format!(
        "domain{} {}",
        if names.len() > 1 { "s" } else { "" },
        names.join(" and ")
    )
}

async fn probe(h: &Host) {
    let placed_before = h.state().total_placed;
    let c = &h.probe;
    let (caps, stats) = futures::join!(c.api().get_capabilities(), c.api().get_stats());
    let result = caps.via(c).and_then(|caps| stats.via(c).map(|s| (caps, s)));
    let mut st = h.state();
    match result {
        Ok((caps, stats)) => {
            if st.health != Health::Up {
                tracing::info!(host = %h.url, host_id = caps.host_id, "host is up");
            }
            st.health = Health::Up;
            st.caps = Some(caps);
            st.stats = Some(stats);
            st.checked = Some(Instant::now());
            st.placed_at_stats = placed_before;
        }
        Err(e) => {
            if !matches!(st.health, Health::Down { .. }) {
                tracing::warn!(host = %h.url, error = %e, "host probe failed");
            }
            st.health = Health::Down {
                error: e.to_string(),
            };
            st.checked = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Refuse;
    impl PlacementPolicy for Refuse {
        fn choose(&self, _: &PlacementRequest, _: &[HostView]) -> Option<usize> {
            None
        }
    }

    #[tokio::test]
    async fn unreachable_hosts_are_not_eligible() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = PoolOptions {
            probe_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let pool =
            HostPool::with_options([format!("127.0.0.1:{port}")], opts, Box::new(LeastLoaded))
                .unwrap();
        pool.refresh().await;
        assert!(matches!(pool.hosts()[0].health, Health::Down { .. }));
        let err = pool.place(&PlacementRequest::default()).await.unwrap_err();
        assert!(matches!(err, Error::NoHost(_)), "{err}");
        let pool = HostPool::with_options(
            [format!("127.0.0.1:{port}")],
            PoolOptions::default(),
            Box::new(Refuse),
        )
        .unwrap();
        assert_eq!(pool.urls(), vec![format!("http://127.0.0.1:{port}")]);
        assert!(HostPool::new(Vec::<String>::new()).is_err());
    }
}
