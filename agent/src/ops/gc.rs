//! Garbage collection of deletion leftovers when a domain is attached.
//!
//! `_remove_me_<img>` directories hold images whose deletion was interrupted after the rename:
//! they are removed. `_remove_me_ZERO_<img>` directories hold images that must be wiped before
//! removal: they are handed to the image-deletion job, which wipes, then removes. Temporary
//! files of metadata writers that died are removed ([`STALE_TEMP_AGE`]), and so is a copy's
//! checkpoint whose volume is gone (removal interrupted between the metadata and the
//! checkpoint). Every action is logged and counted.
//!
//! It runs from the callers that hold the `Arc<Agent>` (the wipe jobs it schedules need one):
//! start-up (`main`, after `Agent::start`) and the `StorageDomain.attach` / `create` verbs.

use std::sync::Arc;
use std::time::Duration;

use sdm_proto::{ApiError, Uuid};

use super::purge::{lease_leftover, purge};
use super::spawn_job;
use crate::error::AgentError;
use crate::service::{Agent, Attached};
use crate::storage::backend::Leftover;
use crate::storage::domain::Domain;

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Leftover directories removed.
    pub removed: usize,
    /// Leftover directories scheduled for wipe-then-remove.
    pub wipes_scheduled: usize,
    /// Leftovers that could not be handled (logged).
    pub failed: usize,
    /// Leftovers another job or host is deleting right now (left to it).
    pub busy: usize,
    /// Temporary metadata files of dead writers removed.
    pub temp_files: usize,
    /// Checkpoints of volumes that no longer exist, removed.
    pub checkpoints: usize,
}

/// Collects the leftovers of every attached domain (at start-up, before serving).
pub fn collect_all(agent: &Arc<Agent>) {
    for (dom, _) in agent.registry.all() {
        collect_garbage(agent, &dom);
    }
}

/// Collects the leftovers of a domain a verb has just attached (nothing when it was attached
/// already).
pub fn after_attach(agent: &Arc<Agent>, attached: &Attached) {
    if let Some(dom) = &attached.fresh {
        collect_garbage(agent, dom);
    }
}

/// Temporary metadata files older than this are left by writers that died (a write takes
/// milliseconds); garbage collection removes them. This host's own dead writers' files (an
/// earlier incarnation of this agent: same host id, another pid, no such process) go at once,
/// whatever their age: only the writer's own host can tell it is dead
/// (`durable::left_by_dead_writer_of_this_host`).
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

/// Collects the leftovers of `dom`.
pub fn collect_garbage(agent: &Arc<Agent>, dom: &Domain) -> GcReport {
    let mut report = GcReport::default();
    match dom.backend.remove_stale_temp_files(STALE_TEMP_AGE) {
        Ok(n) => report.temp_files = n,
        Err(e) => {
            report.failed += 1;
            tracing::error!(sd_id = %dom.sd_id, error = %e, "cannot remove stale temporary metadata files");
        }
    }
    let leftovers = match dom.backend.list_leftovers() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(sd_id = %dom.sd_id, error = %e, "cannot list deletion leftovers");
            report.failed += 1;
            return report;
        }
    };
    for l in leftovers {
        let name = l.name();
        if let Err(e) = dom.backend.check_leftover(&l) {
            report.failed += 1;
            tracing::error!(sd_id = %dom.sd_id, leftover = %name, error = %e, "garbage collection leaves a leftover that is not a real directory of the domain");
            continue;
        }
        // On shared storage another host may be deleting this image right now: its leases are
        // held, and the leftover is not abandoned. Held until the removal below is done.
        let _held = if l.wipe() {
            Vec::new()
        } else {
            match lease_leftover(dom, &l).map_err(ApiError::from) {
                Ok(held) => held,
                Err(e) => {
                    report.busy += 1;
                    tracing::info!(sd_id = %dom.sd_id, leftover = %name, reason = %e.message, "garbage collection leaves a deletion that is in progress elsewhere");
                    continue;
                }
            }
        };
        if l.wipe() {
            // Never removed unwiped: the data may be sensitive.
            match schedule_leftover_wipe(agent, dom, &l).map_err(ApiError::from) {
                Ok(()) => report.wipes_scheduled += 1,
                Err(e) if e.code == sdm_proto::ErrorCode::AcquireLockFailure => {
                    report.busy += 1;
                    tracing::info!(sd_id = %dom.sd_id, leftover = %name, reason = %e.message, "garbage collection leaves a wipe that is in progress elsewhere");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(sd_id = %dom.sd_id, leftover = %name, error = %e.message, "cannot schedule the wipe of a deleted image");
                }
            }
            continue;
        }
        match dom.backend.purge(&l) {
            Ok(()) => {
                report.removed += 1;
                tracing::info!(sd_id = %dom.sd_id, leftover = %name, "garbage collection removed a deleted image");
            }
            Err(e) => {
                report.failed += 1;
                tracing::error!(sd_id = %dom.sd_id, leftover = %name, error = %e, "garbage collection could not remove a deleted image");
            }
        }
    }
    report.checkpoints = collect_checkpoints(dom);
    if report != GcReport::default() {
        tracing::info!(sd_id = %dom.sd_id, removed = report.removed, temp_files = report.temp_files, wipes_scheduled = report.wipes_scheduled, busy = report.busy, failed = report.failed, checkpoints = report.checkpoints, "garbage collection done");
    }
    report
}

/// Removes the checkpoints (`<vol>.checkpoint`, see `ops::resume`) whose volume is gone: the
/// backend reports them as orphans and refuses to remove one whose volume exists.
fn collect_checkpoints(dom: &Domain) -> usize {
    let mut n = 0;
    for img in dom.backend.list_images().unwrap_or_default() {
        for name in dom.backend.orphans(&img).unwrap_or_default() {
            if !name.ends_with(".checkpoint") {
                continue;
            }
            match dom.backend.remove_orphan(&img, &name) {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(sd_id = %dom.sd_id, img_id = %img, file = %name, error = %e, "garbage collection left a checkpoint")
                }
            }
        }
    }
    n
}

/// Schedules wipe-then-remove of a `_remove_me_ZERO_` leftover found at attach. Fails with
/// AcquireLockFailure when another job or host is working on it.
fn schedule_leftover_wipe(
    agent: &Arc<Agent>,
    dom: &Domain,
    l: &Leftover,
) -> Result<(), AgentError> {
    let job_id = Uuid::new_v4();
    let held = lease_leftover(dom, l)?;
    let dom = agent.domain(&dom.sd_id)?;
    let (agent2, l2) = (agent.clone(), l.clone());
    spawn_job(agent, &job_id, "gc_wipe", move |job| {
        purge(&agent2, job, &dom, &l2, false, held)
    })?;
    tracing::info!(job = %job_id, leftover = %l.name(), "scheduled wipe of a deleted image left over by an interrupted deletion");
    Ok(())
}
