//! Progress, abort and bandwidth limit shared between a job thread and the control plane.
//!
//! Everything here is a relaxed atomic: the job thread publishes, any other thread reads. None of
//! it orders memory for data, it only has to be eventually visible (well within a second).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Rate windows shorter than this are too noisy to publish.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// A snapshot of an operation's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Logical bytes processed so far, holes and skipped zero ranges included.
    pub bytes_done: u64,
    /// Logical bytes the operation will process in total.
    pub bytes_total: u64,
    /// Recent throughput in logical bytes per second.
    pub rate_bps: u64,
}

/// Abort flag, bandwidth limit and progress counters of one operation.
///
/// Share it as `Arc<Control>`: the job thread passes `&Control` to the engine, the control plane
/// keeps the other handle to abort, throttle or poll.
#[derive(Debug)]
pub struct Control {
    aborted: AtomicBool,
    /// Nanoseconds since `epoch` after which the operation counts as aborted; 0: none.
    deadline: AtomicU64,
    /// Bytes per second; 0 means unlimited.
    limit: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
    rate: AtomicU64,
    /// Nanoseconds since `epoch` at which the current rate window opened.
    window_start: AtomicU64,
    /// `done` when the current rate window opened.
    window_done: AtomicU64,
    epoch: Instant,
}

impl Default for Control {
    fn default() -> Self {
        Control::new()
    }
}

impl Control {
    /// A fresh control: not aborted, unlimited, no progress.
    pub fn new() -> Control {
        Control {
            aborted: AtomicBool::new(false),
            deadline: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            window_done: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Ask the operation to stop. It returns [`crate::IoErrorKind::Aborted`] within a second,
    /// after every request it has in flight has completed.
    pub fn abort(&self) {
        self.aborted.store(true, Relaxed);
    }

    /// Whether [`Control::abort`] was called, or the deadline set with
    /// [`Control::set_deadline`] has passed.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Relaxed) || self.deadline_passed()
    }

    /// Makes the operation stop, as an abort does, once `at` has passed unless the deadline is
    /// moved on before (None: no deadline). The owner of a lease sets it a little after each
    /// successful check of the lease, so an operation whose process was frozen past that (and
    /// whose lease may have been taken over meanwhile) stops before its next request, without
    /// waiting for any other thread to run first.
    pub fn set_deadline(&self, at: Option<Instant>) {
        let ns = match at {
            // Never 0, which means "none".
            Some(at) => (at.saturating_duration_since(self.epoch).as_nanos() as u64).max(1),
            None => 0,
        };
        self.deadline.store(ns, Relaxed);
    }

    /// Whether a deadline is set and has passed.
    pub fn deadline_passed(&self) -> bool {
        match self.deadline.load(Relaxed) {
            0 => false,
            d => self.now_ns() >= d,
        }
    }

    /// Limit the operation's IO to `bytes_per_sec` (None: unlimited). Takes effect at once.
    pub fn set_bandwidth_limit(&self, bytes_per_sec: Option<u64>) {
        self.limit.store(bytes_per_sec.unwrap_or(0), Relaxed);
    }

    /// The current bandwidth limit.
    pub fn bandwidth_limit(&self) -> Option<u64> {
        match self.limit.load(Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Snapshot of the progress counters.
    pub fn progress(&self) -> Progress {
        let done = self.done.load(Relaxed);
        let now = self.now_ns();
        let start = self.window_start.load(Relaxed);
        let age = now.saturating_sub(start);
        // A stalled job publishes no new window, so an old window is judged live.
        let rate = if age > 2 * RATE_WINDOW.as_nanos() as u64 {
            rate_of(done.saturating_sub(self.window_done.load(Relaxed)), age)
        } else {
            self.rate.load(Relaxed)
        };
        Progress {
            bytes_done: done,
            bytes_total: self.total.load(Relaxed),
            rate_bps: rate,
        }
    }

    pub(crate) fn start(&self, total: u64) {
        self.total.store(total, Relaxed);
        self.done.store(0, Relaxed);
        self.rate.store(0, Relaxed);
        self.window_done.store(0, Relaxed);
        self.window_start.store(self.now_ns(), Relaxed);
    }

    pub(crate) fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_done(&self, n: u64) {
        let done = self.done.fetch_add(n, Relaxed) + n;
        let now = self.now_ns();
        let start = self.window_start.load(Relaxed);
        let age = now.saturating_sub(start);
        if age >= RATE_WINDOW.as_nanos() as u64
            && self
                .window_start
                .compare_exchange(start, now, Relaxed, Relaxed)
                .is_ok()
        {
            let before = self.window_done.swap(done, Relaxed);
            self.rate
                .store(rate_of(done.saturating_sub(before), age), Relaxed);
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

fn rate_of(bytes: u64, ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    (bytes as u128 * 1_000_000_000 / ns as u128) as u64
}

/// Token bucket for [`Control::set_bandwidth_limit`], owned by the job thread.
///
/// The bucket may go into debt by one request, so requests larger than the burst still pass;
/// the debt is then paid by sleeping before the next one.
pub(crate) struct Throttle {
    tokens: f64,
    last: Instant,
}

/// Longest single sleep, so that an abort is seen quickly even at very low limits.
const THROTTLE_NAP: Duration = Duration::from_millis(50);

impl Throttle {
    pub(crate) fn new() -> Throttle {
        Throttle {
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Asks to issue `n` bytes. When the bucket is short and `busy` (requests are in flight),
    /// answers [`Admit::Later`] at once: the caller reaps a completion and asks again, so that
    /// a throttled job still reports progress as its requests finish. When idle it naps until
    /// the bytes may go.
    pub(crate) fn admit(&mut self, ctl: &Control, n: u64, busy: bool) -> Admit {
        loop {
            if ctl.is_aborted() {
                return Admit::Aborted;
            }
            let Some(wait) = self.try_take(ctl, n) else {
                return Admit::Go;
            };
            if busy {
                return Admit::Later;
            }
            std::thread::sleep(wait.min(THROTTLE_NAP));
        }
    }

    /// Takes `n` bytes' worth of tokens if the bucket allows it now (None), else says how long
    /// until it will.
    fn try_take(&mut self, ctl: &Control, n: u64) -> Option<Duration> {
        let Some(limit) = ctl.bandwidth_limit() else {
            self.tokens = 0.0;
            self.last = Instant::now();
            return None;
        };
        let now = Instant::now();
        let limit = limit as f64;
        // A quarter second of burst keeps the pipeline full without overshooting visibly.
        let burst = limit / 4.0;
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * limit).min(burst);
        self.last = now;
        if self.tokens >= 0.0 {
            self.tokens -= n as f64;
            return None;
        }
        Some(Duration::from_secs_f64(-self.tokens / limit))
    }
}

/// [`Throttle::admit`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Issue the request now.
    Go,
    /// Not yet: reap a completion first, then ask again.
    Later,
    /// The job was aborted.
    Aborted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_and_resets() {
        let c = Control::new();
        c.start(100);
        c.add_done(40);
        let p = c.progress();
        assert_eq!((p.bytes_done, p.bytes_total), (40, 100));
        c.start(10);
        assert_eq!(c.progress().bytes_done, 0);
    }

    #[test]
    fn throttle_limits_rate() {
        let c = Control::new();
        c.set_bandwidth_limit(Some(16 << 20));
        let mut t = Throttle::new();
        let start = Instant::now();
        for _ in 0..8 {
            assert_eq!(t.admit(&c, 1 << 20, false), Admit::Go);
        }
        // The bucket starts empty and the first request runs into debt: 7 MiB must be paid for.
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn busy_throttle_defers_instead_of_sleeping() {
        let c = Control::new();
        c.set_bandwidth_limit(Some(1 << 20));
        let mut t = Throttle::new();
        assert_eq!(
            t.admit(&c, 1 << 20, true),
            Admit::Go,
            "the first request runs into debt"
        );
        let start = Instant::now();
        assert_eq!(t.admit(&c, 1 << 20, true), Admit::Later);
        assert!(
            start.elapsed() < Duration::from_millis(20),
            "{:?}",
            start.elapsed()
        );
        c.abort();
        assert_eq!(t.admit(&c, 1, true), Admit::Aborted);
    }

    #[test]
    fn a_passed_deadline_aborts_and_can_be_moved_on() {
        let c = Control::new();
        assert!(!c.is_aborted());
        c.set_deadline(Some(Instant::now() + Duration::from_secs(60)));
        assert!(!c.is_aborted() && !c.deadline_passed());
        c.set_deadline(Some(Instant::now()));
        assert!(c.is_aborted() && c.deadline_passed());
        let mut t = Throttle::new();
        assert_eq!(t.admit(&c, 1, false), Admit::Aborted);
        c.set_deadline(Some(Instant::now() + Duration::from_secs(60)));
        assert!(!c.is_aborted());
        c.set_deadline(None);
        assert!(!c.is_aborted());
    }

    #[test]
    fn throttle_sees_abort() {
        let c = Control::new();
        c.set_bandwidth_limit(Some(1));
        let mut t = Throttle::new();
        assert_eq!(t.admit(&c, 1 << 20, false), Admit::Go);
        c.abort();
        assert_eq!(t.admit(&c, 1 << 20, false), Admit::Aborted);
    }
}
