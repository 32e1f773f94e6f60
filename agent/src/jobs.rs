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
use tokio::sync::{broadcast, watch, Semaphore};

use crate::metrics;

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

#[derive(Debug)]
struct State {
    status: JobStatus,
    aborting: bool,
    /// The work has begun moving data, so progress is meaningful.
    started: bool,
    error: Option<ApiError>,
    result: Option<JobResult>,
    finished_at: Option<Instant>,
    /// When the work began (the job left pending).
    running_since: Option<Instant>,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    id: Uuid,
    description: String,
    ctl: Arc<sdm_io::Control>,
    /// Controls of parallel sub-operations (one per volume of an image job); progress is the
    /// sum over `ctl` and these, and an abort reaches all of them.
    children: Mutex<Vec<Arc<sdm_io::Control>>>,
    /// Bytes the whole job will process, when known before its sub-operations start.
    planned_total: std::sync::atomic::AtomicU64,
    /// Set once when a lease the job holds is lost: the job's error from then on.
    fenced: std::sync::OnceLock<ApiError>,
    state: Mutex<State>,
    /// Bumped on every state change; subscriptions wait on it.
    changes: watch::Sender<u64>,
}

impl Job {
    fn new(id: Uuid, description: &str) -> Job {
        Job {
            id,
            description: description.to_string(),
            ctl: Arc::new(sdm_io::Control::new()),
            children: Mutex::new(Vec::new()),
            planned_total: 0.into(),
            fenced: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                status: JobStatus::Pending,
                aborting: false,
                started: false,
                error: None,
                result: None,
                finished_at: None,
                running_since: None,
            }),
            changes: watch::channel(0).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// The job id.
    pub fn id(&self) -> &Uuid {
        &self.id
    }

    /// What the job does (its verb, e.g. "copy_data").
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The data-path control block (progress counters, abort flag, bandwidth limit).
    pub fn control(&self) -> &Arc<sdm_io::Control> {
        &self.ctl
    }

    /// True once abort was requested.
    pub fn is_aborting(&self) -> bool {
        self.ctl.is_aborted()
    }

    /// A control for one parallel sub-operation; it is aborted with the job.
    pub fn child_control(&self) -> Arc<sdm_io::Control> {
        let c = Arc::new(sdm_io::Control::new());
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if self.ctl.is_aborted() {
            c.abort();
        }
        children.push(c.clone());
        c
    }

    /// Stops the job because a lease it holds is lost: every control is aborted (the data path
    /// stops before its next request), and the job fails with `why` (AcquireLockFailure), not
    /// as aborted. The first reason sticks.
    pub fn fence(&self, why: ApiError) {
        if self.fenced.set(why).is_ok() {
            tracing::warn!(job = %self.id, reason = %self.fenced.get().map(|e| e.message.as_str()).unwrap_or(""), "lease lost: stopping the job");
            self.abort_controls();
            self.bump();
        }
    }

    /// Why the job was fenced, if it was.
    pub fn fenced(&self) -> Option<&ApiError> {
        self.fenced.get()
    }

    /// Declares how many bytes the job will process in all, before its parts start.
    pub fn set_planned_total(&self, bytes: u64) {
        self.planned_total
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn abort_controls(&self) {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        self.ctl.abort();
        for c in children.iter() {
            c.abort();
        }
    }

    /// Progress summed over the job's control and its sub-operations.
    fn progress(&self) -> sdm_io::Progress {
        let mut p = self.ctl.progress();
        for c in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let q = c.progress();
            p.bytes_done += q.bytes_done;
            p.bytes_total += q.bytes_total;
            p.rate_bps += q.rate_bps;
        }
        let planned = self
            .planned_total
            .load(std::sync::atomic::Ordering::Relaxed);
        p.bytes_total = p.bytes_total.max(planned);
        p
    }

    /// Marks the start of data movement: progress is reported from now on.
    pub fn mark_started(&self) {
        self.state().started = true;
        self.bump();
    }

    /// Current status.
    pub fn status(&self) -> JobStatus {
        self.state().status
    }

    /// A receiver that changes whenever the job's state does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The job as the wire shows it.
    pub fn info(&self) -> JobInfo {
        let p = self.progress();
        let st = self.state();
        let progress = match st.status {
            JobStatus::Done => Some(100.0),
            _ if st.started && p.bytes_total > 0 => {
                Some((p.bytes_done as f64 * 100.0 / p.bytes_total as f64).min(100.0))
            }
            _ if st.started => Some(0.0),
            _ => None,
        };
        let active = st.status.is_active();
        let eta_s = (active && p.rate_bps > 0 && p.bytes_total >= p.bytes_done)
            .then(|| (p.bytes_total - p.bytes_done) as f64 / p.rate_bps as f64);
        // VDSM shows a running job whose abort was accepted as "aborting".
        let status = match st.status {
            JobStatus::Running if st.aborting => JobStatus::Aborting,
            s => s,
        };
        JobInfo {
            id: self.id.clone(),
            status,
            description: self.description.clone(),
            job_type: "storage".into(),
            progress,
            error: st.error.as_ref().map(Into::into),
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            rate_bps: if active { p.rate_bps } else { 0 },
            eta_s,
            aborting: st.aborting && active,
            result: st.result.clone(),
        }
    }

    fn finish(&self, outcome: Result<Option<JobResult>, ApiError>) {
        let mut st = self.state();
        match outcome {
            Ok(result) => {
                st.status = JobStatus::Done;
                st.result = result;
            }
            // Whatever the failure looked like where it surfaced (an abort of the data path, a
            // lock wait given up), a lost lease is the reason: the job failed, the engine
            // decides from the volume (which the job left ILLEGAL).
            Err(_) if self.fenced.get().is_some() => {
                st.status = JobStatus::Failed;
                st.error = self.fenced.get().cloned();
            }
            Err(e) if e.code == ErrorCode::ActionStopped || st.aborting => {
                st.status = JobStatus::Aborted;
                // A specific code (e.g. VolumesZeroingError for a stopped wipe) is kept; a
                // generic failure caused by the abort is reported as the abort.
                st.error = Some(if e.code == ErrorCode::GeneralException {
                    ApiError::new(
                        ErrorCode::ActionStopped,
                        format!("job aborted: {}", e.message),
                    )
                } else {
                    e
                });
            }
            Err(e) => {
                st.status = JobStatus::Failed;
                st.error = Some(e);
            }
        }
        st.finished_at = Some(Instant::now());
        let status = st.status;
        drop(st);
        tracing::info!(job = %self.id, description = %self.description, ?status, "job finished");
        self.bump();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::new_v4()
    }

    async fn wait_status(jobs: &Jobs, id: &Uuid, want: JobStatus) -> JobInfo {
        for _ in 0..200 {
            let info = jobs.get(id).unwrap().info();
            if info.status == want {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job never reached {want:?}");
    }

    #[tokio::test]
    async fn done_failed_and_duplicate() {
        let jobs = Jobs::new(2, None);
        let a = id();
        let job = jobs.register(&a, "test").unwrap();
        assert!(matches!(
            jobs.register(&a, "test"),
            Err(JobsError::Exists(_))
        ));
        assert!(job.info().progress.is_none());
        jobs.start(job, Box::new(|_| Ok(None)));
        let info = wait_status(&jobs, &a, JobStatus::Done).await;
        assert_eq!(info.progress, Some(100.0));
        assert!(info.error.is_none());

        let b = id();
        let job = jobs.register(&b, "test").unwrap();
        jobs.start(
            job,
            Box::new(|_| Err(ApiError::new(ErrorCode::GenerationMismatch, "gen"))),
        );
        let info = wait_status(&jobs, &b, JobStatus::Failed).await;
        assert_eq!(info.error.unwrap().code, 911);
        assert!(matches!(jobs.abort(&b), Err(JobsError::NotActive(_))));
        jobs.delete(&b).unwrap();
        assert!(matches!(jobs.get(&b), Err(JobsError::NoSuchJob(_))));
    }

    #[tokio::test]
    async fn abort_running_and_pending() {
        let jobs = Jobs::new(1, None);
        let a = id();
        let job = jobs.register(&a, "slow").unwrap();
        jobs.start(
            job,
            Box::new(|j| {
                while !j.is_aborting() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(ApiError::new(ErrorCode::ActionStopped, "stopped"))
            }),
        );
        wait_status(&jobs, &a, JobStatus::Running).await;
        // The only slot is taken, so this one stays pending.
        let b = id();
        let jb = jobs.register(&b, "queued").unwrap();
        jobs.start(jb, Box::new(|_| Ok(None)));
        assert!(matches!(jobs.delete(&a), Err(JobsError::NotDone(_))));
        jobs.abort(&b).unwrap();
        assert_eq!(jobs.get(&b).unwrap().status(), JobStatus::Aborted);
        jobs.abort(&a).unwrap();
        let info = wait_status(&jobs, &a, JobStatus::Aborted).await;
        assert_eq!(info.error.unwrap().code, 443);
        assert!(jobs.wait_idle(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_fenced_job_fails_with_the_fence_reason_not_as_aborted() {
        let jobs = Jobs::new(1, None);
        let a = id();
        let job = jobs.register(&a, "copy").unwrap();
        let j = job.clone();
        jobs.start(
            job,
            Box::new(|j| {
                while !j.is_aborting() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(ApiError::new(ErrorCode::ActionStopped, "data path aborted"))
            }),
        );
        wait_status(&jobs, &a, JobStatus::Running).await;
        j.fence(ApiError::new(ErrorCode::AcquireLockFailure, "lease lost"));
        // A later abort by the user does not turn it into an abort either.
        let _ = jobs.abort(&a);
        j.fence(ApiError::new(
            ErrorCode::AcquireLockFailure,
            "second reason",
        ));
        let info = wait_status(&jobs, &a, JobStatus::Failed).await;
        let e = info.error.unwrap();
        assert_eq!((e.code, e.message.as_str()), (651, "lease lost"));
    }

    #[tokio::test]
    async fn aborting_is_reported_and_ends_are_announced() {
        let jobs = Jobs::new(1, None);
        let mut events = jobs.events();
        let a = id();
        let job = jobs.register(&a, "slow").unwrap();
        jobs.start(
            job,
            Box::new(|j| {
                while !j.is_aborting() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(200));
                Err(ApiError::new(ErrorCode::ActionStopped, "stopped"))
            }),
        );
        wait_status(&jobs, &a, JobStatus::Running).await;
        // Pending behind it, then aborted: announced at once.
        let b = id();
        let jb = jobs.register(&b, "queued").unwrap();
        jobs.start(jb, Box::new(|_| Ok(None)));
        jobs.abort(&b).unwrap();
        let ev = events.recv().await.unwrap();
        assert_eq!((ev.id.clone(), ev.status), (b.clone(), JobStatus::Aborted));
        // Running, then aborted: "aborting" (VDSM's word) until it ends.
        jobs.abort(&a).unwrap();
        let info = jobs.get(&a).unwrap().info();
        assert_eq!(info.status, JobStatus::Aborting);
        assert!(info.aborting && info.status.is_active());
        let ev = events.recv().await.unwrap();
        assert_eq!((ev.id.clone(), ev.status), (a.clone(), JobStatus::Aborted));
        assert_eq!(ev.error.unwrap().code, 443);
        // A job recorded as done: reported, never announced.
        let c = id();
        jobs.record_done(&c, "create_volume").unwrap();
        assert_eq!(jobs.get(&c).unwrap().status(), JobStatus::Done);
        assert!(events.try_recv().is_err());
        // An empty type filters nothing.
        let all = jobs.infos(&JobFilter {
            job_type: Some(String::new()),
            job_ids: None,
        });
        assert_eq!(all.len(), 3);
    }

    #[tokio::test]
    async fn autodelete_and_filters() {
        let jobs = Jobs::new(2, Some(Duration::from_millis(50)));
        let a = id();
        let job = jobs.register(&a, "x").unwrap();
        jobs.start(job, Box::new(|_| Ok(None)));
        wait_status(&jobs, &a, JobStatus::Done).await;
        let f = JobFilter {
            job_type: Some("storage".into()),
            job_ids: Some(vec![a.clone()]),
        };
        assert_eq!(jobs.infos(&f).len(), 1);
        let f = JobFilter {
            job_type: Some("v2v".into()),
            job_ids: None,
        };
        assert!(jobs.infos(&f).is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(jobs.get(&a).is_err());
    }
}
