//! `SDM.add_bitmap`, `SDM.remove_bitmap`, `SDM.clear_bitmaps`: persistent dirty bitmaps of a
//! COW volume, through `qemu-img bitmap` as VDSM runs it, with the discipline of
//! `ops::volume_job` (legality untouched, generation+1). A RAW volume is refused with
//! UnsupportedOperation (2009), as VDSM refuses bitmap operations on RAW volumes.
//!
//! - add: the name must not exist in any volume of the chain (AddBitmapError 1620); the bitmap
//!   is added enabled;
//! - remove: a bitmap that does not exist counts as removed (VDSM logs it and succeeds);
//! - clear: every bitmap of the volume; not on a SHARED volume (2009, as VDSM).

use std::sync::Arc;

use sdm_proto::api::{AddBitmapParams, ClearBitmapsParams, RemoveBitmapParams};
use sdm_proto::{ApiError, BitmapName, ErrorCode, JobResult, VolumeFormat, VolumeRef, VolumeRole};

use super::chain::{chain_of, prepare_chain};
use super::volume_job::{with_volume, Target};
use super::{check_abort, spawn_metadata_job};
use crate::error::{chain_message, AgentError};
use crate::jobs::Job;
use crate::service::Agent;
use crate::storage::qcow2;

enum Action {
    Add(BitmapName),
    Remove(BitmapName),
    Clear,
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Add(_) => "add_bitmap",
            Action::Remove(_) => "remove_bitmap",
            Action::Clear => "clear_bitmaps",
        }
    }
}

/// Schedules `SDM.add_bitmap`.
pub fn schedule_add(agent: &Arc<Agent>, p: AddBitmapParams) -> Result<(), AgentError> {
    schedule(agent, &p.job_id, p.vol_info, Action::Add(p.bitmap))
}

/// Schedules `SDM.remove_bitmap`.
pub fn schedule_remove(agent: &Arc<Agent>, p: RemoveBitmapParams) -> Result<(), AgentError> {
    schedule(agent, &p.job_id, p.vol_info, Action::Remove(p.bitmap))
}

/// Schedules `SDM.clear_bitmaps`.
pub fn schedule_clear(agent: &Arc<Agent>, p: ClearBitmapsParams) -> Result<(), AgentError> {
    schedule(agent, &p.job_id, p.vol_info, Action::Clear)
}

fn schedule(
    agent: &Arc<Agent>,
    job_id: &sdm_proto::Uuid,
    v: VolumeRef,
    a: Action,
) -> Result<(), AgentError> {
    let agent2 = agent.clone();
    spawn_metadata_job(agent, job_id, a.name(), move |job| {
        run(&agent2, job, &v, &a)
    })
}

fn error(code: ErrorCode, what: String) -> AgentError {
    ApiError::new(code, what).into()
}

fn run(
    agent: &Agent,
    job: &Arc<Job>,
    v: &VolumeRef,
    a: &Action,
) -> Result<Option<JobResult>, AgentError> {
    with_volume(agent, job, Target::of(v), &[], |held| {
        if held.md.format != VolumeFormat::Cow {
            return Err(error(
                ErrorCode::UnsupportedOperation,
                format!("{}: volume {} is RAW: bitmaps need COW", a.name(), v.vol_id),
            ));
        }
        if matches!(a, Action::Clear) && held.md.role == VolumeRole::Shared {
            return Err(error(
                ErrorCode::UnsupportedOperation,
                format!("cannot remove bitmaps from shared volume {}", v.vol_id),
            ));
        }
        let chain = chain_of(&held.dom, &v.img_id, &v.vol_id, &held.md)?;
        let prepared = prepare_chain(&held.dom, &v.img_id, &chain)?;
        let path = prepared.layers[0].path.clone();
        check_abort(job)?;
        job.mark_started();
        held.before_write()?;
        let stop = &|| job.fenced().is_some();
        match a {
            Action::Add(name) => {
                let name = name.as_str();
                let cow_depth = chain
                    .iter()
                    .take_while(|c| c.md.format == VolumeFormat::Cow)
                    .count();
                let chain_bitmaps = qcow2::chain_bitmaps(&path)?;
                if chain_bitmaps
                    .iter()
                    .take(cow_depth)
                    .flatten()
                    .any(|b| b.name == name)
                {
                    return Err(error(
                        ErrorCode::AddBitmapError,
                        format!(
                            "the chain of volume {} already has bitmap {name:?}",
                            v.vol_id
                        ),
                    ));
                }
                qcow2::add_bitmap(&path, name, None, stop)
                    .map_err(|e| error(ErrorCode::AddBitmapError, chain_message(&e)))?;
            }
            Action::Remove(name) => {
                let name = name.as_str();
                if qcow2::bitmaps(&path)?.iter().any(|b| b.name == name) {
                    qcow2::remove_bitmap(&path, name, stop)
                        .map_err(|e| error(ErrorCode::RemoveBitmapError, chain_message(&e)))?;
                } else {
                    tracing::warn!(bitmap = %name, vol_id = %v.vol_id, "no such bitmap: counted as removed");
                }
            }
            Action::Clear => {
                for b in qcow2::bitmaps(&path)? {
                    qcow2::remove_bitmap(&path, &b.name, stop)
                        .map_err(|e| error(ErrorCode::RemoveBitmapError, chain_message(&e)))?;
                }
            }
        }
        held.finish()
    })?;
    tracing::info!(sd_id = %v.sd_id, vol_id = %v.vol_id, action = a.name(), "bitmaps changed");
    Ok(None)
}
