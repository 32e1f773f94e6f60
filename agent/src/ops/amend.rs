//! `SDM.amend_volume`: a COW volume's qcow2 compat level changed in place (`qemu-img amend -o
//! compat=`), with the discipline of `ops::volume_job` and VDSM's rules: COW only (2009), not
//! a SHARED volume (219), not ILLEGAL (227); the legality is not touched (a failed amend does
//! not make the disk unusable), the generation goes up by one.

use std::sync::Arc;

use sdm_proto::api::AmendVolumeParams;
use sdm_proto::{ApiError, ErrorCode, JobResult, Legality, VolumeFormat, VolumeRef, VolumeRole};

use super::chain::{chain_of, prepare_chain};
use super::volume_job::{with_volume, Target};
use super::{check_abort, spawn_metadata_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::service::Agent;
use crate::storage::qcow2;

/// Validates and schedules an amend (unknown `qcow2_attr` keys were refused by the decoder).
pub fn schedule(agent: &Arc<Agent>, p: AmendVolumeParams) -> Result<(), AgentError> {
    let AmendVolumeParams {
        job_id,
        vol_info,
        qcow2_attr,
    } = p;
    let agent2 = agent.clone();
    spawn_metadata_job(agent, &job_id, "amend_volume", move |job| {
        run(&agent2, job, &vol_info, qcow2_attr.compat)
    })
}

/// Refuses what no in-place qcow2 job may touch: RAW (2009), SHARED (219), ILLEGAL (227).
fn require_writable_cow(
    v: &VolumeRef,
    md: &crate::storage::md::VolumeMetadata,
    what: &str,
) -> Result<(), AgentError> {
    if md.format != VolumeFormat::Cow {
        return Err(ApiError::new(
            ErrorCode::UnsupportedOperation,
            format!("{what}: volume {} is RAW, not COW", v.vol_id),
        )
        .into());
    }
    if md.role == VolumeRole::Shared {
        return Err(ApiError::new(
            ErrorCode::SharedVolumeNonWritable,
            format!("{what}: volume {} is shared (a template)", v.vol_id),
        )
        .into());
    }
    if md.legality != Legality::Legal {
        return Err(ApiError::new(
            ErrorCode::prepareIllegalVolumeError,
            format!("{what}: volume {} is {}", v.vol_id, md.legality),
        )
        .into());
    }
    Ok(())
}

fn run(
    agent: &Agent,
    job: &Arc<Job>,
    v: &VolumeRef,
    compat: sdm_proto::Qcow2Compat,
) -> Result<Option<JobResult>, AgentError> {
    with_volume(agent, job, Target::of(v), &[], |held| {
        require_writable_cow(v, &held.md, "amend")?;
        // qemu-img amend opens the whole chain.
        let chain = chain_of(&held.dom, &v.img_id, &v.vol_id, &held.md)?;
        let prepared = prepare_chain(&held.dom, &v.img_id, &chain)?;
        check_abort(job)?;
        job.mark_started();
        held.before_write()?;
        qcow2::amend_compat(&prepared.layers[0].path, compat.as_str(), &|| {
            job.fenced().is_some()
        })?;
        held.finish()
    })?;
    tracing::info!(sd_id = %v.sd_id, vol_id = %v.vol_id, compat = %compat, "volume amended");
    Ok(None)
}
