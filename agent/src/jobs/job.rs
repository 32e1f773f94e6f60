//! One job: its state machine, its controls (the job's own and its sub-operations'), progress
//! and the fence that turns a lost lease into the job's error.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sdm_proto::{ApiError, ErrorCode, JobInfo, JobResult, JobStatus, Uuid};
use tokio::sync::watch;

#[derive(Debug)]
pub(super) struct State {
    pub(super) status: JobStatus,
    pub(super) aborting: bool,
    /// The work has begun moving data, so progress is meaningful.
    pub(super) started: bool,
    pub(super) error: Option<ApiError>,
    pub(super) result: Option<JobResult>,
    pub(super) finished_at: Option<Instant>,
    /// When the work began (the job left pending).
    pub(super) running_since: Option<Instant>,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub(super) id: Uuid,
    pub(super) description: String,
    pub(super) ctl: Arc<sdm_io::Control>,
    /// Controls of parallel sub-operations (one per volume of an image job); progress is the
    /// sum over `ctl` and these, and an abort reaches all of them.
    pub(super) children: Mutex<Vec<Arc<sdm_io::Control>>>,
    /// Bytes the whole job will process, when known before its sub-operations start.
    pub(super) planned_total: std::sync::atomic::AtomicU64,
    /// Set once when a lease the job holds is lost: the job's error from then on.
    pub(super) fenced: std::sync::OnceLock<ApiError>,
    pub(super) state: Mutex<State>,
    /// Bumped on every state change; subscriptions wait on it.
    pub(super) changes: watch::Sender<u64>,
    /// Where each volume copy started (resumed or full), for `JobInfo::copies`.
    pub(super) copies: Mutex<Vec<sdm_proto::CopyStart>>,
}

impl Job {
    pub(super) fn new(id: Uuid, description: &str) -> Job {
        Job {
            id,
            description: description.to_string(),
            ctl: Arc::new(sdm_io::Control::new()),
            children: Mutex::new(Vec::new()),
            planned_total: 0.into(),
            copies: Mutex::new(Vec::new()),
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

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn bump(&self) {
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

    pub(super) fn abort_controls(&self) {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        self.ctl.abort();
        for c in children.iter() {
            c.abort();
        }
    }

    /// Progress summed over the job's control and its sub-operations.
    pub(super) fn progress(&self) -> sdm_io::Progress {
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
            copies: self
                .copies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Records where one volume copy starts, so that the engine sees a resume in the job's
    /// status and not only in this agent's log; copies are listed in stage order.
    pub fn note_copy_start(&self, c: sdm_proto::CopyStart) {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        copies.push(c);
        copies.sort_by_key(|c| c.stage);
        drop(copies);
        self.bump();
    }

    pub(super) fn finish(&self, outcome: Result<Option<JobResult>, ApiError>) {
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
