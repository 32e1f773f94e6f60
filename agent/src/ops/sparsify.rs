//! `SDM.sparsify_volume`: every all-zero range of a volume given back to the storage — holes in
//! a RAW file, zero clusters in a COW volume (`Engine::sparsify`) — without changing what the
//! volume reads.
//!
//! This is not VDSM's sparsify, which runs `virt-sparsify --in-place`: that tool trims the
//! guest's file systems (fstrim), releasing blocks the guest no longer uses but still holds
//! data in; only ranges that are zeros already are released here (docs/qcow2.md). Because
//! nothing a reader sees changes, the volume need not be a leaf (VDSM's rule); it must not be
//! SHARED (219) or ILLEGAL (227). The volume is ILLEGAL while its metadata is rewritten in
//! place, then LEGAL with generation+1.

use std::sync::Arc;

use sdm_proto::api::SparsifyVolumeParams;
use sdm_proto::{ApiError, ErrorCode, JobResult, Legality, VolumeRef, VolumeRole};

use super::chain::{image_format, layer_path};
use super::volume_job::{with_volume, Target};
use super::{check_abort, spawn_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::service::Agent;

/// Validates and schedules a sparsify.
pub fn schedule(agent: &Arc<Agent>, p: SparsifyVolumeParams) -> Result<(), AgentError> {
    let SparsifyVolumeParams { job_id, vol_info } = p;
    let agent2 = agent.clone();
    spawn_job(agent, &job_id, "sparsify_volume", move |job| {
        run(&agent2, job, &vol_info)
    })
}

fn run(agent: &Agent, job: &Arc<Job>, v: &VolumeRef) -> Result<Option<JobResult>, AgentError> {
    with_volume(agent, job, Target::of(v), &[], |held| {
        if held.md.role == VolumeRole::Shared {
            return Err(ApiError::new(
                ErrorCode::SharedVolumeNonWritable,
                format!("volume {} is shared (a template)", v.vol_id),
            )
            .into());
        }
        if held.md.legality != Legality::Legal {
            return Err(ApiError::new(
                ErrorCode::prepareIllegalVolumeError,
                format!("volume {} is {}", v.vol_id, held.md.legality),
            )
            .into());
        }
        let data = held.dom.backend.prepare(&v.img_id, &v.vol_id)?;
        check_abort(job)?;
        held.mark_illegal(|_| {})?;
        fail::fail_point!("sdm::sparsify::after_illegal");
        let ctl = job.control();
        ctl.set_bandwidth_limit(
            (agent.cfg.io.bandwidth_limit > 0).then_some(agent.cfg.io.bandwidth_limit),
        );
        job.mark_started();
        let layer = sdm_io::Layer {
            path: layer_path(&held.dom, &v.img_id, &v.vol_id, &data),
            format: image_format(held.md.format),
        };
        let r = agent.engine.sparsify(&layer, ctl)?;
        tracing::info!(job = %job.id(), converter = ?r.converter, given_back = r.bytes_given_back, before = r.allocated_before, after = r.allocated_after, "sparsified");
        check_abort(job)?;
        held.finish()
    })?;
    Ok(None)
}
