//! Purging images marked for removal (`_remove_me_<img>`, `_remove_me_ZERO_<img>`): shared by
//! `Image.delete`, `Image.move` (replacing a destination), garbage collection at attach and
//! `StorageDomain.fix`.
//!
//! Unwiped data is never removed: a wipe that fails or is stopped leaves the leftover in place,
//! because removal would hand the blocks back to the file system unerased.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdm_proto::{ApiError, ErrorCode, JobResult};

use super::{check_abort, lock_for_job, run_parallel};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::domain::{list_volumes_in, volume_paths_in, Domain};
use crate::storage::StorageError;

/// Takes the leases of every volume of a marked image directory, never waiting. A held lease
/// means another job or host is deleting it right now: the leftover is not abandoned.
pub fn lease_leftover(dom: &Domain, dir: &Path) -> Result<Vec<sdm_lease::Lease>, AgentError> {
    let mut held = Vec::new();
    for v in list_volumes_in(dir)? {
        let p = volume_paths_in(dir, &v);
        held.push(
            dom.leases
                .acquire(dom.sd_id.as_str(), v.as_str(), &p.lease, 0)?,
        );
    }
    Ok(held)
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
) -> Result<Option<JobResult>, AgentError> {
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
    dom.check_real_dir(dir)?;
    if wipe {
        let files = data_files(dom, dir)?;
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
            )
            .into());
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
    remove_dir(dir)?;
    crate::durable::sync_dir(&dom.images_dir())?;
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
