//! The metadata-writer lease: what replaces VDSM's SPM for LVM metadata.
//!
//! A block domain's LVM metadata (LVs, their tags, their sizes) and the choice of a free
//! metadata slot are changed only by the holder of the domain's `SDM` resource, at 1 MiB of
//! its `leases` LV (the lease VDSM reserves for it). It is taken for one change and released
//! right after, so any host may create or remove volumes, one change at a time. The holder
//! reads LVM metadata afresh before it decides anything (every `lvs` goes to the disks: no
//! hints, no cache), and checks that the lease is still its own right before each LVM write.
//!
//! Within one process, a mutex queues the changes of all threads before they ask the lease
//! backend (sanlock would answer a second acquire by the same process with "busy"). Across
//! hosts, a busy lease is retried until `[block] metadata_lease_timeout_s`: longer than a dead
//! host's delta lease needs to expire, so a host killed while holding the lease delays the
//! others until then and no longer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdm_lease::{Lease, LeaseBackend, LeaseError, SDM_LEASE_OFFSET, SDM_RESOURCE};

use super::error::BlockError;
use crate::storage::StorageError;

/// The metadata-writer lease of one domain.
#[derive(Debug)]
pub struct Writer {
    sd_id: String,
    leases: Arc<dyn LeaseBackend>,
    area: PathBuf,
    timeout: Duration,
    local: Mutex<()>,
}

impl Writer {
    /// The lease of domain `sd_id` in `area` (its activated `leases` LV).
    pub fn new(
        sd_id: &str,
        leases: Arc<dyn LeaseBackend>,
        area: PathBuf,
        timeout: Duration,
    ) -> Writer {
        Writer {
            sd_id: sd_id.to_string(),
            leases,
            area,
            timeout,
            local: Mutex::new(()),
        }
    }

    /// Runs `f` holding the lease; `f` gets it to [`verify`](Lease::verify) before each LVM
    /// write. The lease is released when `f` returns, whatever it returns.
    pub fn run<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Lease) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let _queued = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let lease = self.acquire(what)?;
        tracing::debug!(sd_id = %self.sd_id, what, "metadata-writer lease taken");
        fail::fail_point!("sdm::block::writer_held");
        let result = f(&lease);
        if let Err(e) = lease.release() {
            tracing::warn!(sd_id = %self.sd_id, what, error = %e, "releasing the metadata-writer lease failed");
        }
        result
    }

    fn acquire(&self, what: &str) -> Result<Lease, StorageError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut waited_busy = false;
        loop {
            match self
                .leases
                .acquire(&self.sd_id, SDM_RESOURCE, &self.area, SDM_LEASE_OFFSET)
            {
                Ok(l) => {
                    if waited_busy {
                        tracing::info!(sd_id = %self.sd_id, what, waited = ?started.elapsed(), "metadata-writer lease taken after waiting for another holder");
                    }
                    return Ok(l);
                }
                Err(e) if e.is_busy() && started.elapsed() < self.timeout => {
                    waited_busy = true;
                    // Jittered backoff: hosts that collided do not collide again in step.
                    let jitter = Duration::from_millis(u64::from(
                        std::process::id().wrapping_mul(2_654_435_761) >> 27,
                    ));
                    std::thread::sleep(pause + jitter.min(pause));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(self.failed(what, started.elapsed(), e)),
            }
        }
    }

    fn failed(&self, what: &str, waited: Duration, e: LeaseError) -> StorageError {
        let why = if e.is_busy() {
            format!(
                "{what}: still held by another host after {waited:?} (`[block] metadata_lease_timeout_s`)"
            )
        } else {
            format!("{what}: cannot take it")
        };
        BlockError::WriterLease {
            sd: self.sd_id.clone(),
            why,
            source: e,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdm_lease::LocalLeases;

    #[test]
    fn threads_take_turns_and_a_foreign_holder_times_out() {
        let d = tempfile::tempdir().unwrap();
        let area = d.path().join("leases");
        std::fs::File::create(&area)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let leases: Arc<dyn LeaseBackend> = Arc::new(LocalLeases::new(1));
        let w = Arc::new(Writer::new(
            "sd",
            leases.clone(),
            area.clone(),
            Duration::from_millis(300),
        ));
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (w, inside) = (w.clone(), inside.clone());
                s.spawn(move || {
                    w.run("test", |l| {
                        l.verify().unwrap();
                        let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(n, 0, "two holders at once");
                        std::thread::sleep(Duration::from_millis(20));
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    })
                    .unwrap();
                });
            }
        });
        // Another holder (another open file description: another host, for the local backend)
        // keeps it: the change waits, then fails with a coded error.
        let held = leases
            .acquire("sd", SDM_RESOURCE, &area, SDM_LEASE_OFFSET)
            .unwrap();
        let t = Instant::now();
        let e = w.run("test", |_| Ok(())).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(
            matches!(e, StorageError::Block(BlockError::WriterLease { .. })),
            "{e}"
        );
        drop(held);
        w.run("test", |_| Ok(())).unwrap();
    }
}
