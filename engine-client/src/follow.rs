//! Following a copy job to a verdict, by the engine's recovery table.
//!
//! Jobs live in the agent's memory only. While the job's host answers and knows the job, the
//! job's own status decides. When the host does not answer, or answers without the job (it
//! restarted, or the submission never arrived), the destination volume decides, read with
//! `Volume.getInfo` from any healthy host that sees its domain. `G` is the destination's
//! generation read just before the copy was submitted:
//!
//! | destination volume | verdict |
//! |---|---|
//! | lease held (owners non-empty) | running: keep waiting |
//! | generation G+1 | done |
//! | generation G+3 | failed: fenced |
//! | anything else | unknown: fence (`SDM.update_volume` G → G+3), decide on the next cycle |
//!
//! Fencing needs the volume lease, so it cannot succeed while a copy holds it; once it succeeds
//! a lost copy can never commit: one that has not started fails its generation check, one that
//! is running finds the generation changed before its final write. Legality is not looked at,
//! as in the engine. Unlike the engine, generations are compared modulo 1000, because the agent
//! wraps them (999 + 1 = 0).
//!
//! This file holds the following loops ([`follow_copy`], [`follow_plain`]) and what they are
//! given (volume ids, tickets, options); `table` holds the recovery table itself, `probe` the
//! findings a cycle gathers (job status, destination volume, fencing) and `report` what is
//! reported to the caller ([`Decision`], [`Verdict`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sdm_proto::{
    ApiError, ErrorCode, Generation, JobInfo, SdmApiClient, Uuid, VolumeAttributes, VolumeRef,
};
use serde::{Deserialize, Serialize};

use crate::client::AgentClient;
use crate::error::Error;
use crate::pool::HostPool;

mod probe;
mod report;
mod table;

use probe::{fence, host_word, job_verdict, observe, subscribe, Observed, Word};
pub use report::{Decision, Verdict};
pub use table::{decide, gen_plus, Observation, TableVerdict};

/// A volume by its domain, image and volume ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VolumeId {
    /// Storage domain.
    pub sd_id: Uuid,
    /// Image.
    pub img_id: Uuid,
    /// Volume.
    pub vol_id: Uuid,
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.sd_id, self.img_id, self.vol_id)
    }
}

/// Submits `SDM.update_volume` of `vol`, which must still be at generation `g`, as job `job`
/// (retried with the same job id on transport failures, see [`AgentClient::submit`]).
pub async fn submit_update(
    c: &AgentClient,
    job: &Uuid,
    vol: &VolumeId,
    g: u16,
    attrs: VolumeAttributes,
) -> Result<(), Error> {
    let vref = VolumeRef {
        sd_id: vol.sd_id.clone(),
        img_id: vol.img_id.clone(),
        vol_id: vol.vol_id.clone(),
        generation: Some(Generation(g)),
    };
    c.submit(job, |h| {
        let (j, v, a) = (job.clone(), vref.clone(), attrs.clone());
        async move { h.update_volume(j, v, a).await }
    })
    .await
}

/// A submitted copy: everything needed to follow it, also after an engine restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyTicket {
    /// URL of the host the job was submitted to.
    pub host: String,
    /// The job id.
    pub job_id: Uuid,
    /// The destination volume.
    pub dst: VolumeId,
    /// The destination's generation read just before submitting (`G`).
    pub generation: u16,
}

/// How to follow jobs.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// Pause between cycles when polling.
    pub poll_interval: Duration,
    /// Follow by `Job.subscribe` (WebSocket) while the host answers; polls check the host's
    /// health meanwhile. False: poll `Host.getJobs` only.
    pub subscribe: bool,
    /// How long to wait for a fencing job to end before deciding on the next cycle anyway.
    pub fence_timeout: Duration,
    /// Give up following after this long (None: never; the job keeps its journal entry and
    /// `resume` follows it again).
    pub give_up_after: Option<Duration>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll_interval: Duration::from_millis(500),
            subscribe: true,
            fence_timeout: Duration::from_secs(30),
            give_up_after: None,
        }
    }
}

/// Follows a copy to its verdict by the recovery table (module documentation), reporting every
/// finding to `on`. Setting `cancel` makes it send `Job.abort` once and go on to the verdict.
/// Errors only when `give_up_after` passes.
pub async fn follow_copy(
    pool: &HostPool,
    t: &CopyTicket,
    opts: &FollowOptions,
    cancel: Option<&AtomicBool>,
    on: &(dyn Fn(&Decision) + Send + Sync),
) -> Result<Verdict, Error> {
    let started = Instant::now();
    let probe = pool.probe_client(&t.host);
    let quiet = (opts.poll_interval * 4).max(Duration::from_secs(1));
    let mut sub = None;
    if opts.subscribe {
        if let Some(c) = &probe {
            sub = subscribe(c, &t.job_id, pool.options().probe_timeout).await;
        }
    }
    let mut abort_sent = false;
    loop {
        if let Some(limit) = opts.give_up_after {
            if started.elapsed() > limit {
                return Err(Error::Operation(format!(
                    "gave up following copy job {} on {} after {limit:?}",
                    t.job_id, t.host
                )));
            }
        }
        if !abort_sent && cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            abort_sent = true;
            if let Some(c) = &probe {
                // Best effort: a finished or unknown job needs no abort.
                let _ = c.api().abort_job(t.job_id.clone()).await;
            }
            on(&Decision::Aborting {
                host: t.host.clone(),
            });
        }

        match host_word(&mut sub, probe.as_ref(), &t.job_id, quiet).await {
            Word::Job(info) => {
                let active = info.status.is_active();
                on(&Decision::Job {
                    info: (*info).clone(),
                });
                if !active {
                    return Ok(job_verdict(&info, t.generation));
                }
                if sub.is_none() {
                    tokio::time::sleep(opts.poll_interval).await;
                }
                continue;
            }
            Word::Missing => on(&Decision::JobMissing {
                host: t.host.clone(),
            }),
            Word::Unreachable(error) => {
                pool.mark_down(&t.host, &error);
                sub = None;
                on(&Decision::HostUnreachable {
                    host: t.host.clone(),
                    error,
                });
            }
        }

        match observe(pool, &t.dst).await {
            Observed::Nobody(error) => {
                on(&Decision::NoObserver { error });
                pool.refresh().await;
                tokio::time::sleep(opts.poll_interval).await;
            }
            Observed::Gone(error) => {
                return Ok(Verdict::Failed {
                    error,
                    fenced: false,
                })
            }
            Observed::Seen(via, obs) => match decide(&obs, t.generation) {
                TableVerdict::Running => {
                    on(&Decision::LeaseHeld {
                        via,
                        generation: obs.generation,
                    });
                    tokio::time::sleep(opts.poll_interval).await;
                }
                TableVerdict::Done => {
                    on(&Decision::GenerationDone {
                        via,
                        generation: obs.generation,
                    });
                    return Ok(Verdict::Done {
                        generation: obs.generation,
                    });
                }
                TableVerdict::Fenced => {
                    on(&Decision::GenerationFenced {
                        via,
                        generation: obs.generation,
                    });
                    let error = ApiError::new(
                        ErrorCode::GeneralException,
                        format!(
                            "copy job {} on {} was lost; its destination {} is fenced at generation {}",
                            t.job_id, t.host, t.dst.vol_id, obs.generation
                        ),
                    );
                    return Ok(Verdict::Failed {
                        error,
                        fenced: true,
                    });
                }
                TableVerdict::Unknown => fence(pool, &t.dst, t.generation, opts, on).await,
            },
        }
    }
}

/// Follows a job that needs no recovery table (checksums, deletions, fixes, fences): until it
/// ends, while its host answers. A host that stops answering for `lost_after`, or forgets the
/// job, ends the wait with an error; `on` sees every info.
pub async fn follow_plain(
    client: &AgentClient,
    job: &Uuid,
    opts: &FollowOptions,
    lost_after: Duration,
    on: &(dyn Fn(&JobInfo) + Send + Sync),
) -> Result<JobInfo, Error> {
    let probe = client.with_timeout(lost_after.min(Duration::from_secs(5)))?;
    let mut sub = None;
    if opts.subscribe {
        sub = subscribe(&probe, job, lost_after.min(Duration::from_secs(5))).await;
    }
    let quiet = (opts.poll_interval * 4).max(Duration::from_secs(1));
    let mut silent_since: Option<Instant> = None;
    loop {
        match host_word(&mut sub, Some(&probe), job, quiet).await {
            Word::Job(info) => {
                silent_since = None;
                on(&info);
                if !info.status.is_active() {
                    return Ok(*info);
                }
                if sub.is_none() {
                    tokio::time::sleep(opts.poll_interval).await;
                }
            }
            Word::Missing => {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::NoSuchJob,
                    format!("job {job} is not known to {}", client.url()),
                )))
            }
            Word::Unreachable(e) => {
                sub = None;
                let since = *silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= lost_after {
                    return Err(Error::Transport {
                        url: client.url().to_string(),
                        message: e,
                    });
                }
                tokio::time::sleep(opts.poll_interval).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(lease_held: bool, generation: u16) -> Observation {
        Observation {
            lease_held,
            generation,
        }
    }

    #[test]
    fn the_recovery_table() {
        assert_eq!(decide(&obs(true, 5), 5), TableVerdict::Running);
        // A held lease wins even over a generation that looks final.
        assert_eq!(decide(&obs(true, 6), 5), TableVerdict::Running);
        assert_eq!(decide(&obs(false, 6), 5), TableVerdict::Done);
        assert_eq!(decide(&obs(false, 8), 5), TableVerdict::Fenced);
        assert_eq!(decide(&obs(false, 5), 5), TableVerdict::Unknown);
        assert_eq!(decide(&obs(false, 7), 5), TableVerdict::Unknown);
        assert_eq!(decide(&obs(false, 4), 5), TableVerdict::Unknown);
    }

    #[test]
    fn generations_wrap_like_the_agent() {
        assert_eq!(gen_plus(999, 1), 0);
        assert_eq!(gen_plus(998, 3), 1);
        assert_eq!(decide(&obs(false, 0), 999), TableVerdict::Done);
        assert_eq!(decide(&obs(false, 2), 999), TableVerdict::Fenced);
        assert_eq!(Generation(999).next().get(), gen_plus(999, 1));
    }
}
