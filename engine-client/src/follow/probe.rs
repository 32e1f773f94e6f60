//! What one cycle of following finds out: the job's own word from its host, the destination
//! volume read from any healthy host, and fencing a lost copy.

use std::time::{Duration, Instant};

use jsonrpsee::core::client::Subscription;
use jsonrpsee::ws_client::WsClient;
use sdm_proto::{
    ApiError, Generation, JobInfo, SdmApiClient, Uuid, VolumeAttributes, FENCING_GENERATION_DIFF,
};

use crate::client::{job_outcome, AgentClient, Via};
use crate::error::Error;
use crate::pool::HostPool;

use super::{gen_plus, submit_update, Decision, FollowOptions, Observation, Verdict, VolumeId};

pub(super) struct JobSub {
    _ws: WsClient,
    sub: Subscription<JobInfo>,
}

pub(super) async fn subscribe(
    client: &AgentClient,
    job: &Uuid,
    timeout: Duration,
) -> Option<JobSub> {
    let fut = async {
        let ws = client.websocket().await.ok()?;
        let sub = ws.subscribe_job(job.clone()).await.ok()?;
        Some(JobSub { _ws: ws, sub })
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

pub(super) enum Word {
    Job(Box<JobInfo>),
    Missing,
    Unreachable(String),
}

/// Asks the job's host: the subscription first (if open), a poll when it is quiet or gone.
pub(super) async fn host_word(
    sub: &mut Option<JobSub>,
    probe: Option<&AgentClient>,
    job: &Uuid,
    quiet: Duration,
) -> Word {
    if let Some(s) = sub.as_mut() {
        match tokio::time::timeout(quiet, s.sub.next()).await {
            Ok(Some(Ok(info))) => return Word::Job(Box::new(info)),
            // Ended or broken: poll from now on.
            Ok(_) => *sub = None,
            // Quiet: a poll tells whether the host is still there.
            Err(_) => {}
        }
    }
    let Some(p) = probe else {
        return Word::Unreachable("the host is not in the pool".into());
    };
    match p.api().get_jobs(None, Some(vec![job.clone()])).await.via(p) {
        Ok(mut m) => m
            .remove(job)
            .map(|i| Word::Job(Box::new(i)))
            .unwrap_or(Word::Missing),
        Err(e) => Word::Unreachable(e.to_string()),
    }
}

pub(super) enum Observed {
    Seen(String, Observation),
    Gone(ApiError),
    Nobody(String),
}

/// Reads the destination from the first healthy host that answers.
pub(super) async fn observe(pool: &HostPool, dst: &VolumeId) -> Observed {
    let mut why = format!("no host that is up sees domain {}", dst.sd_id);
    for c in pool.up_seeing_probe(&dst.sd_id) {
        let r = c
            .api()
            .get_volume_info(dst.sd_id.clone(), dst.img_id.clone(), dst.vol_id.clone())
            .await
            .via(&c);
        match r {
            Ok(info) => {
                let obs = Observation {
                    lease_held: !info.lease.owners.is_empty(),
                    generation: info.generation,
                };
                return Observed::Seen(c.url().to_string(), obs);
            }
            Err(Error::Api(e)) => return Observed::Gone(e),
            Err(e) => {
                pool.mark_down(c.url(), &e.to_string());
                why = e.to_string();
            }
        }
    }
    Observed::Nobody(why)
}

/// Polls a job until it ends or `limit` passes; None when it did not end in time or could not
/// be read.
pub(super) async fn wait_briefly(
    c: &AgentClient,
    job: &Uuid,
    limit: Duration,
) -> Result<JobInfo, String> {
    let deadline = Instant::now() + limit;
    loop {
        match c.api().get_jobs(None, Some(vec![job.clone()])).await.via(c) {
            Ok(m) => match m.get(job) {
                Some(i) if !i.status.is_active() => return Ok(i.clone()),
                Some(_) => {}
                None => return Err(format!("job {job} is not known to {}", c.url())),
            },
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() >= deadline {
            return Err(format!("job {job} did not end within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fences the destination (G → G+3) on the first healthy host that takes the job, and waits a
/// little for the fence to end. Its outcome is only reported: the next cycle reads the volume.
pub(super) async fn fence(
    pool: &HostPool,
    dst: &VolumeId,
    g: u16,
    opts: &FollowOptions,
    on: &(dyn Fn(&Decision) + Send + Sync),
) {
    let to = gen_plus(g, FENCING_GENERATION_DIFF);
    for c in pool.up_seeing_probe(&dst.sd_id) {
        let job = Uuid::new_v4();
        let attrs = VolumeAttributes {
            generation: Some(Generation(to)),
            ..Default::default()
        };
        let r = submit_update(&c, &job, dst, g, attrs).await;
        match r {
            Ok(()) => {
                tracing::warn!(volume = %dst, from = g, to, via = %c.url(), fence_job = %job, "fencing the destination of a lost copy");
                on(&Decision::Fencing {
                    via: c.url().into(),
                    fence_job: job.clone(),
                    from: g,
                    to,
                });
                let outcome = match wait_briefly(&c, &job, opts.fence_timeout).await {
                    Ok(info) => match job_outcome(&info) {
                        Ok(()) => "done".to_string(),
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e,
                };
                on(&Decision::FenceEnded {
                    via: c.url().into(),
                    fence_job: job,
                    outcome,
                });
                return;
            }
            Err(Error::Api(e)) => {
                on(&Decision::FenceEnded {
                    via: c.url().into(),
                    fence_job: job,
                    outcome: e.to_string(),
                });
                return;
            }
            Err(e) => pool.mark_down(c.url(), &e.to_string()),
        }
    }
    on(&Decision::NoObserver {
        error: format!("no healthy host could fence {dst}"),
    });
}

pub(super) fn job_verdict(info: &JobInfo, g: u16) -> Verdict {
    match job_outcome(info) {
        Ok(()) => Verdict::Done {
            generation: gen_plus(g, 1),
        },
        Err(error) => Verdict::Failed {
            error,
            fenced: false,
        },
    }
}
