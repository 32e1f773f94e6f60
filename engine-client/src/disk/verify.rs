//! Phases 4 and 5: verify (`Volume.checksum` of every source and destination volume, compared)
//! and commit (every destination volume read back LEGAL at its copy's generation, then the
//! commit record, from which the destination is the disk).

use sdm_proto::{ChecksumAlgorithm, Legality, Uuid};

use crate::client::job_outcome;
use crate::error::Error;
use crate::follow;
use crate::journal::{OpState, Record};
use sdm_proto::SdmApiClient;

use super::event::Phase;
use super::retry::{in_parallel, Rounds};
use super::run::{dst_of, retryable, volume_on, Disks, Run, Step, Stop};

/// Hosts a checksum is tried on before the operation waits for `resume`.
const CHECKSUM_ROUNDS: u32 = 3;

impl Disks {
    pub(super) async fn verify_all(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.phase(Phase::Verify);
        let todo: Vec<Uuid> = st
            .volumes
            .iter()
            .filter(|v| {
                st.copies
                    .get(&v.vol_id)
                    .is_none_or(|c| c.checksum.is_none())
            })
            .map(|v| v.vol_id.clone())
            .collect();
        let parallelism = st.policy.parallelism.max(self.pool.urls().len()).max(1);
        in_parallel(run, todo, parallelism, |vol| {
            self.verify_volume(run, &st, vol)
        })
        .await
    }

    async fn verify_volume(&self, run: &Run<'_>, st: &OpState, vol: Uuid) -> Step {
        let dst_sd = dst_of(st);
        let (s, d) = futures::join!(
            self.checksum(&st.src_sd, &st.image, &vol),
            self.checksum(&dst_sd, &st.image, &vol)
        );
        let (s, d) = (s?, d?);
        if s != d {
            let e = Error::Verification {
                vol: vol.clone(),
                src: s,
                dst: d,
            };
            return Err(Stop::Abandon(e.to_string()));
        }
        let rec = Record::Verified {
            op: run.op.clone(),
            vol,
            checksum: s,
        };
        self.record_and_announce(run, rec, "").await
    }

    /// SHA-256 of a volume, computed by a host that sees its domain; retried elsewhere when the
    /// host is lost (a checksum is read-only, so repeating it is harmless).
    async fn checksum(&self, sd: &Uuid, img: &Uuid, vol: &Uuid) -> Step<String> {
        let domains = vec![sd.clone()];
        let mut rounds = Rounds::new(&self.pool, domains, 0, Vec::new(), Some(CHECKSUM_ROUNDS));
        while let Some(placement) = rounds.next().await? {
            let c = placement.client().clone();
            let job = Uuid::new_v4();
            let submitted = c
                .submit(&job, |h| {
                    let (j, s, i, v) = (job.clone(), sd.clone(), img.clone(), vol.clone());
                    async move {
                        h.checksum_volume(j, s, i, v, Some(ChecksumAlgorithm::Sha256))
                            .await
                    }
                })
                .await;
            let r = match submitted {
                Ok(()) => {
                    follow::follow_plain(&c, &job, &self.follow, self.lost_after(), &|_| {}).await
                }
                Err(e) => Err(e),
            };
            let abandon = |e| Stop::Abandon(format!("checksum of {sd}/{img}/{vol}: {e}"));
            let host = c.url().to_string();
            match r {
                Ok(info) => match (job_outcome(&info), info.result) {
                    (Ok(()), Some(res)) => return Ok(res.checksum),
                    (Ok(()), None) => rounds.failed(
                        host,
                        format!("checksum job {job} ended without a result"),
                        false,
                    ),
                    (Err(e), _) if retryable(e.code) => rounds.failed(host, e.to_string(), false),
                    (Err(e), _) => return Err(abandon(e)),
                },
                Err(Error::Api(e)) if !retryable(e.code) => return Err(abandon(e)),
                Err(e) => rounds.failed(host, e.to_string(), e.is_transport()),
            }
        }
        Err(Stop::Later(format!(
            "checksum of {sd}/{img}/{vol} could not be computed: {}",
            rounds.last_error()
        )))
    }

    pub(super) async fn commit(&self, run: &Run<'_>) -> Step {
        let st = self.state(&run.op)?;
        run.phase(Phase::Commit);
        let dst_sd = dst_of(&st);
        let c = self
            .reader(&dst_sd)
            .await
            .map_err(|e| Stop::Later(e.to_string()))?;
        for spec in &st.volumes {
            let vol = volume_on(&dst_sd, &st, &spec.vol_id);
            let info = self.volume_info(&c, &vol).await?;
            let want = st.copies.get(&spec.vol_id).and_then(|c| c.done_generation);
            if info.legality != Legality::Legal || Some(info.generation) != want {
                return Err(Stop::Abandon(format!(
                    "destination volume {} is {} at generation {} after its copy (expected LEGAL at {})",
                    spec.vol_id,
                    info.legality,
                    info.generation,
                    want.map(|g| g.to_string()).unwrap_or_else(|| "?".into())
                )));
            }
        }
        self.record_and_announce(run, Record::Commit { op: run.op.clone() }, "")
            .await?;
        tracing::info!(op = %run.op, image = %st.image, dst_sd = %dst_sd, "destination committed");
        Ok(())
    }
}
