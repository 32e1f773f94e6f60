//! `Image.move` (copy only) and `Image.delete` (with wipe-by-zeroing and discard).
//!
//! Deletion first marks every volume ILLEGAL and renames `images/<img>` to `_remove_me_<img>`
//! (`_remove_me_ZERO_<img>` when the data must be wiped), synchronously, so that whatever happens
//! next the leftover is recognisable; the job then wipes (if asked) and removes. A wipe that
//! fails or is stopped leaves the `_remove_me_ZERO_` directory in place: unwiped data is never
//! removed, because removal would hand the blocks back to the file system unerased. Garbage
//! collection at attach, and `StorageDomain.fix`, finish such leftovers.

use std::path::PathBuf;
use std::sync::Arc;

use sdm_proto::api::{DeleteImageParams, MoveImageParams};
use sdm_proto::{
    ApiError, ErrorCode, ImageOperation, JobResult, Legality, TaskRef, Uuid, VolumeRole,
};

use super::purge::purge;
use super::{check_abort, flag, lock_for_job, run_parallel, spawn_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::domain::{
    list_volumes_in, volume_paths_in, Domain, REMOVE_ME_PREFIX, REMOVE_ME_ZERO_PREFIX,
};
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::{self, read_metadata, read_metadata_at, update_metadata, NewVolume};
use crate::storage::StorageError;

// ---------------------------------------------------------------------------------------------
// Image.delete

/// `Image.delete`: validates, marks, renames, and starts the purge job.
pub fn delete(agent: &Arc<Agent>, p: DeleteImageParams) -> Result<TaskRef, AgentError> {
    let (sd, img) = (&p.sd_id, &p.image_id);
    let (wipe, discard) = (flag(p.post_zero), flag(p.discard));
    let dom = agent.domain(sd)?;
    let job_id = p.job_id.clone().unwrap_or_else(Uuid::new_v4);
    let _locks = agent.lock_sync(&[
        (domain_key(sd.as_str()), Mode::Shared),
        (image_key(sd.as_str(), img.as_str()), Mode::Exclusive),
    ])?;
    let dir = dom.image_dir(img);
    let not_found = || {
        StorageError::ImageNotFound {
            sd: sd.to_string(),
            img: img.to_string(),
        }
        .into()
    };
    if !dir.is_dir() {
        return Err(not_found());
    }
    let vols = list_volumes_in(&dir)?;
    if vols.is_empty() {
        return Err(not_found());
    }
    let mut mds = Vec::new();
    for v in &vols {
        let md = read_metadata(&dom, img, v)?;
        if md.role == VolumeRole::Shared {
            return Err(StorageError::SharedVolume(v.to_string()).into());
        }
        mds.push((v.clone(), md));
    }
    // Every lease must be free: a volume being written elsewhere is not deleted under its writer.
    let mut held = Vec::new();
    for v in &vols {
        let p = dom.volume_paths(img, v);
        held.push(dom.leases.acquire(sd.as_str(), v.as_str(), &p.lease, 0)?);
    }
    let job = agent.jobs.register(&job_id, "delete_image")?;
    let marked = (|| -> Result<PathBuf, AgentError> {
        for (v, md) in &mut mds {
            if md.legality != Legality::Illegal {
                md.legality = Legality::Illegal;
                update_metadata(&dom.volume_paths(img, v), md)?;
            }
        }
        let prefix = if wipe {
            REMOVE_ME_ZERO_PREFIX
        } else {
            REMOVE_ME_PREFIX
        };
        let target = dom.images_dir().join(format!("{prefix}{img}"));
        fail::fail_point!("sdm::image_delete::before_rename");
        std::fs::rename(&dir, &target).map_err(|e| StorageError::io("rename", &dir, e))?;
        crate::durable::sync_dir(&dom.images_dir())?;
        Ok(target)
    })();
    let target = match marked {
        Ok(t) => t,
        Err(e) => {
            agent.jobs.unregister(&job_id);
            return Err(e);
        }
    };
    tracing::info!(sd_id = %sd, img_id = %img, wipe, discard, leftover = %target.display(), "image marked for deletion");
    let agent2 = agent.clone();
    let dom2 = dom.clone();
    // The leases stay held through the purge, so no other host's garbage collection takes the
    // leftover for an abandoned one while this job wipes it.
    agent.jobs.start(
        job,
        super::work(move |job| purge(&agent2, job, &dom2, &target, wipe, discard, held)),
    );
    Ok(TaskRef { uuid: job_id })
}

// ---------------------------------------------------------------------------------------------
// Image.move

/// `Image.move`'s parameters, as the job uses them.
#[derive(Clone, Debug)]
pub struct MoveRequest {
    /// Image.
    pub img: Uuid,
    /// Source domain.
    pub src: Uuid,
    /// Destination domain.
    pub dst: Uuid,
    /// Wipe an existing destination image that `force` removes.
    pub post_zero: bool,
    /// Replace an existing destination image.
    pub force: bool,
}

/// `Image.move`: validates and starts the copy job.
pub fn move_image(agent: &Arc<Agent>, p: MoveImageParams) -> Result<TaskRef, AgentError> {
    let req = MoveRequest {
        img: p.image_id,
        src: p.src_sd_id,
        dst: p.dst_sd_id,
        post_zero: flag(p.post_zero),
        force: flag(p.force),
    };
    if p.operation == ImageOperation::Move {
        return Err(ApiError::new(
            ErrorCode::UnsupportedOperation,
            "Image.move with operation MOVE (2) is not supported: copy the image (operation 1), then delete the source with Image.delete",
        ).into());
    }
    if req.src == req.dst {
        return Err(ApiError::invalid("source and destination domains are the same").into());
    }
    let src_dom = agent.domain(&req.src)?;
    let dst_dom = agent.domain(&req.dst)?;
    let vols = src_dom.list_volumes(&req.img)?;
    if vols.is_empty() {
        return Err(StorageError::ImageNotFound {
            sd: req.src.to_string(),
            img: req.img.to_string(),
        }
        .into());
    }
    if !req.force && dst_image_is_legal(&dst_dom, &req.img) {
        return Err(StorageError::VolumeExists(format!(
            "image {} exists on domain {} (use force to replace it)",
            req.img, req.dst
        ))
        .into());
    }
    let job_id = p.job_id.unwrap_or_else(Uuid::new_v4);
    let agent2 = agent.clone();
    spawn_job(agent, &job_id, "move_image", move |job| {
        run_move(&agent2, job, &req)
    })?;
    Ok(TaskRef { uuid: job_id })
}

fn dst_image_is_legal(dom: &Domain, img: &Uuid) -> bool {
    match dom.list_volumes(img) {
        Ok(vols) if !vols.is_empty() => vols
            .iter()
            .all(|v| read_metadata(dom, img, v).is_ok_and(|md| md.legality == Legality::Legal)),
        _ => false,
    }
}

/// Orders volumes parents first.
fn chain_order(mut vols: Vec<(Uuid, VolumeMetadata)>) -> Vec<(Uuid, VolumeMetadata)> {
    let mut out: Vec<(Uuid, VolumeMetadata)> = Vec::with_capacity(vols.len());
    while !vols.is_empty() {
        let pos = vols
            .iter()
            .position(|(_, md)| {
                md.parent == sdm_proto::BLANK_UUID
                    || out.iter().any(|(o, _)| o.as_str() == md.parent)
                    || !vols.iter().any(|(v, _)| v.as_str() == md.parent)
            })
            .unwrap_or(0);
        out.push(vols.remove(pos));
    }
    out
}

fn run_move(
    agent: &Agent,
    job: &Arc<Job>,
    req: &MoveRequest,
) -> Result<Option<JobResult>, AgentError> {
    let src_dom = agent.domain(&req.src)?;
    let dst_dom = agent.domain(&req.dst)?;
    let _locks = lock_for_job(
        agent,
        job,
        &[
            (domain_key(req.src.as_str()), Mode::Shared),
            (domain_key(req.dst.as_str()), Mode::Shared),
            (image_key(req.src.as_str(), req.img.as_str()), Mode::Shared),
            (
                image_key(req.dst.as_str(), req.img.as_str()),
                Mode::Exclusive,
            ),
        ],
    )?;
    let mut vols = Vec::new();
    for v in src_dom.list_volumes(&req.img)? {
        let md = read_metadata(&src_dom, &req.img, &v)?;
        if md.legality != Legality::Legal {
            return Err(ApiError::new(
                ErrorCode::prepareIllegalVolumeError,
                format!("source volume {v} is {}", md.legality),
            )
            .into());
        }
        vols.push((v, md));
    }
    let vols = chain_order(vols);

    // An existing destination image is replaced when forced or when it is ILLEGAL (a failed
    // earlier copy); a LEGAL one without force was refused before the job started, but may
    // have appeared since.
    let dst_dir = dst_dom.image_dir(&req.img);
    if dst_dir.exists() {
        if !req.force && dst_image_is_legal(&dst_dom, &req.img) {
            return Err(StorageError::VolumeExists(format!(
                "image {} exists on domain {}",
                req.img, req.dst
            ))
            .into());
        }
        replace_destination(agent, job, &dst_dom, &req.img, req.post_zero)?;
    }
    check_abort(job)?;

    for (v, md) in &vols {
        let nv = NewVolume {
            img: req.img.clone(),
            vol: v.clone(),
            capacity: md.capacity,
            format: md.format,
            allocation: md.allocation,
            parent: Uuid::parse(&md.parent).ok().filter(|p| !p.is_blank()),
            description: md.description.clone(),
            legality: Legality::Illegal,
            disktype: md.disktype.clone(),
        };
        volume::create(&dst_dom, &nv)?;
    }
    fail::fail_point!("sdm::image_move::after_create");
    let total: u64 = vols
        .iter()
        .map(|(v, _)| {
            std::fs::metadata(src_dom.volume_paths(&req.img, v).data)
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    job.set_planned_total(total);
    job.mark_started();
    let results = run_parallel(agent.cfg.io.image_parallelism, vols.clone(), |(v, md)| {
        copy_one(agent, job, &src_dom, &dst_dom, &req.img, &v, &md)
    });
    for r in results {
        r?;
    }
    Ok(None)
}

fn copy_one(
    agent: &Agent,
    job: &Job,
    src_dom: &Domain,
    dst_dom: &Domain,
    img: &Uuid,
    v: &Uuid,
    src_md: &VolumeMetadata,
) -> Result<(), AgentError> {
    check_abort(job)?;
    let dst = dst_dom.volume_paths(img, v);
    src_dom.check_contained(&src_dom.volume_paths(img, v).data)?;
    dst_dom.check_contained(&dst.data)?;
    let held = dst_dom
        .leases
        .acquire(dst_dom.sd_id.as_str(), v.as_str(), &dst.lease, 0)?;
    let ctl = job.child_control();
    ctl.set_bandwidth_limit(
        (agent.cfg.io.bandwidth_limit > 0).then_some(agent.cfg.io.bandwidth_limit),
    );
    // A freshly truncated raw sparse file reads as zeros, so source holes need no work.
    let fresh_sparse = src_md.format == sdm_proto::VolumeFormat::Raw
        && src_md.allocation == sdm_proto::Preallocation::Sparse;
    let opts = sdm_io::CopyOptions {
        dst_reads_zero: fresh_sparse,
        ..Default::default()
    };
    agent
        .engine
        .copy(&src_dom.volume_paths(img, v).data, &dst.data, &opts, &ctl)?;
    let mut md = read_metadata_at(&dst.meta)?;
    held.verify()?;
    md.legality = Legality::Legal;
    md.role = src_md.role;
    md.generation = src_md.generation;
    update_metadata(&dst, &mut md)?;
    if let Err(e) = held.release() {
        tracing::warn!(error = %e, "releasing a destination lease failed");
    }
    Ok(())
}

fn replace_destination(
    agent: &Agent,
    job: &Arc<Job>,
    dom: &Domain,
    img: &Uuid,
    wipe: bool,
) -> Result<(), AgentError> {
    let dir = dom.image_dir(img);
    let vols = list_volumes_in(&dir)?;
    let mut held = Vec::new();
    for v in &vols {
        let p = volume_paths_in(&dir, v);
        held.push(
            dom.leases
                .acquire(dom.sd_id.as_str(), v.as_str(), &p.lease, 0)?,
        );
        if let Ok(mut md) = read_metadata_at(&p.meta) {
            if md.legality != Legality::Illegal {
                md.legality = Legality::Illegal;
                update_metadata(&p, &mut md)?;
            }
        }
    }
    let prefix = if wipe {
        REMOVE_ME_ZERO_PREFIX
    } else {
        REMOVE_ME_PREFIX
    };
    let target = dom.images_dir().join(format!("{prefix}{img}"));
    if target.exists() {
        return Err(ApiError::new(
            ErrorCode::GeneralException,
            format!(
                "{} exists from an earlier deletion; finish it with StorageDomain.fix first",
                target.display()
            ),
        )
        .into());
    }
    std::fs::rename(&dir, &target).map_err(|e| StorageError::io("rename", &dir, e))?;
    crate::durable::sync_dir(&dom.images_dir())?;
    tracing::info!(sd_id = %dom.sd_id, img_id = %img, "replacing the existing destination image");
    purge(agent, job, dom, &target, wipe, false, held).map(|_| ())
}
