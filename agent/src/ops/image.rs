//! `Image.move` (copy only) and `Image.delete` (with wipe-by-zeroing and discard).
//!
//! Deletion first marks every volume ILLEGAL and the image for removal (`_remove_me_<img>`, or
//! `_remove_me_ZERO_<img>` when the data must be wiped), synchronously, so that whatever happens
//! next the leftover is recognisable; the job then wipes (if asked) and removes it
//! (`super::purge`). Garbage collection at attach, and `StorageDomain.fix`, finish leftovers
//! that an interruption left.

use std::sync::Arc;

use sdm_proto::api::{DeleteImageParams, MoveImageParams};
use sdm_proto::{
    ApiError, Endpoint, ErrorCode, ImageOperation, JobResult, Legality, Preallocation, Uuid,
    VolumeFormat, VolumeRole,
};

use super::lease_watch::with_watch;
use super::move_plan::{self, DstVolume};
use super::outcome::{source_unchanged, write_legal};
use super::purge::{lease_half_made, purge};
use super::resume::{self, CopyShape};
use super::{check_abort, flag, lock_for_job, run_parallel, spawn_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::backend::Leftover;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::{self, read_metadata, update_metadata, NewVolume};
use crate::storage::StorageError;

// ---------------------------------------------------------------------------------------------
// Image.delete

/// `Image.delete`: validates, marks, renames, and starts the purge job.
pub fn delete(agent: &Arc<Agent>, p: DeleteImageParams) -> Result<Uuid, AgentError> {
    let (sd, img) = (&p.sd_id, &p.image_id);
    let (wipe, discard) = (flag(p.post_zero), flag(p.discard));
    let dom = agent.domain(sd)?;
    let job_id = p.job_id.clone().unwrap_or_else(Uuid::new_v4);
    let _locks = agent.lock_sync(&[
        (domain_key(sd.as_str()), Mode::Shared),
        (image_key(sd.as_str(), img.as_str()), Mode::Exclusive),
    ])?;
    let not_found = || {
        StorageError::ImageNotFound {
            sd: sd.to_string(),
            img: img.to_string(),
        }
        .into()
    };
    if !dom.backend.image_exists(img) {
        return Err(not_found());
    }
    // An image whose volumes are all half-made (a creation killed half-way) is deleted too:
    // nothing else would ever remove it.
    let vols = dom.backend.list_volumes(img)?;
    fail::fail_point!("sdm::image_delete::before_lease");
    // Every lease must be free: a volume being written (or created) elsewhere is not deleted
    // under its writer.
    let mut held = Vec::new();
    for v in &vols {
        held.push(dom.acquire_volume_lease(img, v)?);
    }
    held.extend(lease_half_made(&dom, img)?);
    // Read under the leases: what another host wrote before we took them is what we mark.
    let mut mds = Vec::new();
    for v in &vols {
        let md = read_metadata(&dom, img, v)?;
        if md.role == VolumeRole::Shared {
            return Err(StorageError::SharedVolume(v.to_string()).into());
        }
        mds.push((v.clone(), md));
    }
    let job = agent.jobs.register(&job_id, "delete_image")?;
    let marked = (|| -> Result<Leftover, AgentError> {
        for h in &held {
            h.verify()?;
        }
        for (v, md) in &mut mds {
            if md.legality != Legality::Illegal {
                md.legality = Legality::Illegal;
                update_metadata(&dom, img, v, md)?;
            }
        }
        fail::fail_point!("sdm::image_delete::before_rename");
        Ok(dom.backend.mark_for_removal(img, wipe)?)
    })();
    let leftover = match marked {
        Ok(t) => t,
        Err(e) => {
            agent.jobs.unregister(&job_id);
            return Err(e);
        }
    };
    tracing::info!(sd_id = %sd, img_id = %img, wipe, discard, leftover = %leftover.name(), "image marked for deletion");
    let agent2 = agent.clone();
    let dom2 = dom.clone();
    // The leases stay held through the purge, so no other host's garbage collection takes the
    // leftover for an abandoned one while this job wipes it.
    agent.jobs.start(
        job,
        super::work(move |job| purge(&agent2, job, &dom2, &leftover, discard, held)),
    );
    Ok(job_id)
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
pub fn move_image(agent: &Arc<Agent>, p: MoveImageParams) -> Result<Uuid, AgentError> {
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
    let vols = src_dom.backend.list_volumes(&req.img)?;
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
    Ok(job_id)
}

fn dst_image_is_legal(dom: &Domain, img: &Uuid) -> bool {
    match dom.backend.list_volumes(img) {
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
    for v in src_dom.backend.list_volumes(&req.img)? {
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

    // An existing destination image is kept when an interrupted move left it ILLEGAL with
    // exactly this move's volumes (`move_plan`), else replaced as VDSM does: when forced or
    // when not wholly LEGAL. A LEGAL one without force was refused before the job started, but
    // may have appeared since.
    let mut plan = vec![DstVolume::Create; vols.len()];
    if dst_dom.backend.image_exists(&req.img) {
        if !req.force && dst_image_is_legal(&dst_dom, &req.img) {
            return Err(StorageError::VolumeExists(format!(
                "image {} exists on domain {}",
                req.img, req.dst
            ))
            .into());
        }
        match move_plan::plan(&dst_dom, &req.img, &vols, req.force)? {
            Ok(kept) => {
                tracing::info!(sd_id = %req.dst, img_id = %req.img, plan = ?kept, "continuing the destination image an earlier move left");
                plan = kept;
            }
            Err(why) => {
                tracing::info!(sd_id = %req.dst, img_id = %req.img, reason = %why, "the destination image is not kept");
                replace_destination(agent, job, &dst_dom, &req.img, req.post_zero)?;
            }
        }
    }
    check_abort(job)?;

    for ((v, md), _) in vols
        .iter()
        .zip(&plan)
        .filter(|(_, p)| **p == DstVolume::Create)
    {
        let nv = NewVolume {
            img: req.img.clone(),
            vol: v.clone(),
            capacity: md.capacity,
            format: md.format,
            allocation: target_allocation(&dst_dom, md),
            parent: Uuid::parse(&md.parent).ok().filter(|p| !p.is_blank()),
            description: md.description.clone(),
            legality: Legality::Illegal,
            disktype: md.disktype.clone(),
            sequence: md.sequence,
            requested_initial_size: None,
            initial_size: src_dom
                .backend
                .volume_size(&req.img, v)
                .ok()
                .map(|s| s.apparent),
        };
        match volume::create(&dst_dom, &nv) {
            // Absent when planned: another move of the image created it meanwhile.
            Err(StorageError::VolumeExists(e)) => {
                return Err(move_plan::another_move(&req.img, format_args!("{e}")));
            }
            r => r?,
        }
        fail::fail_point!("sdm::image_move::created_one");
    }
    fail::fail_point!("sdm::image_move::after_create");
    // From here to the end this move holds every destination volume's lease, and checks that
    // the destination is still what it planned (`move_plan`: two moves from two hosts).
    let held = move_plan::hold(&dst_dom, &req.img, &vols)?;
    move_plan::recheck(&dst_dom, &req.img, &vols, &plan)?;
    let n = vols.len() as u32;
    let todo: Vec<_> = vols
        .into_iter()
        .zip(plan)
        .enumerate()
        .filter(|(_, (_, p))| *p != DstVolume::Done)
        .map(|(i, ((v, md), p))| (i, v, md, p == DstVolume::Continue))
        .collect();
    let total: u64 = todo
        .iter()
        .map(|(_, v, _, _)| {
            src_dom
                .backend
                .volume_size(&req.img, v)
                .map(|s| s.apparent)
                .unwrap_or(0)
        })
        .sum();
    job.set_planned_total(total);
    job.mark_started();
    let results = run_parallel(agent.cfg.io.image_parallelism, todo, |(i, v, md, kept)| {
        let one = VolumeCopy {
            img: &req.img,
            vol: &v,
            src_md: &md,
            stage: (i as u32 + 1, n),
            kept,
            held: &held[i],
        };
        copy_one(agent, job, &src_dom, &dst_dom, &one)
    });
    for r in results {
        r?;
    }
    for l in held {
        if let Err(e) = l.release() {
            tracing::warn!(error = %e, "releasing a destination lease failed");
        }
    }
    Ok(None)
}

/// One volume copy of a move.
struct VolumeCopy<'a> {
    img: &'a Uuid,
    vol: &'a Uuid,
    /// The source's metadata as read under the locks.
    src_md: &'a VolumeMetadata,
    /// (k, n) of the move's volume copies, in chain order.
    stage: (u32, u32),
    /// The destination volume was left by an earlier attempt (not created by this one).
    kept: bool,
    /// Its lease, held by the move.
    held: &'a sdm_lease::Lease,
}

fn copy_one(
    agent: &Agent,
    job: &Arc<Job>,
    src_dom: &Domain,
    dst_dom: &Arc<Domain>,
    one: &VolumeCopy<'_>,
) -> Result<(), AgentError> {
    let (img, v, src_md, held) = (one.img, one.vol, one.src_md, one.held);
    check_abort(job)?;
    let size = src_dom.backend.volume_size(img, v)?;
    dst_dom.backend.reserve(img, v, size.apparent)?;
    let src = src_dom.backend.prepare(img, v)?;
    let dst = dst_dom.backend.prepare(img, v)?;
    match one.stage.0 {
        1 => fail::fail_point!("sdm::image_move::copy_first"),
        _ => fail::fail_point!("sdm::image_move::copy_later"),
    }
    let ctl = job.child_control();
    ctl.set_bandwidth_limit(
        (agent.cfg.io.bandwidth_limit > 0).then_some(agent.cfg.io.bandwidth_limit),
    );
    let src_ep = Endpoint::div(src_dom.sd_id.clone(), img.clone(), v.clone(), None);
    let dst_ep = Endpoint::div(dst_dom.sd_id.clone(), img.clone(), v.clone(), None);
    with_watch(agent, job, &ctl, &[held], || {
        // The first write to this volume is its data: only with the lease confirmed, and with
        // the metadata as it is under the lease (the plan was read without it).
        held.verify()?;
        let dst_md = read_metadata(dst_dom, img, v)?;
        if dst_md.legality != Legality::Illegal {
            return Err(ApiError::new(
                ErrorCode::GeneralException,
                format!(
                    "destination volume {v} turned {} during the move",
                    dst_md.legality
                ),
            )
            .into());
        }
        // A move never converts: every volume is copied as it is, so each one can resume.
        let plain = dst_dom.backend.keeps_checkpoints();
        let shape = CopyShape {
            src: (&src_ep, src_md),
            dst: (&dst_ep, &dst_md),
            src_path: src.path().to_path_buf(),
            dst_path: dst.path().to_path_buf(),
            total: size.apparent,
            stage: one.stage,
        };
        let decided = match resume::decide(dst_dom, &shape, plain) {
            Err(_) if !plain => Err("the destination domain keeps no checkpoints".into()),
            d => d,
        };
        job.note_copy_start(resume::copy_start(&shape, &decided));
        // A destination that reads as zeros when new needs no work for the source's holes;
        // one an earlier attempt wrote may hold anything past its durable prefix.
        let opts = sdm_io::CopyOptions {
            dst_reads_zero: !one.kept
                && dst_dom
                    .backend
                    .reads_zeros_when_new(src_md.format, target_allocation(dst_dom, src_md)),
            start: decided.unwrap_or(0),
            checkpoint: plain.then(|| resume::hook(agent, dst_dom.clone(), &shape, job)),
            ..Default::default()
        };
        let r = agent
            .engine
            .copy(src.path(), dst.path(), &opts, &ctl)
            .map_err(AgentError::from)
            .and_then(|r| {
                check_abort(job)?;
                Ok(r)
            })
            .inspect_err(|e| resume::record_failure(dst_dom, &dst_ep, job, &e.to_string()))?;
        tracing::info!(
            vol = %v,
            stage = %format!("{}/{}", one.stage.0, one.stage.1),
            resumed_from = opts.start,
            bytes_read = r.bytes_read,
            bytes_written = r.bytes_written,
            "copy finished"
        );
        source_unchanged(src_dom, &src_ep, src_md)?;
        let mut md = read_metadata(dst_dom, img, v)?;
        held.verify()?;
        md.legality = Legality::Legal;
        md.role = src_md.role;
        md.generation = src_md.generation;
        write_legal(dst_dom, img, v, &mut md)?;
        resume::forget(dst_dom, &dst_ep);
        Ok(())
    })
}

/// How a copy of a volume with `md` is allocated on `dom`: as the source, except that RAW is
/// preallocated where the domain has no sparse RAW volumes (VDSM's rule for block targets).
fn target_allocation(dom: &Domain, md: &VolumeMetadata) -> Preallocation {
    if md.format == VolumeFormat::Raw && !dom.backend.supports_sparse() {
        Preallocation::Preallocated
    } else {
        md.allocation
    }
}

/// Replaces an existing destination image: marks it ILLEGAL and for removal under its
/// volumes' leases, then purges it (wiping it first when `wipe`).
fn replace_destination(
    agent: &Agent,
    job: &Arc<Job>,
    dom: &Domain,
    img: &Uuid,
    wipe: bool,
) -> Result<(), AgentError> {
    // Every lease before the first change: a busy one is another move's (`move_plan`), whose
    // volumes stay as they are.
    let vols = dom.backend.list_volumes(img)?;
    let mut held = Vec::new();
    for v in &vols {
        held.push(move_plan::lease_one(dom, img, v)?);
    }
    held.extend(lease_half_made(dom, img)?);
    for v in &vols {
        if let Ok(mut md) = read_metadata(dom, img, v) {
            if md.legality != Legality::Illegal {
                md.legality = Legality::Illegal;
                update_metadata(dom, img, v, &mut md)?;
            }
        }
    }
    let target = Leftover::of(img, wipe);
    if dom.backend.leftover_exists(&target) {
        return Err(ApiError::new(
            ErrorCode::GeneralException,
            format!(
                "images/{} exists from an earlier deletion; finish it with StorageDomain.fix first",
                target.name()
            ),
        )
        .into());
    }
    let leftover = dom.backend.mark_for_removal(img, wipe)?;
    tracing::info!(sd_id = %dom.sd_id, img_id = %img, "replacing the existing destination image");
    purge(agent, job, dom, &leftover, false, held).map(|_| ())
}
