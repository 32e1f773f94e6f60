//! Which host runs a job: what a [`PlacementPolicy`] sees of each host ([`HostView`]), what a
//! job asks for ([`PlacementRequest`]), and the default policy.
//!
//! The pool ([`crate::pool`]) offers a policy only the *eligible* hosts (up, and seeing every
//! domain the job touches), minus those the caller asks to avoid unless nothing else is left.
//!
//! The default, [`LeastLoaded`], picks the host with the smallest share of busy job slots,
//! counting jobs this pool placed since the host's stats were read: stats are a few hundred
//! milliseconds old at best, and several volumes are placed within microseconds of each other,
//! so without that count they would all land on the same host.

use std::fmt;

use sdm_proto::{HostStats, Uuid};
use serde::Serialize;

/// What the pool last learnt about a host's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Not probed yet.
    Unknown,
    /// Answered the last probe.
    Up,
    /// Did not answer the last probe or request.
    Down {
        /// Why.
        error: String,
    },
}

/// A host as the pool sees it at one moment (what policies choose from, and what `sdmctl
/// hosts` prints).
#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    /// Agent URL (the host's identity in the pool and in the journal).
    pub url: String,
    /// The agent's host id, once known.
    pub host_id: Option<u64>,
    /// Health.
    pub health: Health,
    /// Storage domains the host has attached.
    pub domains: Vec<Uuid>,
    /// Load figures of the last probe.
    pub stats: Option<HostStats>,
    /// Jobs this pool placed on the host since its stats were read (not in `stats` yet).
    pub placed_since_stats: u64,
    /// Jobs this pool placed on the host and is still following.
    pub inflight: u64,
    /// Jobs this pool ever placed on the host.
    pub total_placed: u64,
    /// Milliseconds since the last probe answered.
    pub age_ms: Option<u64>,
}

impl HostView {
    /// True if the host answered its last probe.
    pub fn is_up(&self) -> bool {
        self.health == Health::Up
    }

    /// True if the host has `sd` attached.
    pub fn sees(&self, sd: &Uuid) -> bool {
        self.domains.contains(sd)
    }

    /// Jobs that occupy or wait for the host's slots: those its stats report plus those placed
    /// since, and never fewer than this pool's own jobs still followed there (a placement made
    /// while a probe was in flight may be missing from both of the former).
    pub fn busy_jobs(&self) -> u64 {
        let reported = self
            .stats
            .as_ref()
            .map(|s| s.jobs_running + s.jobs_pending)
            .unwrap_or(0);
        (reported + self.placed_since_stats).max(self.inflight)
    }

    /// Share of the host's job slots that are taken (may exceed 1 when jobs queue).
    pub fn load(&self) -> f64 {
        let slots = self
            .stats
            .as_ref()
            .map(|s| s.max_running_jobs)
            .unwrap_or(1)
            .max(1);
        self.busy_jobs() as f64 / slots as f64
    }
}

/// What a job needs from its host.
#[derive(Clone, Debug, Default)]
pub struct PlacementRequest {
    /// Domains the job reads or writes; the host must see all of them.
    pub domains: Vec<Uuid>,
    /// URLs of hosts to avoid if any other host is eligible (where this work just failed).
    pub avoid: Vec<String>,
    /// Bytes the job will move (for policies that weigh size).
    pub bytes: u64,
}

/// Chooses the host of a job among eligible ones.
///
/// The pool calls [`choose`](PlacementPolicy::choose) with the hosts that are up and see every
/// domain of the request, minus those to avoid when others remain; `candidates` is never empty.
/// Return the index of the chosen host, or None to refuse (the caller gets
/// [`Error::NoHost`](crate::Error::NoHost)). Implementations must be cheap and must not block.
pub trait PlacementPolicy: Send + Sync + fmt::Debug {
    /// Index into `candidates` of the host to use.
    fn choose(&self, req: &PlacementRequest, candidates: &[HostView]) -> Option<usize>;
}

/// The default policy: the host with the smallest share of busy job slots; ties go to the host
/// moving fewer bytes per second now, then to the one this pool used least, then to pool order.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastLoaded;

impl PlacementPolicy for LeastLoaded {
    fn choose(&self, _req: &PlacementRequest, candidates: &[HostView]) -> Option<usize> {
        let rate = |h: &HostView| {
            h.stats
                .as_ref()
                .map(|s| s.read_bps + s.write_bps)
                .unwrap_or(0)
        };
        candidates
            .iter()
            .enumerate()
            .min_by(|(ia, a), (ib, b)| {
                a.load()
                    .total_cmp(&b.load())
                    .then(rate(a).cmp(&rate(b)))
                    .then(a.total_placed.cmp(&b.total_placed))
                    .then(ia.cmp(ib))
            })
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(url: &str, running: u64, pending: u64, slots: u64, placed: u64, rate: u64) -> HostView {
        HostView {
            url: url.into(),
            host_id: Some(1),
            health: Health::Up,
            domains: vec![],
            stats: Some(HostStats {
                jobs_running: running,
                jobs_pending: pending,
                read_bps: rate,
                write_bps: rate,
                max_running_jobs: slots,
                uptime_s: 1,
                rss_bytes: 1,
                open_fds: 1,
                ..Default::default()
            }),
            placed_since_stats: placed,
            inflight: 0,
            total_placed: placed,
            age_ms: Some(0),
        }
    }

    #[test]
    fn least_loaded_prefers_free_slots() {
        let p = LeastLoaded;
        let req = PlacementRequest::default();
        let hosts = [
            view("a", 2, 0, 4, 0, 0),
            view("b", 1, 0, 4, 0, 0),
            view("c", 3, 1, 4, 0, 0),
        ];
        assert_eq!(p.choose(&req, &hosts), Some(1));
    }

    #[test]
    fn least_loaded_counts_recent_placements() {
        let p = LeastLoaded;
        let req = PlacementRequest::default();
        // b's stats say idle, but two jobs were just placed there.
        let hosts = [view("a", 1, 0, 4, 0, 0), view("b", 0, 0, 4, 2, 0)];
        assert_eq!(p.choose(&req, &hosts), Some(0));
    }

    #[test]
    fn least_loaded_normalises_by_slots_then_breaks_ties_by_rate() {
        let p = LeastLoaded;
        let req = PlacementRequest::default();
        // 2 of 8 slots is lighter than 1 of 2.
        let hosts = [view("a", 1, 0, 2, 0, 0), view("b", 2, 0, 8, 0, 0)];
        assert_eq!(p.choose(&req, &hosts), Some(1));
        let hosts = [view("a", 0, 0, 4, 0, 500), view("b", 0, 0, 4, 0, 10)];
        assert_eq!(p.choose(&req, &hosts), Some(1));
        let hosts = [view("a", 0, 0, 4, 0, 0), view("b", 0, 0, 4, 0, 0)];
        assert_eq!(p.choose(&req, &hosts), Some(0));
        assert_eq!(p.choose(&req, &[]), None);
    }

    /// The custom policy of `docs/engine-guide.md`, kept compiling here.
    #[derive(Debug)]
    struct PreferRack(String);

    impl PlacementPolicy for PreferRack {
        fn choose(&self, req: &PlacementRequest, candidates: &[HostView]) -> Option<usize> {
            let best = candidates
                .iter()
                .enumerate()
                .filter(|(_, h)| h.url.contains(&self.0))
                .min_by(|(_, a), (_, b)| a.load().total_cmp(&b.load()));
            best.map(|(i, _)| i)
                .or_else(|| LeastLoaded.choose(req, candidates))
        }
    }

    #[test]
    fn a_custom_policy_decides() {
        let p = PreferRack("rack-a".into());
        let req = PlacementRequest::default();
        let hosts = [
            view("http://rack-b-1", 0, 0, 4, 0, 0),
            view("http://rack-a-1", 3, 0, 4, 0, 0),
            view("http://rack-a-2", 2, 0, 4, 0, 0),
        ];
        assert_eq!(p.choose(&req, &hosts), Some(2));
        assert_eq!(p.choose(&req, &hosts[..1]), Some(0));
    }
}
