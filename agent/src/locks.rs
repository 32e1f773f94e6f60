//! In-process resource locks (domain, image), taken in one sorted order and released in reverse,
//! so that two operations over overlapping resources can never deadlock.
//!
//! These serialize work inside one agent. Between hosts, volume leases ([`sdm_lease`]) do that job.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Many holders.
    Shared,
    /// One holder.
    Exclusive,
}

/// Why a lock set could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The same resource was asked for in two modes.
    #[error("resource {0} requested both shared and exclusive")]
    Conflict(String),
    /// Waiting took longer than allowed.
    #[error("{0} is locked by a running operation")]
    Timeout(String),
    /// The waiter was told to stop (job aborted).
    #[error("stopped while waiting for {0}")]
    Stopped(String),
}

#[derive(Default)]
struct Holders {
    shared: u32,
    exclusive: bool,
}

/// The lock table.
#[derive(Default)]
pub struct LockManager {
    table: Mutex<HashMap<String, Holders>>,
    changed: Condvar,
}

/// Held locks; released in reverse order on drop.
pub struct LockSet {
    mgr: Arc<LockManager>,
    held: Vec<(String, Mode)>,
}

/// Name of a domain's lock.
pub fn domain_key(sd: &str) -> String {
    format!("00-storage/{sd}")
}

/// Name of an image's lock.
pub fn image_key(sd: &str, img: &str) -> String {
    format!("01-image/{sd}/{img}")
}

impl LockManager {
    /// Takes every lock of `wanted`, in sorted order, waiting at most `timeout` in all and
    /// giving up early when `stop` returns true.
    pub fn lock(
        self: &Arc<Self>,
        wanted: &[(String, Mode)],
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<LockSet, LockError> {
        let mut sorted: BTreeMap<&str, Mode> = BTreeMap::new();
        for (k, m) in wanted {
            if let Some(prev) = sorted.insert(k, *m) {
                if prev != *m {
                    return Err(LockError::Conflict(k.clone()));
                }
            }
        }
        let deadline = Instant::now() + timeout;
        let mut set = LockSet {
            mgr: self.clone(),
            held: Vec::with_capacity(sorted.len()),
        };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        for (key, mode) in sorted {
            loop {
                let h = table.entry(key.to_string()).or_default();
                let free = match mode {
                    Mode::Shared => !h.exclusive,
                    Mode::Exclusive => !h.exclusive && h.shared == 0,
                };
                if free {
                    match mode {
                        Mode::Shared => h.shared += 1,
                        Mode::Exclusive => h.exclusive = true,
                    }
                    set.held.push((key.to_string(), mode));
                    break;
                }
                if stop() {
                    drop(table);
                    return Err(LockError::Stopped(key.to_string()));
                }
                let now = Instant::now();
                if now >= deadline {
                    drop(table);
                    return Err(LockError::Timeout(key.to_string()));
                }
                // Wake at least every 100 ms to notice `stop`.
                let wait = (deadline - now).min(Duration::from_millis(100));
                table = self
                    .changed
                    .wait_timeout(table, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        Ok(set)
    }

    fn release(&self, held: &mut Vec<(String, Mode)>) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((key, mode)) = held.pop() {
            if let Some(h) = table.get_mut(&key) {
                match mode {
                    Mode::Shared => h.shared = h.shared.saturating_sub(1),
                    Mode::Exclusive => h.exclusive = false,
                }
                if h.shared == 0 && !h.exclusive {
                    table.remove(&key);
                }
            }
        }
        drop(table);
        self.changed.notify_all();
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        self.mgr.release(&mut held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    #[test]
    fn shared_coexist_exclusive_waits() {
        let m = Arc::new(LockManager::default());
        let a = m
            .lock(&[("x".into(), Mode::Shared)], Duration::ZERO, &never)
            .unwrap();
        let _b = m
            .lock(&[("x".into(), Mode::Shared)], Duration::ZERO, &never)
            .unwrap();
        assert!(matches!(
            m.lock(
                &[("x".into(), Mode::Exclusive)],
                Duration::from_millis(50),
                &never
            ),
            Err(LockError::Timeout(_))
        ));
        drop(a);
        drop(_b);
        let _c = m
            .lock(&[("x".into(), Mode::Exclusive)], Duration::ZERO, &never)
            .unwrap();
    }

    #[test]
    fn conflicting_modes_are_refused_and_duplicates_merged() {
        let m = Arc::new(LockManager::default());
        assert!(matches!(
            m.lock(
                &[("x".into(), Mode::Shared), ("x".into(), Mode::Exclusive)],
                Duration::ZERO,
                &never
            ),
            Err(LockError::Conflict(_))
        ));
        let s = m
            .lock(
                &[("x".into(), Mode::Shared), ("x".into(), Mode::Shared)],
                Duration::ZERO,
                &never,
            )
            .unwrap();
        assert_eq!(s.held.len(), 1);
    }

    #[test]
    fn opposite_orders_do_not_deadlock() {
        let m = Arc::new(LockManager::default());
        let mut threads = Vec::new();
        for i in 0..8 {
            let m = m.clone();
            threads.push(std::thread::spawn(move || {
                for _ in 0..200 {
                    let (a, b) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
                    let _s = m
                        .lock(
                            &[(a.into(), Mode::Exclusive), (b.into(), Mode::Exclusive)],
                            Duration::from_secs(10),
                            &never,
                        )
                        .unwrap();
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn stop_ends_the_wait() {
        let m = Arc::new(LockManager::default());
        let _x = m
            .lock(&[("x".into(), Mode::Exclusive)], Duration::ZERO, &never)
            .unwrap();
        let stop = || true;
        assert!(matches!(
            m.lock(
                &[("x".into(), Mode::Exclusive)],
                Duration::from_secs(10),
                &stop
            ),
            Err(LockError::Stopped(_))
        ));
    }
}
