//! Host jobs: registry, state machine, progress, abort and autodelete.
//!
//! ```text
//! pending ──► running ──► done | failed
//!    │           └──abort──► aborting ──► aborted
//!    └──abort──► aborted
//! ```
//! (`aborting` is how the wire shows a running job whose abort was accepted, as VDSM does.)
//! Every job that ends, and every pending job that is aborted, is announced on
//! [`Jobs::events`] (the STOMP side publishes it as VDSM's `|jobs|status|<id>` event), and
//! every change of state is counted in `crate::metrics`.
//! A job is registered before its verb returns (so a duplicate id is refused at once), waits
//! for one of the agent's job slots, then runs its work on a blocking thread; the data path
//! gives each operation its own ring there. Progress is read from the job's
//! [`sdm_io::Control`] counters when someone asks, so reporting costs the data path nothing.
//! Jobs live in memory only: after a crash the volumes' legality, generation and leases tell
//! what happened (CONTRACT §4).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdm_proto::{ApiError, ErrorCode, JobInfo, JobMap, JobResult, JobStatus, Uuid};
use tokio::sync::{broadcast, Semaphore};

use crate::metrics;

mod job;
#[cfg(test)]
mod tests;

pub use job::Job;

/// Most jobs kept at once (finished ones are evicted oldest first beyond this).
pub const MAX_JOBS: usize = 10_000;
/// Metadata-only jobs (fencing) that run at once.
pub const MAX_METADATA_JOBS: usize = 16;
/// Job events buffered for a slow listener of [`Jobs::events`] before it misses some.
const EVENT_BUFFER: usize = 4096;

/// Job registry errors.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// Unknown id.
    #[error("job {0} does not exist")]
    NoSuchJob(Uuid),
    /// Duplicate id.
    #[error("job {0} already exists")]
    Exists(Uuid),
    /// Delete of an active job.
    #[error("job {0} is not done")]
    NotDone(Uuid),
    /// Abort of a finished job.
    #[error("job {0} is not active")]
    NotActive(Uuid),
    /// The registry is full of active jobs.
    #[error("too many jobs ({0}); retry when some have finished")]
    TooMany(usize),
    /// The agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
}
/// Filter of `Host.getJobs`.
#[derive(Debug, Default)]
pub struct JobFilter {
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Only these ids.
    pub job_ids: Option<Vec<Uuid>>,
}

/// The job registry.
pub struct Jobs {
    map: Mutex<HashMap<Uuid, Arc<Job>>>,
    slots: Arc<Semaphore>,
    /// Slots of metadata-only jobs: they do not wait behind data jobs, but are bounded too, so
    /// that thousands of them waiting for a lock cannot take every blocking thread.
    meta_slots: Arc<Semaphore>,
    max_running: usize,
    autodelete: Option<Duration>,
    shutting_down: std::sync::atomic::AtomicBool,
    events: broadcast::Sender<JobInfo>,
}

/// The work of a job; runs on a blocking thread.
pub type Work = Box<dyn FnOnce(&Arc<Job>) -> Result<Option<JobResult>, ApiError> + Send + 'static>;

impl Jobs {
    /// A registry running at most `max_running` jobs at once and deleting finished jobs after
    /// `autodelete` (None: never).
    pub fn new(max_running: usize, autodelete: Option<Duration>) -> Arc<Jobs> {
        let max_running = max_running.max(1);
        Arc::new(Jobs {
            map: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_running)),
            meta_slots: Arc::new(Semaphore::new(MAX_METADATA_JOBS)),
            max_running,
            autodelete,
            shutting_down: false.into(),
            events: broadcast::channel(EVENT_BUFFER).0,
        })
    }

    /// Jobs that end (done, failed, aborted) and pending jobs that are aborted, as their info
    /// at that moment. A listener that falls more than a few thousand events behind misses
    /// the oldest ones (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<JobInfo> {
        self.events.subscribe()
    }

    /// Accounts for a job that ended (metrics) and announces it.
    fn ended(&self, job: &Job, from: JobStatus) {
        let info = job.info();
        let ran = job.state().running_since.map(|t| t.elapsed());
        metrics::job_state(&job.description, Some(from), Some(info.status));
        metrics::job_finished(&job.description, info.status, ran, info.bytes_done);
        // No listener is fine: nobody subscribed to events.
        let _ = self.events.send(info);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Job>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jobs run at once.
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    /// Registers a job under the caller's id.
    pub fn register(&self, id: &Uuid, description: &str) -> Result<Arc<Job>, JobsError> {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(JobsError::ShuttingDown);
        }
        let mut map = self.map();
        if map.contains_key(id) {
            return Err(JobsError::Exists(id.clone()));
        }
        if map.len() >= MAX_JOBS {
            // Evict the oldest finished job; if every job is active, refuse.
            let oldest = map
                .values()
                .filter_map(|j| j.state().finished_at.map(|t| (t, j.id.clone())))
                .min_by_key(|(t, _)| *t)
                .map(|(_, id)| id);
            match oldest {
                Some(old) => {
                    if let Some(j) = map.remove(&old) {
                        metrics::job_state(&j.description, Some(j.status()), None);
                    }
                }
                None => return Err(JobsError::TooMany(map.len())),
            }
        }
        let job = Arc::new(Job::new(id.clone(), description));
        map.insert(id.clone(), job.clone());
        metrics::job_state(description, None, Some(JobStatus::Pending));
        Ok(job)
    }

    /// Registers a job whose work is already done (`Volume.create` answers the id of one, as
    /// VDSM answers the id of the task that created the volume). It is reported like any
    /// finished job and deleted after the autodelete delay; no event is sent (it never ran).
    /// Needs a tokio runtime (a blocking thread of one will do) for the autodelete.
    pub fn record_done(self: &Arc<Self>, id: &Uuid, description: &str) -> Result<Uuid, JobsError> {
        let job = self.register(id, description)?;
        job.finish(Ok(None));
        metrics::job_state(description, Some(JobStatus::Pending), Some(JobStatus::Done));
        metrics::job_finished(description, JobStatus::Done, None, 0);
        self.schedule_autodelete(&job);
        Ok(id.clone())
    }

    /// Removes a job that was registered but could not be started (the verb failed after
    /// registering).
    pub fn unregister(&self, id: &Uuid) {
        if let Some(j) = self.map().remove(id) {
            metrics::job_state(&j.description, Some(j.status()), None);
        }
    }

    /// Starts a registered job: it waits for a slot, then runs `work` on a blocking thread.
    pub fn start(self: &Arc<Self>, job: Arc<Job>, work: Work) {
        self.start_inner(job, work, true);
    }

    /// Starts a metadata-only job at once, without waiting for a data-path slot: fencing
    /// (`SDM.update_volume`) must not queue behind hours of copies, or a stale copy queued
    /// before the fence would run first.
    pub fn start_unqueued(self: &Arc<Self>, job: Arc<Job>, work: Work) {
        self.start_inner(job, work, false);
    }

    fn start_inner(self: &Arc<Self>, job: Arc<Job>, work: Work, queued: bool) {
        let jobs = self.clone();
        tokio::spawn(async move {
            let sem = if queued {
                jobs.slots.clone()
            } else {
                jobs.meta_slots.clone()
            };
            let permit = Some(sem.acquire_owned().await);
            {
                let mut st = job.state();
                if st.status != JobStatus::Pending || permit.as_ref().is_some_and(|p| p.is_err()) {
                    // Aborted while pending: it never ran and needs no cleanup.
                    drop(st);
                    jobs.schedule_autodelete(&job);
                    return;
                }
                st.status = JobStatus::Running;
                st.running_since = Some(Instant::now());
            }
            metrics::job_state(
                &job.description,
                Some(JobStatus::Pending),
                Some(JobStatus::Running),
            );
            job.bump();
            tracing::info!(job = %job.id, description = %job.description, "job running");
            let j = job.clone();
            let outcome = match tokio::task::spawn_blocking(move || work(&j)).await {
                Ok(outcome) => outcome,
                Err(e) => Err(ApiError::new(
                    ErrorCode::GeneralException,
                    format!("job panicked: {e}"),
                )),
            };
            drop(permit);
            job.finish(outcome);
            jobs.ended(&job, JobStatus::Running);
            jobs.schedule_autodelete(&job);
        });
    }

    fn schedule_autodelete(self: &Arc<Self>, job: &Arc<Job>) {
        let Some(delay) = self.autodelete else { return };
        let jobs = Arc::downgrade(self);
        let job = Arc::downgrade(job);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let (Some(jobs), Some(job)) = (jobs.upgrade(), job.upgrade()) {
                let mut map = jobs.map();
                if map.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, &job)) {
                    map.remove(&job.id);
                    metrics::job_state(&job.description, Some(job.status()), None);
                }
            }
        });
    }

    /// A job by id.
    pub fn get(&self, id: &Uuid) -> Result<Arc<Job>, JobsError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| JobsError::NoSuchJob(id.clone()))
    }

    /// `Host.getJobs`.
    pub fn infos(&self, filter: &JobFilter) -> JobMap {
        // An empty type filters nothing, as in VDSM.
        if filter
            .job_type
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t != "storage")
        {
            return JobMap::new();
        }
        let jobs: Vec<Arc<Job>> = match &filter.job_ids {
            Some(ids) if !ids.is_empty() => {
                let map = self.map();
                ids.iter().filter_map(|id| map.get(id).cloned()).collect()
            }
            _ => self.map().values().cloned().collect(),
        };
        jobs.iter().map(|j| (j.id.clone(), j.info())).collect()
    }

    /// `Job.abort`.
    pub fn abort(&self, id: &Uuid) -> Result<(), JobsError> {
        let job = self.get(id)?;
        let mut st = job.state();
        let was_pending = match st.status {
            JobStatus::Pending => {
                st.status = JobStatus::Aborted;
                st.error = Some(ApiError::new(
                    ErrorCode::ActionStopped,
                    "job aborted before it started",
                ));
                st.finished_at = Some(Instant::now());
                true
            }
            JobStatus::Running => {
                st.aborting = true;
                job.abort_controls();
                false
            }
            _ => return Err(JobsError::NotActive(id.clone())),
        };
        drop(st);
        tracing::info!(job = %id, "abort requested");
        job.bump();
        if was_pending {
            self.ended(&job, JobStatus::Pending);
        }
        Ok(())
    }

    /// `Job.delete`.
    pub fn delete(&self, id: &Uuid) -> Result<(), JobsError> {
        let mut map = self.map();
        let job = map
            .get(id)
            .ok_or_else(|| JobsError::NoSuchJob(id.clone()))?;
        let status = job.status();
        if status.is_active() {
            return Err(JobsError::NotDone(id.clone()));
        }
        if let Some(j) = map.remove(id) {
            metrics::job_state(&j.description, Some(status), None);
        }
        Ok(())
    }

    /// Counts of running and pending jobs.
    pub fn counts(&self) -> (u64, u64) {
        let map = self.map();
        let mut running = 0;
        let mut pending = 0;
        for j in map.values() {
            match j.status() {
                JobStatus::Running => running += 1,
                JobStatus::Pending => pending += 1,
                _ => {}
            }
        }
        (running, pending)
    }

    /// Sum of the current rates of running jobs.
    pub fn total_rate(&self) -> u64 {
        self.map()
            .values()
            .filter(|j| j.status() == JobStatus::Running)
            .map(|j| j.progress().rate_bps)
            .sum()
    }

    /// Refuses new jobs and aborts every active one (SIGTERM).
    pub fn abort_all(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let ids: Vec<Uuid> = self.map().keys().cloned().collect();
        for id in ids {
            let _ = self.abort(&id);
        }
    }

    /// Waits until no job is active, at most `timeout`. Returns true if all finished.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (r, p) = self.counts();
            if r == 0 && p == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
