//! A job's sanlock leases, watched while the job works under them.
//!
//! The checks right before a write (the ILLEGAL mark, the final LEGAL write) catch a lease lost
//! before them; this watch catches one lost while the job waits for locks or moves bytes, which
//! can take hours. A thread per job checks every lease it holds: [`Lease::verify_fast`] (no
//! I/O: the registration is alive) every [`FAST_EVERY`], [`Lease::verify`] (reads the lease:
//! still this host, same generation and version) every [`VERIFY_EVERY`]. A lost lease fences
//! the job ([`Job::fence`]): the data path stops before its next request and the job fails
//! with AcquireLockFailure (651), leaving the destination ILLEGAL.
//!
//! The data path also carries a deadline ([`sdm_io::Control::set_deadline`]): [`grace`] after
//! the last confirmed check. A process frozen past it (SIGSTOP, a paused VM), whose lease other
//! hosts may have taken meanwhile, stops before its next request when it thaws, before this
//! thread has run again to find out. Local leases need no watch: an OFD lock holds as long as
//! its descriptor.
//!
//! A frozen or hung sanlock daemon must not hang the job either. Every daemon call the lease
//! crate makes for a job (acquire, [`Lease::verify`], release) waits at most a bound derived
//! from io_timeout (4×, at least 5 s; an acquire twice that) and the call is left to finish
//! in the background. A call without an answer gives the lockspace's leases up at once: the
//! registration is shut down (the daemon drops its leases when it runs again, instead of
//! killing this process for holding leases in a lockspace whose renewal failed meanwhile),
//! the holders are fenced, and the error is `Lost` (651) naming the daemon. So this thread
//! is never stuck longer than one bounded call, and the join below waits at most that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sdm_lease::{Lease, LeaseErrorKind};
use sdm_proto::{ApiError, ErrorCode};

use crate::error::AgentError;
use crate::jobs::Job;
use crate::service::Agent;

/// How often the registration behind each lease is checked (no I/O).
pub const FAST_EVERY: Duration = Duration::from_millis(200);
/// How often each lease is read back from storage.
pub const VERIFY_EVERY: Duration = Duration::from_secs(2);

/// How long the data path may go on after the last confirmed check of its leases: four
/// io_timeouts (a slow read of the lease must not stop a healthy copy), at least three checks.
/// Well below the `8 × io_timeout + 60` s after which other hosts may take this host's leases.
pub fn grace(io_timeout_s: u32) -> Duration {
    (Duration::from_secs(4 * u64::from(io_timeout_s))).max(3 * VERIFY_EVERY)
}

fn lost(msg: String) -> ApiError {
    ApiError::new(ErrorCode::AcquireLockFailure, msg)
}

/// Runs `work` while a thread watches `leases` (the job's sanlock leases; local ones are
/// skipped) and keeps the deadline of `ctl` (the control the data path of `work` runs with)
/// `grace` ahead of the last confirmed check. Also enters the job in the agent's table of
/// holders, so that a lost registration fences it at once. An error of `work` after the job
/// was fenced, or after the deadline passed, is reported as AcquireLockFailure with the reason.
pub fn with_watch<T>(
    agent: &Agent,
    job: &Arc<Job>,
    ctl: &sdm_io::Control,
    leases: &[&Lease],
    work: impl FnOnce() -> Result<T, AgentError>,
) -> Result<T, AgentError> {
    let watched: Vec<&Lease> = leases
        .iter()
        .copied()
        .filter(|l| l.kind() == "sanlock")
        .collect();
    if watched.is_empty() {
        return work();
    }
    let lockspaces: Vec<&str> = watched.iter().map(|l| l.sd_id()).collect();
    let _holding = agent.holders.enter(job, &lockspaces);
    let grace = grace(agent.leases.io_timeout_s());
    ctl.set_deadline(Some(Instant::now() + grace));
    let stop = Stop::default();
    let result = std::thread::scope(|s| {
        s.spawn(|| watch(job, ctl, &watched, grace, &stop));
        let r = work();
        stop.set();
        r
    });
    let expired = ctl.deadline_passed();
    ctl.set_deadline(None);
    match result {
        Err(e) => {
            if let Some(why) = job.fenced() {
                return Err(why.clone().into());
            }
            if expired {
                let why = lost(format!(
                    "the lease could not be confirmed for {} s (the process was frozen, or storage did not answer): stopped before writing more",
                    grace.as_secs()
                ));
                job.fence(why.clone());
                return Err(why.into());
            }
            Err(e)
        }
        ok => ok,
    }
}

/// The watcher's stop signal.
#[derive(Default)]
struct Stop {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `d`; true once stopped.
    fn wait(&self, d: Duration) -> bool {
        let g = self.flag.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

fn watch(job: &Job, ctl: &sdm_io::Control, leases: &[&Lease], grace: Duration, stop: &Stop) {
    let fence = |l: &Lease, why: &dyn std::fmt::Display| {
        job.fence(lost(format!(
            "the lease of volume {} in domain {} was lost while the job held it: {why}",
            l.vol_id(),
            l.sd_id()
        )));
    };
    let warned = AtomicBool::new(false);
    let mut next_verify = Instant::now() + VERIFY_EVERY;
    while !stop.wait(FAST_EVERY) {
        for l in leases {
            if let Err(e) = l.verify_fast() {
                return fence(l, &e);
            }
        }
        if Instant::now() < next_verify {
            continue;
        }
        let started = Instant::now();
        let mut confirmed = true;
        for l in leases {
            match l.verify() {
                Ok(()) => {}
                Err(e) if e.kind() == LeaseErrorKind::Lost => return fence(l, &e),
                Err(e) => {
                    // Not verified, not lost either: the deadline runs on, and stops the job
                    // if this goes on for the whole grace period.
                    confirmed = false;
                    if !warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(job = %job.id(), vol_id = %l.vol_id(), error = %e, "cannot confirm a lease the job holds");
                    }
                }
            }
        }
        if confirmed {
            ctl.set_deadline(Some(started + grace));
        }
        if ctl.deadline_passed() {
            job.fence(lost(format!(
                "the lease could not be confirmed for {} s: stopped before writing more",
                grace.as_secs()
            )));
            return;
        }
        next_verify = started + VERIFY_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_scales_with_io_timeout_and_stays_below_takeover() {
        assert_eq!(grace(1), Duration::from_secs(6));
        assert_eq!(grace(10), Duration::from_secs(40));
        for io in [1u32, 5, 10, 60] {
            let takeover = Duration::from_secs(8 * u64::from(io) + 60);
            assert!(grace(io) + Duration::from_secs(2 * u64::from(io)) < takeover);
        }
    }
}
