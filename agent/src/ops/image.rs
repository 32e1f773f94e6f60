//! `Image.move` (copy only) and `Image.delete` (with wipe-by-zeroing and discard).
//!
//! Deletion first marks every volume ILLEGAL and renames `images/<img>` to `_remove_me_<img>`
//! (`_remove_me_ZERO_<img>` when the data must be wiped), synchronously, so that whatever happens
//! next the leftover is recognisable; the job then wipes (if asked) and removes. A wipe that
//! fails or is stopped leaves the `_remove_me_ZERO_` directory in place: unwiped data is never
//! removed, because removal would hand the blocks back to the file system unerased. Garbage
//! collection at attach, and `StorageDomain.fix`, finish such leftovers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdm_proto::{
    ApiError, ErrorCode, ImageOperation, JobResult, Legality, TaskRef, Uuid, VolumeRole,
};

use super::{check_abort, io, lease, lock_for_job, spawn_job, storage};
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
pub fn delete(
    agent: &Arc<Agent>,
    sd: &Uuid,
    img: &Uuid,
    wipe: bool,
    discard: bool,
    job_id: Option<Uuid>,
) -> Result<TaskRef, ApiError> {
    let dom = agent.domain(sd)?;
    let job_id = job_id.unwrap_or_else(Uuid::new_v4);
    let _locks = agent.lock_sync(&[
        (domain_key(sd.as_str()), Mode::Shared),
        (image_key(sd.as_str(), img.as_str()), Mode::Exclusive),
    ])?;
    let dir = dom.image_dir(img);
    let not_found = || {
        storage(StorageError::ImageNotFound {
            sd: sd.to_string(),
            img: img.to_string(),
        })
    };
    if !dir.is_dir() {
        return Err(not_found());
    }
    let vols = list_volumes_in(&dir).map_err(storage)?;
    if vols.is_empty() {
        return Err(not_found());
    }
    let mut mds = Vec::new();
    for v in &vols {
        let md = read_metadata(&dom, img, v).map_err(storage)?;
        if md.role == VolumeRole::Shared {
            return Err(storage(StorageError::SharedVolume(v.to_string())));
        }
        mds.push((v.clone(), md));
    }
    // Every lease must be free: a volume being written elsewhere is not deleted under its writer.
    let mut held = Vec::new();
    for v in &vols {
        let p = dom.volume_paths(img, v);
        held.push(
            dom.leases
                .acquire(sd.as_str(), v.as_str(), &p.lease, 0)
                .map_err(lease)?,
        );
    }
    let job = agent
        .jobs
        .register(&job_id, "delete_image")
        .map_err(|e| crate::error::to_api_error(&e))?;
    let marked = (|| -> Result<PathBuf, ApiError> {
        for (v, md) in &mut mds {
            if md.legality != Legality::Illegal {
                md.legality = Legality::Illegal;
                update_metadata(&dom.volume_paths(img, v), md).map_err(storage)?;
            }
        }
        let prefix = if wipe {
            REMOVE_ME_ZERO_PREFIX
        } else {
            REMOVE_ME_PREFIX
        };
        let target = dom.images_dir().join(format!("{prefix}{img}"));
        fail::fail_point!("sdm::image_delete::before_rename");
        std::fs::rename(&dir, &target).map_err(|e| storage(StorageError::io("rename", &dir, e)))?;
        crate::durable::sync_dir(&dom.images_dir()).map_err(|e| storage(e.into()))?;
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
        Box::new(move |job| purge(&agent2, job, &dom2, &target, wipe, discard, held)),
    );
    Ok(TaskRef { uuid: job_id })
}

/// Takes the leases of every volume of a marked image directory, never waiting. A held lease
/// means another job or host is deleting it right now: the leftover is not abandoned.
pub fn lease_leftover(dom: &Domain, dir: &Path) -> Result<Vec<sdm_lease::Lease>, ApiError> {
    let mut held = Vec::new();
    for v in list_volumes_in(dir).map_err(storage)? {
        let p = volume_paths_in(dir, &v);
        held.push(
            dom.leases
                .acquire(dom.sd_id.as_str(), v.as_str(), &p.lease, 0)
                .map_err(lease)?,
        );
    }
    Ok(held)
}

/// Schedules wipe-then-remove of a `_remove_me_ZERO_` leftover found at attach. Fails with
/// AcquireLockFailure when another job or host is working on it.
pub fn schedule_leftover_wipe(agent: &Agent, dom: &Domain, name: &str) -> Result<(), ApiError> {
    let dir = dom.images_dir().join(name);
    let job_id = Uuid::new_v4();
    let Some(jobs_owner) = agent.self_arc() else {
        return Err(ApiError::new(
            ErrorCode::GeneralException,
            "agent is not running",
        ));
    };
    let held = lease_leftover(dom, &dir)?;
    let dom = agent.domain(&dom.sd_id)?;
    let agent2 = jobs_owner.clone();
    spawn_job(
        &jobs_owner,
        &job_id,
        "gc_wipe",
        Box::new(move |job| purge(&agent2, job, &dom, &dir, true, false, held)),
    )?;
    tracing::info!(job = %job_id, leftover = %name, "scheduled wipe of a deleted image left over by an interrupted deletion");
    Ok(())
}

/// Wipes (optionally) and removes a marked image directory.
pub fn purge(
    agent: &Agent,
    job: &Arc<Job>,
    dom: &Domain,
    dir: &Path,
    wipe: bool,
    discard: bool,
    held: Vec<sdm_lease::Lease>,
) -> Result<Option<JobResult>, ApiError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let _lock = lock_for_job(
        agent,
        job,
        &[
            (domain_key(dom.sd_id.as_str()), Mode::Shared),
            (image_key(dom.sd_id.as_str(), &name), Mode::Exclusive),
        ],
    )?;
    if !dir.exists() {
        // Another purge finished it meanwhile.
        return Ok(None);
    }
    let _held = if held.is_empty() {
        lease_leftover(dom, dir)?
    } else {
        held
    };
    dom.check_real_dir(dir).map_err(storage)?;
    if wipe {
        let files = data_files(dom, dir).map_err(storage)?;
        job.set_planned_total(files.iter().map(|(_, len)| *len).sum());
        job.mark_started();
        let results = run_parallel(agent.cfg.io.image_parallelism, files, |(path, _)| {
            let ctl = job.child_control();
            ctl.set_bandwidth_limit(
                (agent.cfg.io.bandwidth_limit > 0).then_some(agent.cfg.io.bandwidth_limit),
            );
            let opts = sdm_io::WipeOptions {
                discard,
                ..Default::default()
            };
            agent
                .engine
                .wipe(&path, &opts, &ctl)
                .map(|_| ())
                .map_err(|e| (path, e))
        });
        if let Some(Err((path, e))) = results.into_iter().find(Result::is_err) {
            let why = if e.kind() == sdm_io::IoErrorKind::Aborted {
                "stopped"
            } else {
                "failed"
            };
            return Err(ApiError::new(
                ErrorCode::VolumesZeroingError,
                format!(
                    "wipe of {} {why}: {}; the image stays as {name} until it is wiped",
                    path.display(),
                    crate::error::chain_message(&e)
                ),
            ));
        }
        tracing::info!(sd_id = %dom.sd_id, leftover = %name, "image wiped");
    } else if discard {
        tracing::info!(sd_id = %dom.sd_id, leftover = %name, "discard: removing the files releases their space on a file domain");
    }
    fail::fail_point!("sdm::image_delete::before_remove");
    check_abort(job).map_err(|e| {
        if wipe {
            ApiError::new(ErrorCode::VolumesZeroingError, e.message)
        } else {
            e
        }
    })?;
    remove_dir(dir).map_err(storage)?;
    crate::durable::sync_dir(&dom.images_dir()).map_err(|e| storage(e.into()))?;
    tracing::info!(sd_id = %dom.sd_id, leftover = %name, "deleted image removed");
    Ok(None)
}

/// Data files of a marked image directory (anything that is not `.meta`/`.lease`), with sizes.
fn data_files(dom: &Domain, dir: &Path) -> Result<Vec<(PathBuf, u64)>, StorageError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))? {
        let e = e.map_err(|e| StorageError::io("list", dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".meta") || name.ends_with(".lease") || name.ends_with(".new") {
            continue;
        }
        // A link that leads outside the domain (other than to a block device) is not ours to
        // wipe: it is skipped here and only the link itself is removed with the directory.
        if let Err(e) = dom.check_contained(&e.path()) {
            tracing::warn!(error = %e, "not wiping a volume that leads outside the domain");
            continue;
        }
        // Follow links: a volume may be a link to a block device, as on oVirt block domains.
        let md =
            std::fs::metadata(e.path()).map_err(|err| StorageError::io("stat", e.path(), err))?;
        use std::os::unix::fs::FileTypeExt;
        if md.is_file() || md.file_type().is_block_device() {
            out.push((e.path(), md.len()));
        }
    }
    out.sort();
    Ok(out)
}

fn remove_dir(dir: &Path) -> Result<(), StorageError> {
    for e in std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))? {
        let e = e.map_err(|e| StorageError::io("list", dir, e))?;
        match std::fs::remove_file(e.path()) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(StorageError::io("remove", e.path(), err)),
        }
    }
    std::fs::remove_dir(dir).map_err(|e| StorageError::io("rmdir", dir, e))
}

/// Runs `f` over `items` with at most `n` at once (scoped threads; each IO call makes its own
/// ring on its own thread).
fn run_parallel<T: Send, R: Send>(n: usize, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let queue = std::sync::Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((i, item)) = next else { break };
                let r = f(item);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, r));
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, r)| r).collect()
}

// ---------------------------------------------------------------------------------------------
// Image.move

/// Validated `Image.move` request.
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
pub fn move_image(
    agent: &Arc<Agent>,
    op: ImageOperation,
    req: MoveRequest,
    job_id: Option<Uuid>,
) -> Result<TaskRef, ApiError> {
    if op == ImageOperation::Move {
        return Err(ApiError::new(
            ErrorCode::UnsupportedOperation,
            "Image.move with operation MOVE (2) is not supported: copy the image (operation 1), then delete the source with Image.delete",
        ));
    }
    if req.src == req.dst {
        return Err(ApiError::invalid(
            "source and destination domains are the same",
        ));
    }
    let src_dom = agent.domain(&req.src)?;
    let dst_dom = agent.domain(&req.dst)?;
    let vols = src_dom.list_volumes(&req.img).map_err(storage)?;
    if vols.is_empty() {
        return Err(storage(StorageError::ImageNotFound {
            sd: req.src.to_string(),
            img: req.img.to_string(),
        }));
    }
    if !req.force && dst_image_is_legal(&dst_dom, &req.img) {
        return Err(storage(StorageError::VolumeExists(format!(
            "image {} exists on domain {} (use force to replace it)",
            req.img, req.dst
        ))));
    }
    let job_id = job_id.unwrap_or_else(Uuid::new_v4);
    let agent2 = agent.clone();
    spawn_job(
        agent,
        &job_id,
        "move_image",
        Box::new(move |job| run_move(&agent2, job, &req)),
    )?;
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
) -> Result<Option<JobResult>, ApiError> {
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
    for v in src_dom.list_volumes(&req.img).map_err(storage)? {
        let md = read_metadata(&src_dom, &req.img, &v).map_err(storage)?;
        if md.legality != Legality::Legal {
            return Err(ApiError::new(
                ErrorCode::prepareIllegalVolumeError,
                format!("source volume {v} is {}", md.legality),
            ));
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
            return Err(storage(StorageError::VolumeExists(format!(
                "image {} exists on domain {}",
                req.img, req.dst
            ))));
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
        volume::create(&dst_dom, &nv).map_err(storage)?;
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
) -> Result<(), ApiError> {
    check_abort(job)?;
    let dst = dst_dom.volume_paths(img, v);
    src_dom
        .check_contained(&src_dom.volume_paths(img, v).data)
        .map_err(storage)?;
    dst_dom.check_contained(&dst.data).map_err(storage)?;
    let held = dst_dom
        .leases
        .acquire(dst_dom.sd_id.as_str(), v.as_str(), &dst.lease, 0)
        .map_err(lease)?;
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
        .copy(&src_dom.volume_paths(img, v).data, &dst.data, &opts, &ctl)
        .map_err(io)?;
    let mut md = read_metadata_at(&dst.meta).map_err(storage)?;
    held.verify().map_err(lease)?;
    md.legality = Legality::Legal;
    md.role = src_md.role;
    md.generation = src_md.generation;
    update_metadata(&dst, &mut md).map_err(storage)?;
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
) -> Result<(), ApiError> {
    let dir = dom.image_dir(img);
    let vols = list_volumes_in(&dir).map_err(storage)?;
    let mut held = Vec::new();
    for v in &vols {
        let p = volume_paths_in(&dir, v);
        held.push(
            dom.leases
                .acquire(dom.sd_id.as_str(), v.as_str(), &p.lease, 0)
                .map_err(lease)?,
        );
        if let Ok(mut md) = read_metadata_at(&p.meta) {
            if md.legality != Legality::Illegal {
                md.legality = Legality::Illegal;
                update_metadata(&p, &mut md).map_err(storage)?;
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
        ));
    }
    std::fs::rename(&dir, &target).map_err(|e| storage(StorageError::io("rename", &dir, e)))?;
    crate::durable::sync_dir(&dom.images_dir()).map_err(|e| storage(e.into()))?;
    tracing::info!(sd_id = %dom.sd_id, img_id = %img, "replacing the existing destination image");
    purge(agent, job, dom, &target, wipe, false, held).map(|_| ())
}
