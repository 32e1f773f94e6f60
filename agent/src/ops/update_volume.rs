//! `SDM.update_volume`: change legality, description, generation or type of a volume under its
//! lease, in one metadata write. The engine fences a lost copy with it (generation G → G+3): a
//! stale copy job that starts later fails its generation check, and one that finishes later
//! finds the generation changed and does not mark the volume LEGAL.

use std::sync::Arc;

use sdm_proto::api::UpdateVolumeParams;
use sdm_proto::{
    ApiError, ErrorCode, Generation, JobResult, VolumeAttributes, VolumeRef, VolumeRole,
    MAX_DESCRIPTION_CHARS,
};

use super::{lock_for_job, spawn_metadata_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::volume::{read_metadata, update_metadata};

/// Validates and schedules an update.
pub fn schedule(agent: &Arc<Agent>, p: UpdateVolumeParams) -> Result<(), AgentError> {
    let UpdateVolumeParams {
        job_id,
        vol_info: vol,
        vol_attr: attrs,
    } = p;
    if attrs.is_empty() {
        return Err(ApiError::invalid(
            "vol_attr is empty: give legality, description, generation or type",
        )
        .into());
    }
    if matches!(attrs.role, Some(r) if r != VolumeRole::Shared) {
        return Err(ApiError::invalid("vol_attr.type can only be SHARED").into());
    }
    if matches!(attrs.legality, Some(sdm_proto::Legality::Fake)) {
        return Err(ApiError::invalid("vol_attr.legality must be LEGAL or ILLEGAL").into());
    }
    let agent2 = agent.clone();
    spawn_metadata_job(agent, &job_id, "update_volume", move |job| {
        run(&agent2, job, &vol, &attrs)
    })
}

fn invalid_update(msg: String) -> AgentError {
    ApiError::new(ErrorCode::InvalidVolumeUpdate, msg).into()
}

fn run(
    agent: &Agent,
    job: &Arc<Job>,
    v: &VolumeRef,
    attrs: &VolumeAttributes,
) -> Result<Option<JobResult>, AgentError> {
    let dom = agent.domain(&v.sd_id)?;
    // Lease first, never waiting (see copy_data): fencing a volume that a live job writes
    // fails at once with AcquireLockFailure, and the engine decides again on its next poll.
    read_metadata(&dom, &v.img_id, &v.vol_id)?;
    let held = dom.acquire_volume_lease(&v.img_id, &v.vol_id)?;
    let _locks = lock_for_job(
        agent,
        job,
        &[
            (domain_key(v.sd_id.as_str()), Mode::Shared),
            (
                image_key(v.sd_id.as_str(), v.img_id.as_str()),
                Mode::Exclusive,
            ),
        ],
    )?;
    let mut md = read_metadata(&dom, &v.img_id, &v.vol_id)?;
    match v.generation {
        Some(g) if g.get() == md.generation => {}
        Some(g) => {
            return Err(ApiError::new(
                ErrorCode::GenerationMismatch,
                format!(
                    "volume generation is {}, requested {}",
                    md.generation,
                    g.get()
                ),
            )
            .into())
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::GenerationMismatch,
                format!("volume generation is {}, none was given", md.generation),
            )
            .into())
        }
    }
    if let Some(l) = attrs.legality {
        if l == md.legality {
            return Err(invalid_update(format!(
                "volume {} is already {l}",
                v.vol_id
            )));
        }
        md.legality = l;
    }
    if attrs.role.is_some() {
        if md.role != VolumeRole::Leaf {
            return Err(invalid_update(format!(
                "volume {} is {}, only a LEAF can become SHARED",
                v.vol_id, md.role
            )));
        }
        if md.parent != sdm_proto::BLANK_UUID {
            return Err(invalid_update(format!(
                "volume {} has a parent and cannot become SHARED",
                v.vol_id
            )));
        }
        md.role = VolumeRole::Shared;
    }
    if let Some(d) = &attrs.description {
        md.description = d.as_str().chars().take(MAX_DESCRIPTION_CHARS).collect();
    }
    md.generation = match attrs.generation {
        Some(g) => g.get(),
        None => Generation(md.generation).next().get(),
    };
    fail::fail_point!("sdm::update_volume::before_write");
    held.verify()?;
    update_metadata(&dom, &v.img_id, &v.vol_id, &mut md)?;
    fail::fail_point!("sdm::update_volume::after_write");
    if let Err(e) = held.release() {
        tracing::warn!(error = %e, "releasing the volume lease failed");
    }
    tracing::info!(sd_id = %v.sd_id, vol_id = %v.vol_id, generation = md.generation, legality = %md.legality, "volume updated");
    Ok(None)
}
