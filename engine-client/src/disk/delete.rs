//! Phase 6 and the way back: deleting the source of a committed move (marked ILLEGAL first),
//! the image of a delete, or the destination of a rollback, leftovers included.

use std::sync::atomic::Ordering;

use sdm_proto::{ApiError, ErrorCode, Flag, JobError, JobInfo, JobStatus, Legality, Uuid};

use crate::client::job_outcome;
use crate::error::Error;
use crate::follow::{self, CopyTicket};
use crate::journal::{OpState, Record};
use crate::op::Outcome;
use sdm_proto::SdmApiClient;

use super::event::{Event, Phase};
use super::retry::Rounds;
use super::run::{dst_of, volume_on, Disks, Run, Step, Stop};

/// Hosts an image deletion, and a leftover cleanup, are tried on before the operation waits
/// for `resume`.
const DELETE_ROUNDS: u32 = 3;

impl Disks {
    pub(super) async fn delete_source(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.phase(Phase::DeleteSource);
        if !st.source_illegal {
            // The destination is the disk now; the source must not be taken for it, even if
            // its deletion has to wait.
            let c = self
                .reader(&st.src_sd)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            for spec in &st.volumes {
                let vol = volume_on(&st.src_sd, &st, &spec.vol_id);
                let v = &vol;
                let r = call!(
                    c,
                    get_volume_info(v.sd_id.clone(), v.img_id.clone(), v.vol_id.clone())
                )
                .await;
                match r {
                    Ok(info) if info.legality == Legality::Legal => {
                        match self.set_illegal(&c, &vol, info.generation).await {
                            Ok(()) => {}
                            Err(Stop::Abandon(m)) => return Err(Stop::Later(m)),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(_) => {}
                    // Already (being) deleted.
                    Err(Error::Api(e))
                        if matches!(
                            e.code,
                            ErrorCode::ImageDoesNotExistInSD | ErrorCode::VolumeDoesNotExist
                        ) => {}
                    Err(e) => return Err(Stop::Later(e.to_string())),
                }
            }
            self.record(Record::SourceIllegal { op: run.op.clone() })
                .await?;
        }
        match self
            .delete_image(run, &st.src_sd, st.policy.wipe, st.policy.discard)
            .await
        {
            Ok(()) => Ok(()),
            Err(Stop::Refused(e)) => Err(Stop::Later(format!(
                "the source could not be deleted and stays ILLEGAL until resume retries: {e}"
            ))),
            Err(Stop::Abandon(m)) => Err(Stop::Later(m)),
            Err(e) => Err(e),
        }
    }

    /// Records a deletion that ended without the image gone, and announces it.
    async fn deletion_failed(&self, run: &Run<'_>, sd: &Uuid, e: &ApiError) -> Step {
        let rec = Record::DeleteEnd {
            op: run.op.clone(),
            sd: sd.clone(),
            done: false,
            error: Some(JobError::from(e)),
        };
        self.record_and_announce(run, rec, "").await
    }

    /// Deletes the operation's image from `sd`, leftovers included. Refused when the agent
    /// refuses before changing anything; Later when a deletion began but did not finish.
    pub(super) async fn delete_image(
        &self,
        run: &Run<'_>,
        sd: &Uuid,
        wipe: bool,
        discard: bool,
    ) -> Step {
        let st = self.state(&run.op)?;
        let img = st.image.clone();
        let on = |i: &JobInfo| {
            run.emit(Event::DeleteProgress {
                op: run.op.clone(),
                sd: sd.clone(),
                bytes_done: i.bytes_done,
                bytes_total: i.bytes_total,
                rate_bps: i.rate_bps,
            })
        };

        // A deletion submitted before a crash: settle it first.
        if let Some(d) = st.delete.as_ref().filter(|d| &d.sd == sd && !d.ended) {
            if let Some(c) = self.pool.client(&d.host) {
                if let Ok(info) =
                    follow::follow_plain(&c, &d.job, &self.follow, self.lost_after(), &on).await
                {
                    if info.status == JobStatus::Done {
                        return self.deleted(run, sd).await;
                    }
                }
            }
        }

        let domains = vec![sd.clone()];
        let mut rounds = Rounds::new(&self.pool, domains, 0, Vec::new(), Some(DELETE_ROUNDS));
        while let Some(placement) = rounds.next().await? {
            let c = placement.client().clone();
            let host = placement.url().to_string();
            let i = &img;
            match call!(c, get_volumes(sd.clone(), i.clone())).await {
                Ok(_) => {}
                Err(Error::Api(e)) if e.code == ErrorCode::ImageDoesNotExistInSD => {
                    return self.clean_leftovers(run, sd).await
                }
                Err(Error::Api(e)) => return Err(Stop::Later(e.to_string())),
                Err(e) => {
                    rounds.failed(host, e.to_string(), true);
                    continue;
                }
            }
            let job = Uuid::new_v4();
            let rec = Record::DeleteSubmit {
                op: run.op.clone(),
                sd: sd.clone(),
                host: host.clone(),
                job: job.clone(),
            };
            self.record_and_announce(run, rec, "").await?;
            let j = &job;
            let r = call!(
                c,
                delete_image(
                    i.clone(),
                    sd.clone(),
                    Some(Flag(wipe)),
                    None,
                    Some(Flag(discard)),
                    Some(j.clone())
                )
            )
            .await;
            match r {
                // A retry after a lost answer finds the image already renamed: the first
                // attempt went through.
                Ok(_) => {}
                Err(Error::Api(e)) if e.code == ErrorCode::ImageDoesNotExistInSD => {}
                Err(Error::Api(e)) => {
                    self.deletion_failed(run, sd, &e).await?;
                    return Err(Stop::Refused(e));
                }
                Err(e) => {
                    // Maybe done: the next round looks.
                    rounds.failed(host, e.to_string(), true);
                    continue;
                }
            }
            match follow::follow_plain(&c, &job, &self.follow, self.lost_after(), &on).await {
                Ok(info) => match job_outcome(&info) {
                    // The job removed everything: no leftovers to look for (a domain check
                    // reads the whole domain, which costs seconds on a full one).
                    Ok(()) => return self.deleted(run, sd).await,
                    Err(e) => {
                        tracing::warn!(op = %run.op, sd = %sd, job = %job, error = %e, "image deletion job failed; finishing its leftovers");
                    }
                },
                // The host went silent while deleting: its job may still be wiping. Finishing the
                // leftovers elsewhere now would race it, so the deletion waits for `resume`, which
                // first asks that host again.
                Err(e) if e.is_transport() => {
                    return Err(Stop::Later(format!(
                        "deletion job {job} on {host} could not be followed: {e}"
                    )))
                }
                Err(e) => {
                    tracing::warn!(op = %run.op, sd = %sd, job = %job, error = %e, "image deletion job lost; finishing its leftovers")
                }
            }
            return self.clean_leftovers(run, sd).await;
        }
        Err(Stop::Later(format!(
            "image {img} on {sd} could not be deleted: {}",
            rounds.last_error()
        )))
    }

    /// Records a deletion that ended with the image gone, and announces it.
    async fn deleted(&self, run: &Run<'_>, sd: &Uuid) -> Step {
        let rec = Record::DeleteEnd {
            op: run.op.clone(),
            sd: sd.clone(),
            done: true,
            error: None,
        };
        self.record_and_announce(run, rec, "").await
    }

    /// Finishes `_remove_me_` leftovers of the operation's image on `sd` (an interrupted or
    /// failed deletion) with `StorageDomain.fix`, and records the deletion done when none remain.
    async fn clean_leftovers(&self, run: &Run<'_>, sd: &Uuid) -> Step {
        let st = self.state(&run.op)?;
        let names = [
            format!("_remove_me_{}", st.image),
            format!("_remove_me_ZERO_{}", st.image),
        ];
        let mut last = String::new();
        for _ in 0..DELETE_ROUNDS {
            let c = self
                .reader(sd)
                .await
                .map_err(|e| Stop::Later(e.to_string()))?;
            let fixes = match call!(c, check_domain(sd.clone())).await {
                Ok(f) => f,
                Err(e) => {
                    if e.is_transport() {
                        self.pool.mark_down(c.url(), &e.to_string());
                    }
                    last = e.to_string();
                    continue;
                }
            };
            let leftover = fixes.into_iter().find(|f| {
                f.data.get("kind").and_then(|k| k.as_str()) == Some("leftover")
                    && f.data
                        .get("name")
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| names.iter().any(|m| m == n))
            });
            let Some(fix) = leftover else {
                return self.deleted(run, sd).await;
            };
            let job = Uuid::new_v4();
            let rec = Record::DeleteSubmit {
                op: run.op.clone(),
                sd: sd.clone(),
                host: c.url().into(),
                job: job.clone(),
            };
            self.record_and_announce(run, rec, "").await?;
            let (f, j) = (&fix, &job);
            let r = match call!(c, fix_domain(sd.clone(), f.clone(), Some(j.clone()))).await {
                Ok(_) => {
                    follow::follow_plain(&c, &job, &self.follow, self.lost_after(), &|_| {}).await
                }
                Err(e) => Err(e),
            };
            match r.map(|info| job_outcome(&info)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(Error::Api(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        let e = ApiError::new(
            ErrorCode::GeneralException,
            format!("leftovers of image {} remain on {sd}: {last}", st.image),
        );
        self.deletion_failed(run, sd, &e).await?;
        Err(Stop::Later(e.message))
    }

    // --- rollback -----------------------------------------------------------------------

    pub(super) async fn rollback(&self, run: &Run<'_>, st: &OpState, reason: String) -> Step {
        run.phase(Phase::Rollback);
        run.cancel.store(true, Ordering::Relaxed);
        let dst_sd = dst_of(st);
        // Copies still undecided (after a crash) are stopped and settled first: the
        // destination cannot be deleted under a writer.
        for (vol, copy) in &st.copies {
            if let Some(a) = copy.undecided() {
                let ticket = CopyTicket {
                    host: a.host.clone(),
                    job_id: a.job.clone(),
                    dst: volume_on(&dst_sd, st, vol),
                    generation: a.generation,
                };
                let verdict = self.follow_copy(run, &ticket).await?;
                let _ = self.conclude(run, &ticket, verdict).await;
            }
        }
        match self
            .delete_image(run, &dst_sd, st.policy.wipe, st.policy.discard)
            .await
        {
            Ok(()) => self.end(run, Outcome::RolledBack, Some(reason)).await,
            Err(Stop::Refused(e)) => Err(Stop::Later(format!(
                "rolling back ({reason}): the destination could not be deleted yet: {e}"
            ))),
            Err(Stop::Abandon(m)) => Err(Stop::Later(m)),
            Err(e) => Err(e),
        }
    }
}
