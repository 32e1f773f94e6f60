//! Which running jobs hold sanlock leases in which lockspace, so that the loss of this process's
//! registration for a lockspace (the daemon exited, restarted or dropped us: every lease in it
//! is gone) stops every job that writes under one of them, at once.
//!
//! The lease crate reports the loss from its watcher thread
//! ([`sdm_lease::SanlockLeases::on_registration_lost`]); [`LeaseHolders::registration_lost`] is
//! what the agent subscribes. Jobs enter while they hold a lease (`ops::lease_watch`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sdm_lease::RegistrationLost;
use sdm_proto::{ApiError, ErrorCode};

use crate::jobs::Job;

/// Jobs holding sanlock leases, by lockspace (domain UUID).
#[derive(Default)]
pub struct LeaseHolders {
    next: AtomicU64,
    held: Mutex<HashMap<u64, (String, Weak<Job>)>>,
}

/// A job's entry; dropping it leaves the table.
#[must_use = "dropping the entry removes the job from the table"]
pub struct Holding {
    table: Arc<LeaseHolders>,
    ids: Vec<u64>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        for id in &self.ids {
            held.remove(id);
        }
    }
}

impl LeaseHolders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Weak<Job>)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters `job` as holding sanlock leases in each of `lockspaces` until the returned entry
    /// drops.
    pub fn enter(self: &Arc<Self>, job: &Arc<Job>, lockspaces: &[&str]) -> Holding {
        let mut held = self.lock();
        let ids = lockspaces
            .iter()
            .map(|ls| {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                held.insert(id, (ls.to_string(), Arc::downgrade(job)));
                id
            })
            .collect();
        Holding {
            table: self.clone(),
            ids,
        }
    }

    /// Fences every job holding a lease in the lost registration's lockspace; returns how many.
    /// Short and non-blocking, as the lease crate's watcher thread needs.
    pub fn registration_lost(&self, lost: &RegistrationLost) -> usize {
        let jobs: Vec<Arc<Job>> = self
            .lock()
            .values()
            .filter(|(ls, _)| *ls == lost.lockspace)
            .filter_map(|(_, j)| j.upgrade())
            .collect();
        for job in &jobs {
            job.fence(ApiError::new(
                ErrorCode::AcquireLockFailure,
                format!(
                    "the sanlock registration for lockspace {} was lost ({}): the daemon released every lease in it",
                    lost.lockspace, lost.reason
                ),
            ));
        }
        if !jobs.is_empty() {
            tracing::error!(lockspace = %lost.lockspace, jobs = jobs.len(), reason = %lost.reason, "sanlock registration lost: stopped the jobs holding leases in it");
        }
        jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Jobs;
    use sdm_proto::Uuid;

    #[test]
    fn a_lost_registration_fences_the_holders_of_its_lockspace_only() {
        let jobs = Jobs::new(2, None);
        let table = Arc::new(LeaseHolders::default());
        let a = jobs.register(&Uuid::new_v4(), "a").unwrap();
        let b = jobs.register(&Uuid::new_v4(), "b").unwrap();
        let _ha = table.enter(&a, &["ls1"]);
        let hb = table.enter(&b, &["ls2"]);
        let lost = |ls: &str| RegistrationLost {
            lockspace: ls.into(),
            reason: "daemon hung up".into(),
            losses: 1,
        };
        assert_eq!(table.registration_lost(&lost("ls2")), 1);
        assert!(a.fenced().is_none());
        let e = b.fenced().unwrap();
        assert_eq!(e.code, ErrorCode::AcquireLockFailure);
        assert!(e.message.contains("ls2") && e.message.contains("daemon hung up"));
        assert!(b.is_aborting(), "the data path is stopped");
        drop(hb);
        assert_eq!(table.registration_lost(&lost("ls2")), 0, "left the table");
        assert_eq!(table.registration_lost(&lost("ls1")), 1);
    }
}
