//! Purging images marked for removal (`_remove_me_<img>`, `_remove_me_ZERO_<img>`): shared by
//! `Image.delete`, `Image.move` (replacing a destination), garbage collection at attach and
//! `StorageDomain.fix`.
//!
//! Unwiped data is never removed: a wipe that fails or is stopped leaves the leftover in place,
//! because removal would hand the blocks back to the storage unerased.

use std::sync::Arc;

use sdm_lease::LeaseErrorKind;
use sdm_proto::{ApiError, ErrorCode, JobResult, Uuid};

use super::{check_abort, lock_for_job, run_parallel};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::backend::Leftover;
use crate::storage::domain::Domain;

/// Takes the leases of every volume of a leftover, never waiting. A held lease means another
/// job or host is deleting it right now: the leftover is not abandoned.
pub fn lease_leftover(dom: &Domain, l: &Leftover) -> Result<Vec<sdm_lease::Lease>, AgentError> {
    let mut held = Vec::new();
    for (v, at) in dom.backend.leftover_volumes(l)? {
        match dom.acquire_lease(&v, &at) {
            Ok(h) => held.push(h),
            // A removal of the leftover that was killed half-way may have taken a volume's
            // lease file before its metadata: no lease is left for anyone to hold.
            Err(e) if e.kind() == LeaseErrorKind::NotFound && !at.path.exists() => {
                tracing::info!(sd_id = %dom.sd_id, leftover = %l.name(), vol_id = %v, "a deleted volume's lease is gone already");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(held)
}

/// Takes the leases of a live image's half-made volumes (begun, never finished), never
/// waiting: their creator holds it while it works (651 then). A lease that cannot be read as
/// one (gone meanwhile, or not a lease at all) has no holder to wait for.
pub fn lease_half_made(dom: &Domain, img: &Uuid) -> Result<Vec<sdm_lease::Lease>, AgentError> {
    let mut held = Vec::new();
    for (v, at) in dom.backend.half_made_volume_leases(img)? {
        match dom.acquire_lease(&v, &at) {
            Ok(l) => held.push(l),
            Err(e) if matches!(e.kind(), LeaseErrorKind::NotFound | LeaseErrorKind::Invalid) => {
                tracing::warn!(sd_id = %dom.sd_id, img_id = %img, vol_id = %v, error = %e, "a half-made volume's lease cannot be taken; nobody can hold it");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(held)
}

/// Wipes (when the leftover says so) and removes a leftover. `held`: the leases of its volumes,
/// when the caller took them already.
pub fn purge(
    agent: &Agent,
    job: &Arc<Job>,
    dom: &Domain,
    l: &Leftover,
    discard: bool,
    held: Vec<sdm_lease::Lease>,
) -> Result<Option<JobResult>, AgentError> {
    let name = l.name();
    let _lock = lock_for_job(
        agent,
        job,
        &[
            (domain_key(dom.sd_id.as_str()), Mode::Shared),
            (image_key(dom.sd_id.as_str(), name), Mode::Exclusive),
        ],
    )?;
    if !dom.backend.leftover_exists(l) {
        // Another purge finished it meanwhile.
        return Ok(None);
    }
    let _held = if held.is_empty() {
        lease_leftover(dom, l)?
    } else {
        held
    };
    dom.backend.check_leftover(l)?;
    if l.wipe() {
        wipe(agent, job, dom, l, discard)?;
    } else if discard {
        tracing::info!(sd_id = %dom.sd_id, leftover = %name, "discard: removing the files releases their space on a file domain");
    }
    fail::fail_point!("sdm::image_delete::before_remove");
    check_abort(job).map_err(|e| {
        if l.wipe() {
            ApiError::new(ErrorCode::VolumesZeroingError, e.message)
        } else {
            e
        }
    })?;
    dom.backend.purge(l)?;
    tracing::info!(sd_id = %dom.sd_id, leftover = %name, "deleted image removed");
    Ok(None)
}

/// Wipes every volume of a leftover, in parallel; a failure or an abort leaves it in place.
fn wipe(
    agent: &Agent,
    job: &Arc<Job>,
    dom: &Domain,
    l: &Leftover,
    discard: bool,
) -> Result<(), AgentError> {
    let targets = dom.backend.wipe_targets(l)?;
    job.set_planned_total(targets.iter().map(|(_, len)| *len).sum());
    job.mark_started();
    let results = run_parallel(agent.cfg.io.image_parallelism, targets, |(data, _)| {
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
            .wipe(data.path(), &opts, &ctl)
            .map(|_| ())
            .map_err(|e| (data, e))
    });
    if let Some(Err((data, e))) = results.into_iter().find(Result::is_err) {
        let why = if e.kind() == sdm_io::IoErrorKind::Aborted {
            "stopped"
        } else {
            "failed"
        };
        return Err(ApiError::new(
            ErrorCode::VolumesZeroingError,
            format!(
                "wipe of {} {why}: {}; the image stays as {} until it is wiped",
                data.path().display(),
                crate::error::chain_message(&e),
                l.name()
            ),
        )
        .into());
    }
    tracing::info!(sd_id = %dom.sd_id, leftover = %l.name(), "image wiped");
    Ok(())
}
