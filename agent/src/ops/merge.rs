//! `SDM.merge`: cold merge of a subchain, `top_id` committed into its parent `base_id`.
//!
//! What VDSM splits between the SPM's `prepareMerge` and the `SDM.merge` job happens here in
//! one job (reference: VDSM's `storage/merge.py` and `sdm/api/merge.py`):
//! 1. the base's and the top's leases (never waiting; watched until the job ends), the domain
//!    shared and the image exclusive, both volumes re-read under the leases, the base's
//!    generation checked against `base_generation` (911);
//! 2. the subchain validated: both volumes in the image (VolumeIsNotInChain 920), the base the
//!    top's parent (WrongParentVolume 921), neither SHARED (219), the top LEGAL (227);
//! 3. the chain made usable, stale bitmaps of a COW base pruned (those not valid in the top);
//! 4. the base ILLEGAL and, when the top is larger, its capacity the top's — one durable write
//!    — then a RAW base's data grown;
//! 5. the commit (`Engine::commit`: native, or `qemu-img commit -p -t none -b BASE -f qcow2
//!    TOP`), abortable, throttled, progress in guest bytes of the top;
//! 6. with `merge_bitmaps`, the top's valid bitmaps added to and merged into a COW base;
//! 7. LEGAL and generation+1 in one write.
//!
//! VDSM's own job leaves legality alone (its engine flow keeps the base ILLEGAL in its database
//! meanwhile); sdm marks the base ILLEGAL on disk while it is written, so that a crash leaves
//! it ILLEGAL with its old generation. Such a base may be merged again: the commit writes
//! exactly the ranges the top allocates, so repeating it after an interruption gives the same
//! base. An ILLEGAL base is therefore accepted here (VDSM refuses one), an ILLEGAL top is not.
//! The chain is not changed: the top still names the base, and removing the top (VDSM's SPM
//! `finalizeMerge`, then deleting it) is the engine's next step.

use std::sync::Arc;

use sdm_proto::api::MergeParams;
use sdm_proto::{
    ApiError, ErrorCode, JobResult, Legality, Preallocation, SubchainInfo, VolumeFormat, VolumeRole,
};

use super::chain::{chain_of, image_format, layer_path, parent_of, prepare_chain};
use super::volume_job::{with_volume, Held, Target};
use super::{check_abort, flag, spawn_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::service::Agent;
use crate::storage::qcow2;
use crate::storage::volume::read_metadata;
use crate::storage::StorageError;

/// Validates and schedules a merge.
pub fn schedule(agent: &Arc<Agent>, p: MergeParams) -> Result<(), AgentError> {
    let s = p.subchain_info;
    if s.top_id == s.base_id {
        return Err(ApiError::invalid("top_id and base_id are the same volume").into());
    }
    let merge_bitmaps = flag(p.merge_bitmaps);
    let agent2 = agent.clone();
    spawn_job(agent, &p.job_id, "merge_subchain", move |job| {
        run(&agent2, job, &s, merge_bitmaps)
    })
}

fn not_in_chain(s: &SubchainInfo, vol: &sdm_proto::Uuid) -> AgentError {
    ApiError::new(
        ErrorCode::VolumeIsNotInChain,
        format!(
            "volume {vol} is not in the chain of image {} on domain {}",
            s.img_id, s.sd_id
        ),
    )
    .into()
}

fn run(
    agent: &Agent,
    job: &Arc<Job>,
    s: &SubchainInfo,
    merge_bitmaps: bool,
) -> Result<Option<JobResult>, AgentError> {
    let missing = |vol| {
        move |e: AgentError| match e {
            AgentError::Storage(
                StorageError::VolumeNotFound { .. } | StorageError::ImageNotFound { .. },
            ) => not_in_chain(s, vol),
            e => e,
        }
    };
    // Only refuse missing volumes early, each under its own name; nothing read here is used.
    for vol in [&s.base_id, &s.top_id] {
        let dom = agent.domain(&s.sd_id)?;
        read_metadata(&dom, &s.img_id, vol)
            .map_err(AgentError::from)
            .map_err(missing(vol))?;
    }
    let target = Target {
        sd: s.sd_id.clone(),
        img: s.img_id.clone(),
        vol: s.base_id.clone(),
        generation: s.base_generation,
    };
    // The top is not written, but it must not change under the merge: its lease too.
    with_volume(
        agent,
        job,
        target,
        std::slice::from_ref(&s.top_id),
        |held| merge_held(agent, job, s, merge_bitmaps, held),
    )?;
    tracing::info!(sd_id = %s.sd_id, base = %s.base_id, top = %s.top_id, "merged");
    Ok(None)
}

/// The merge itself, with both leases held and watched and the base re-read under them.
fn merge_held(
    agent: &Agent,
    job: &Arc<Job>,
    s: &SubchainInfo,
    merge_bitmaps: bool,
    held: &mut Held<'_>,
) -> Result<(), AgentError> {
    let dom = held.dom.clone();
    let top_md = read_metadata(&dom, &s.img_id, &s.top_id).map_err(|e| match e {
        StorageError::VolumeNotFound { .. } | StorageError::ImageNotFound { .. } => {
            not_in_chain(s, &s.top_id)
        }
        e => e.into(),
    })?;
    if parent_of(&top_md)?.as_ref() != Some(&s.base_id) {
        return Err(ApiError::new(
            ErrorCode::WrongParentVolume,
            format!(
                "the parent of volume {} is {}, not {}",
                s.top_id, top_md.parent, s.base_id
            ),
        )
        .into());
    }
    for (vol, md) in [(&s.base_id, &held.md), (&s.top_id, &top_md)] {
        if md.role == VolumeRole::Shared {
            return Err(ApiError::new(
                ErrorCode::SharedVolumeNonWritable,
                format!("volume {vol} is shared (a template)"),
            )
            .into());
        }
    }
    if top_md.legality != Legality::Legal {
        return Err(ApiError::new(
            ErrorCode::prepareIllegalVolumeError,
            format!("top volume {} is {}", s.top_id, top_md.legality),
        )
        .into());
    }
    check_abort(job)?;

    let chain = chain_of(&dom, &s.img_id, &s.base_id, &held.md)?;
    let below = prepare_chain(&dom, &s.img_id, &chain)?;
    let top_data = dom.backend.prepare(&s.img_id, &s.top_id)?;
    let top_path = layer_path(&dom, &s.img_id, &s.top_id, &top_data);
    let base_path = below.layers[0].path.clone();
    let base_format = held.md.format;
    if base_format == VolumeFormat::Cow {
        // Pruning writes the base: only with the leases confirmed.
        held.before_write()?;
        prune_stale_bitmaps(&base_path, &top_path, &|| job.fenced().is_some())?;
    }

    let capacity = held.md.capacity.max(top_md.capacity);
    held.mark_illegal(|md| md.capacity = capacity)?;
    fail::fail_point!("sdm::merge::after_illegal");
    if base_format == VolumeFormat::Raw {
        dom.backend.grow_raw(&s.img_id, &s.base_id, capacity)?;
    }
    let ctl = job.control();
    ctl.set_bandwidth_limit(
        (agent.cfg.io.bandwidth_limit > 0).then_some(agent.cfg.io.bandwidth_limit),
    );
    job.mark_started();
    let opts = sdm_io::CommitOptions {
        force_qemu_img: false,
        keep_allocation: held.md.allocation == Preallocation::Preallocated,
    };
    let top = sdm_io::Layer {
        path: top_path.clone(),
        format: image_format(top_md.format),
    };
    let report = agent.engine.commit(&top, &below.layers[0], &opts, ctl)?;
    tracing::info!(job = %job.id(), converter = ?report.converter, written = report.bytes_written, zeroed = report.bytes_zeroed, "committed");
    fail::fail_point!("sdm::merge::before_legal");
    if merge_bitmaps && base_format == VolumeFormat::Cow {
        let base_parent = below
            .layers
            .get(1)
            .filter(|l| l.format == sdm_io::ImageFormat::Qcow2)
            .map(|l| l.path.as_path());
        merge_top_bitmaps(&base_path, &top_path, base_parent, &|| {
            job.fenced().is_some()
        })?;
    }
    check_abort(job)?;
    held.finish()
}

fn bitmap_error(code: ErrorCode, e: StorageError) -> AgentError {
    ApiError::new(code, crate::error::chain_message(&e)).into()
}

/// Removes the base's bitmaps that are missing or not valid in the top: what the top did not
/// track, the merged base cannot claim to (VDSM's `prune_bitmaps`).
fn prune_stale_bitmaps(
    base: &std::path::Path,
    top: &std::path::Path,
    stop: &dyn Fn() -> bool,
) -> Result<(), AgentError> {
    let in_base = qcow2::bitmaps(base)?;
    if in_base.is_empty() {
        return Ok(());
    }
    let valid_top: Vec<String> = qcow2::bitmaps(top)?
        .into_iter()
        .filter(qcow2::Bitmap::is_valid)
        .map(|b| b.name)
        .collect();
    for b in in_base.iter().filter(|b| !valid_top.contains(&b.name)) {
        tracing::warn!(bitmap = %b.name, base = %base.display(), "pruning a stale bitmap");
        qcow2::remove_bitmap(base, &b.name, stop)
            .map_err(|e| bitmap_error(ErrorCode::RemoveBitmapError, e))?;
    }
    Ok(())
}

/// Adds the top's valid bitmaps that the base lacks (unless the base's parent has them: then
/// the bitmap chain has a hole and is left alone) and merges each into the base (VDSM's
/// `merge_bitmaps`).
fn merge_top_bitmaps(
    base: &std::path::Path,
    top: &std::path::Path,
    base_parent: Option<&std::path::Path>,
    stop: &dyn Fn() -> bool,
) -> Result<(), AgentError> {
    let in_base: Vec<String> = qcow2::bitmaps(base)?.into_iter().map(|b| b.name).collect();
    let in_parent: Vec<String> = match base_parent {
        Some(p) => qcow2::bitmaps(p)?.into_iter().map(|b| b.name).collect(),
        None => Vec::new(),
    };
    for b in qcow2::bitmaps(top)?
        .into_iter()
        .filter(qcow2::Bitmap::is_valid)
    {
        if !in_base.contains(&b.name) {
            if in_parent.contains(&b.name) {
                tracing::warn!(bitmap = %b.name, "not in the base but in its parent: the bitmap chain has a hole");
                continue;
            }
            qcow2::add_bitmap(base, &b.name, Some(b.granularity), stop)
                .map_err(|e| bitmap_error(ErrorCode::AddBitmapError, e))?;
        }
        qcow2::merge_bitmap(top, base, &b.name, stop)
            .map_err(|e| bitmap_error(ErrorCode::MergeBitmapError, e))?;
    }
    Ok(())
}
