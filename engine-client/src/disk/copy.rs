//! Phase 3, copy: one `SDM.copy_data` per volume, in parallel over the hosts that see both
//! domains. `G` is read just before each submission and recorded with the job; the job is
//! followed by the recovery table ([`crate::follow`]); a failed or fenced attempt is retried on
//! another host until the policy's attempts are used up.

use std::sync::atomic::Ordering;

use sdm_proto::{CopyStart, Endpoint, Generation, JobError, Size, Uuid};

use crate::error::Error;
use crate::follow::{self, CopyTicket, Decision, Verdict};
use crate::journal::{OpState, Record};
use crate::op::VolumeSpec;
use sdm_proto::SdmApiClient;

use super::event::{Event, Phase};
use super::report::CopyStartReport;
use super::retry::{in_parallel, Rounds};
use super::run::{dst_of, retryable, volume_on, Disks, Run, Step, Stop};

impl Disks {
    pub(super) async fn copy_all(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.phase(Phase::Copy);
        let dst = st
            .dst_sd
            .clone()
            .ok_or_else(|| Stop::Abandon("no destination domain".into()))?;
        let todo: Vec<VolumeSpec> = st
            .volumes
            .iter()
            .filter(|v| {
                st.copies
                    .get(&v.vol_id)
                    .is_none_or(|c| c.done_generation.is_none())
            })
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let parallelism = if st.policy.parallelism > 0 {
            st.policy.parallelism
        } else {
            self.pool.refresh_if_stale().await;
            self.pool
                .eligible(&[st.src_sd.clone(), dst.clone()])
                .len()
                .max(1)
        };
        // A volume that fails for good stops the others: the operation will roll back.
        in_parallel(run, todo, parallelism, |spec| self.copy_volume(run, spec)).await
    }

    fn endpoints(&self, st: &OpState, vol: &Uuid, generation: u16) -> (Endpoint, Endpoint) {
        let src = Endpoint::div(st.src_sd.clone(), st.image.clone(), vol.clone(), None);
        let dst = Endpoint::div(
            dst_of(st),
            st.image.clone(),
            vol.clone(),
            Some(Generation(generation)),
        );
        (src, dst)
    }

    /// Whether another attempt may start: not when the operation is being abandoned, nor when
    /// the attempts are used up.
    fn may_attempt(
        &self,
        run: &Run<'_>,
        st: &OpState,
        vol: &Uuid,
        attempts: u32,
        last_error: &str,
    ) -> Step {
        if run.cancel.load(Ordering::Relaxed) {
            return Err(Stop::Abandon(format!(
                "copy of volume {vol} stopped: another volume failed"
            )));
        }
        if attempts >= st.policy.max_attempts.max(1) {
            return Err(Stop::Abandon(format!(
                "copy of volume {vol} failed {attempts} times; last: {last_error}"
            )));
        }
        Ok(())
    }

    async fn copy_volume(&self, run: &Run<'_>, spec: VolumeSpec) -> Step {
        let st = self.state(&run.op)?;
        let vol = spec.vol_id.clone();
        let dst_sd = dst_of(&st);
        let dst = volume_on(&dst_sd, &st, &vol);
        let copy = st.copies.get(&vol).cloned().unwrap_or_default();
        let mut attempts = copy.attempts.len() as u32;
        let mut avoid: Vec<String> = Vec::new();
        let mut last_error = String::from("no attempt made");

        // An attempt recorded before a crash and never decided: follow it first.
        if let Some(a) = copy.undecided() {
            let ticket = CopyTicket {
                host: a.host.clone(),
                job_id: a.job.clone(),
                dst: dst.clone(),
                generation: a.generation,
            };
            let verdict = self.follow_copy(run, &ticket).await?;
            match self.conclude(run, &ticket, verdict).await? {
                None => return Ok(()),
                Some(err) => {
                    avoid.push(ticket.host.clone());
                    last_error = err;
                }
            }
        }
        let domains = vec![st.src_sd.clone(), dst_sd.clone()];
        let mut rounds = Rounds::new(&self.pool, domains, spec.bytes, avoid, None);
        loop {
            self.may_attempt(run, &st, &vol, attempts, &last_error)?;
            // Unbounded rounds: `may_attempt` ends the loop.
            let Some(placement) = rounds.next().await? else {
                return Err(Stop::Abandon(last_error));
            };
            let c = placement.client().clone();
            let host = placement.url().to_string();
            // G, read just before submitting.
            let (d, i, v) = (&dst_sd, &st.image, &vol);
            let g = match call!(c, get_volume_info(d.clone(), i.clone(), v.clone())).await {
                Ok(info) => info.generation,
                Err(Error::Api(e)) => {
                    return Err(Stop::Abandon(format!("destination volume {vol}: {e}")))
                }
                Err(e) => {
                    // Nothing was submitted: not an attempt.
                    rounds.failed(host, e.to_string(), true);
                    tokio::time::sleep(self.follow.poll_interval).await;
                    continue;
                }
            };
            attempts += 1;
            let job = Uuid::new_v4();
            let rec = Record::CopySubmit {
                op: run.op.clone(),
                vol: vol.clone(),
                host: host.clone(),
                job: job.clone(),
                generation: g,
                attempt: attempts,
            };
            self.record_and_announce(run, rec, "").await?;
            let (src_ep, dst_ep) = self.endpoints(&st, &vol, g);
            let bw = st.policy.bandwidth_limit.map(Size);
            let submitted = c
                .submit(&job, |h| {
                    let (j, s, d) = (job.clone(), src_ep.clone(), dst_ep.clone());
                    async move { h.copy_data(j, s, d, None, None, bw, None).await }
                })
                .await;
            let ticket = CopyTicket {
                host: host.clone(),
                job_id: job.clone(),
                dst: dst.clone(),
                generation: g,
            };
            let verdict = match submitted {
                // Refused: no job exists.
                Err(Error::Api(error)) => Followed {
                    verdict: Verdict::Failed {
                        error,
                        fenced: false,
                    },
                    start: None,
                },
                Err(e) => {
                    // Maybe registered, maybe not: the recovery table tells.
                    tracing::warn!(job = %job, host = %host, error = %e, "copy submission undetermined; following it");
                    self.follow_copy(run, &ticket).await?
                }
                Ok(()) => self.follow_copy(run, &ticket).await?,
            };
            drop(placement);
            match self.conclude(run, &ticket, verdict).await? {
                None => return Ok(()),
                Some(err) => {
                    rounds.failed(host, err.clone(), false);
                    last_error = err;
                }
            }
        }
    }

    pub(super) async fn follow_copy(&self, run: &Run<'_>, t: &CopyTicket) -> Step<Followed> {
        // The job's status says once where its copy started (resumed or full); the last word
        // is kept for the verdict's record.
        let start = std::sync::Mutex::new(None::<CopyStart>);
        let on = |d: &Decision| match d {
            Decision::Job { info } => {
                if let Some(s) = info.copies.iter().find(|c| c.vol_id == t.dst.vol_id) {
                    let mut seen = start.lock().unwrap_or_else(|e| e.into_inner());
                    if seen.as_ref() != Some(s) {
                        tracing::info!(op = %run.op, vol = %t.dst.vol_id, job = %t.job_id, host = %t.host, start = %CopyStartReport::from(s), "copy attempt started");
                        *seen = Some(s.clone());
                    }
                }
                run.emit(Event::CopyProgress {
                    op: run.op.clone(),
                    vol: t.dst.vol_id.clone(),
                    host: t.host.clone(),
                    bytes_done: info.bytes_done,
                    bytes_total: info.bytes_total,
                    rate_bps: info.rate_bps,
                    eta_s: info.eta_s,
                })
            }
            d => {
                tracing::info!(op = %run.op, vol = %t.dst.vol_id, job = %t.job_id, decision = ?d, "recovery table");
                run.emit(Event::Recovery {
                    op: run.op.clone(),
                    vol: t.dst.vol_id.clone(),
                    host: t.host.clone(),
                    decision: d.clone(),
                })
            }
        };
        let verdict = follow::follow_copy(&self.pool, t, &self.follow, Some(&run.cancel), &on)
            .await
            .map_err(|e| Stop::Later(e.to_string()))?;
        let start = start.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(Followed { verdict, start })
    }

    /// Records a verdict. None: the copy is done; Some(error): another attempt may help.
    pub(super) async fn conclude(
        &self,
        run: &Run<'_>,
        t: &CopyTicket,
        followed: Followed,
    ) -> Step<Option<String>> {
        let vol = t.dst.vol_id.clone();
        let Followed { verdict, start } = followed;
        let (rec, next) = match verdict {
            Verdict::Done { generation } => {
                let rec = Record::CopyEnd {
                    op: run.op.clone(),
                    vol: vol.clone(),
                    job: t.job_id.clone(),
                    done: true,
                    generation: Some(generation),
                    fenced: false,
                    error: None,
                    start,
                };
                (rec, Ok(None))
            }
            Verdict::Failed { error, fenced } => {
                tracing::warn!(op = %run.op, vol = %vol, job = %t.job_id, host = %t.host, fenced, error = %error, "copy attempt failed");
                if let Some(p) = crate::status::copy_progress(&self.pool, &t.dst).await {
                    // The next attempt re-issues copy_data, which resumes from this point
                    // when the checkpoint still matches (also after a fence: the agent accepts
                    // the checkpoint's generation plus the fencing step).
                    tracing::info!(op = %run.op, vol = %vol, percent = p.percent, written_by = p.host_id, resumable = p.resumable, last_error = ?p.last_error, age_s = p.age_s, "destination progress on storage");
                }
                let rec = Record::CopyEnd {
                    op: run.op.clone(),
                    vol: vol.clone(),
                    job: t.job_id.clone(),
                    done: false,
                    generation: None,
                    fenced,
                    error: Some(JobError::from(&error)),
                    start,
                };
                let next = if fenced || retryable(error.code) {
                    Ok(Some(error.to_string()))
                } else {
                    Err(Stop::Abandon(format!(
                        "copy of volume {vol} failed: {error}"
                    )))
                };
                (rec, next)
            }
        };
        self.record_and_announce(run, rec, &t.host).await?;
        next
    }
}

/// A followed copy: its verdict, and where its copy started when its host said.
pub(super) struct Followed {
    verdict: Verdict,
    start: Option<CopyStart>,
}
