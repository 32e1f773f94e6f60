//! Phase 2, clone: the destination's volumes are created with the source's ids, parents first,
//! and marked ILLEGAL, so that an empty destination never looks usable. Also the volume reads
//! and the ILLEGAL marking that later phases reuse.

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ObjectParams;
use sdm_proto::api::CreateVolumeParams;
use sdm_proto::{
    Capacity, Description, ErrorCode, Generation, Legality, Sequence, Size, Uuid, VolumeAttributes,
    VolumeInfo,
};

use crate::client::{job_outcome, AgentClient};
use crate::error::Error;
use crate::follow::{self, VolumeId};
use crate::journal::OpState;
use sdm_proto::SdmApiClient;

use super::event::Phase;
use super::run::{volume_on, Disks, Run, Step, Stop};

impl Disks {
    pub(super) async fn clone_structure(&self, run: &Run<'_>, st: &OpState) -> Step {
        run.phase(Phase::Clone);
        let dst = st
            .dst_sd
            .clone()
            .ok_or_else(|| Stop::Abandon("no destination domain".into()))?;
        let c = self
            .reader(&dst)
            .await
            .map_err(|e| Stop::Later(e.to_string()))?;
        let (dst_ref, img) = (&dst, &st.image);
        for spec in &st.volumes {
            // Created before a crash (and maybe marked ILLEGAL already, which would make the
            // agent refuse a child's creation over it): keep it; it is checked below.
            let vol = volume_on(&dst, st, &spec.vol_id);
            let v = &vol;
            match call!(
                c,
                get_volume_info(v.sd_id.clone(), v.img_id.clone(), v.vol_id.clone())
            )
            .await
            {
                Ok(_) => continue,
                Err(Error::Api(e))
                    if matches!(
                        e.code,
                        ErrorCode::VolumeDoesNotExist | ErrorCode::ImageDoesNotExistInSD
                    ) => {}
                Err(Error::Api(e)) => {
                    return Err(Stop::Abandon(format!("destination volume {vol}: {e}")))
                }
                Err(e) => return Err(Stop::Later(e.to_string())),
            }
            let parent = &(!spec.parent.is_blank()).then(|| spec.parent.clone());
            let description = &Description::parse(&spec.description).ok();
            let p = CreateVolumeParams {
                sd_id: dst_ref.clone(),
                img_id: img.clone(),
                vol_id: spec.vol_id.clone(),
                capacity: Capacity(Size(spec.capacity)),
                format: spec.format,
                preallocate: spec.allocation,
                parent_vol_id: parent.clone(),
                description: description.clone(),
                sequence: Sequence::new(spec.sequence).ok(),
                parent_img_id: None,
                disk_type: None,
                initial_size: None,
                legal: None,
                add_bitmaps: None,
                bitmap: None,
            };
            let params = named_params(&p)
                .map_err(|e| Stop::Abandon(format!("encoding Volume.create: {e}")))?;
            let r = c
                .read(|h| {
                    let params = params.clone();
                    async move {
                        h.request::<serde_json::Value, _>("Volume.create", params)
                            .await
                    }
                })
                .await;
            match r {
                Ok(_) => {}
                // Created by an earlier attempt whose answer was lost, or before a crash.
                Err(Error::Api(e)) if e.code == ErrorCode::VolumeAlreadyExists => {}
                // Another creation of this volume (an earlier attempt still running on a host
                // that stopped answering) holds its lease, or a job holds the parent's.
                Err(Error::Api(e)) if e.code == ErrorCode::AcquireLockFailure => {
                    return Err(Stop::Later(format!(
                        "creating volume {} on the destination: {e}",
                        spec.vol_id
                    )))
                }
                Err(Error::Api(e)) => {
                    return Err(Stop::Abandon(format!(
                        "creating volume {} on the destination: {e}",
                        spec.vol_id
                    )))
                }
                Err(e) => return Err(Stop::Later(e.to_string())),
            }
        }
        // Every volume must exist before any is marked ILLEGAL: a child cannot be created
        // over an ILLEGAL parent.
        let mut infos = Vec::with_capacity(st.volumes.len());
        for spec in &st.volumes {
            let vol = volume_on(&dst, st, &spec.vol_id);
            let v = &vol;
            let info = match call!(
                c,
                get_volume_info(v.sd_id.clone(), v.img_id.clone(), v.vol_id.clone())
            )
            .await
            {
                Ok(info) => info,
                // Half-made: an agent died creating it (or its creation still runs on a host
                // that stopped answering). The next attempt's create takes it over.
                Err(Error::Api(e)) if e.code == ErrorCode::VolumeDoesNotExist => {
                    return Err(Stop::Later(format!("destination volume {vol}: {e}")))
                }
                Err(Error::Api(e)) => return Err(Stop::Abandon(format!("volume {vol}: {e}"))),
                Err(e) => return Err(Stop::Later(e.to_string())),
            };
            if info.format != spec.format || info.capacity.get() != spec.capacity {
                return Err(Stop::Abandon(format!(
                    "destination volume {} exists as {} of {} bytes, the source is {} of {}",
                    spec.vol_id, info.format, info.capacity, spec.format, spec.capacity
                )));
            }
            infos.push((vol, info));
        }
        for (vol, info) in infos {
            if info.legality == Legality::Legal {
                self.set_illegal(&c, &vol, info.generation).await?;
            }
        }
        Ok(())
    }

    /// A volume's info; an agent's refusal abandons the operation, a lost host postpones it.
    pub(super) async fn volume_info(&self, c: &AgentClient, vol: &VolumeId) -> Step<VolumeInfo> {
        call!(
            c,
            get_volume_info(vol.sd_id.clone(), vol.img_id.clone(), vol.vol_id.clone())
        )
        .await
        .map_err(|e| match e {
            Error::Api(a) => Stop::Abandon(format!("volume {vol}: {a}")),
            e => Stop::Later(e.to_string()),
        })
    }

    /// Marks a volume ILLEGAL, keeping its generation.
    pub(super) async fn set_illegal(
        &self,
        c: &AgentClient,
        vol: &VolumeId,
        generation: u16,
    ) -> Step {
        let job = Uuid::new_v4();
        let attrs = VolumeAttributes {
            legality: Some(Legality::Illegal),
            generation: Some(Generation(generation)),
            ..Default::default()
        };
        let submitted = follow::submit_update(c, &job, vol, generation, attrs).await;
        let outcome = match submitted {
            Ok(()) => match follow::follow_plain(c, &job, &self.follow, self.lost_after(), &|_| {})
                .await
            {
                Ok(info) => job_outcome(&info).map_err(Error::Api),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(()),
            // Already ILLEGAL.
            Err(Error::Api(e)) if e.code == ErrorCode::InvalidVolumeUpdate => Ok(()),
            // The agent restarted and forgot the job: the volume tells whether it ran.
            Err(Error::Api(e)) if e.code == ErrorCode::NoSuchJob => {
                match self.volume_info(c, vol).await {
                    Ok(info) if info.legality == Legality::Illegal => Ok(()),
                    Ok(_) => Err(Stop::Later(format!(
                        "marking volume {vol} ILLEGAL: its job was lost ({e}); retried later"
                    ))),
                    Err(Stop::Abandon(m)) => Err(Stop::Later(m)),
                    Err(s) => Err(s),
                }
            }
            Err(Error::Api(e)) if e.code == ErrorCode::AcquireLockFailure => {
                Err(Stop::Later(format!("volume {vol} is in use: {e}")))
            }
            Err(Error::Api(e)) => Err(Stop::Abandon(format!("marking volume {vol} ILLEGAL: {e}"))),
            Err(e) => Err(Stop::Later(e.to_string())),
        }
    }
}

/// `params` as named JSON-RPC parameters. `Volume.create` goes out this way rather than through
/// the typed client because `sequence` is one of the parameters the typed client does not send
/// (`+ server` in the method table): a moved volume keeps its place in the chain, as VDSM's
/// copies do.
fn named_params(params: &CreateVolumeParams) -> Result<ObjectParams, serde_json::Error> {
    let mut out = ObjectParams::new();
    if let serde_json::Value::Object(m) = serde_json::to_value(params)? {
        for (k, v) in m {
            out.insert(&k, v)?;
        }
    }
    Ok(out)
}
