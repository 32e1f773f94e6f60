//! `StorageDomain.check` and `StorageDomain.fix`: find what crashes and failures left behind,
//! and repair one finding at a time as a job.
//!
//! | finding (`data.kind`) | type | what `fix` does |
//! |---|---|---|
//! | `leftover`: a `_remove_me_*` image | clean | finishes the deletion (wipes first for `_remove_me_ZERO_`) |
//! | `orphan`: a data, lease or temporary file without volume metadata | clean | removes the file |
//! | `illegal_volume`: ILLEGAL, no job, lease free | mend | deletes the volume, but only if the caller sets `data.confirm_delete` to `true`; unchanged, the fix is refused |
//! | `size_mismatch`: a RAW file shorter than its capacity | mend | extends the file (reads as zeros) |
//! | `size_mismatch`: a RAW file longer than its capacity, or a COW virtual size that differs | mend | refused: shrinking would lose data; repair by hand |
//! | `bad_metadata`: unreadable `.meta` or a broken domain seal | mend | refused: needs a person |
//!
//! The `data` of a finding is what `fix` acts on; every name in it is validated again (it comes
//! back from the client), so a forged finding cannot point outside the domain.

use std::sync::Arc;

use sdm_proto::api::FixDomainParams;
use sdm_proto::{
    ApiError, ErrorCode, Fix, FixType, JobResult, Legality, TaskRef, Uuid, VolumeFormat,
};
use serde_json::json;

use super::{lock_for_job, purge, spawn_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::backend::Leftover;
use crate::storage::domain::Domain;
use crate::storage::qemu;
use crate::storage::volume::read_metadata;
use crate::storage::StorageError;

/// `StorageDomain.check`.
pub fn check(agent: &Agent, sd: &Uuid) -> Result<Vec<Fix>, AgentError> {
    let dom = agent.domain(sd)?;
    let mut fixes = Vec::new();
    if let Err(e) = dom.backend.read_domain_metadata() {
        fixes.push(Fix {
            fix_type: FixType::Mend,
            description: format!("domain metadata: {e}"),
            data: json!({"kind": "bad_metadata", "file": "dom_md/metadata"}),
        });
    }
    for l in dom.backend.list_leftovers()? {
        let name = l.name();
        fixes.push(Fix {
            fix_type: FixType::Clean,
            description: format!(
                "images/{name} is left over from an interrupted deletion; fixing {} removes it",
                if l.wipe() { "wipes and then" } else { "" }
            ),
            data: json!({"kind": "leftover", "name": name}),
        });
    }
    for img in dom.backend.list_images()? {
        // A deletion running beside the scan may remove an image between the listing and the
        // look inside it: what is gone has nothing left to report.
        let listed = dom
            .backend
            .list_volumes(&img)
            .and_then(|vols| Ok((vols, dom.backend.orphans(&img)?)));
        let (vols, orphans) = match listed {
            Ok(v) => v,
            Err(_) if !dom.backend.image_exists(&img) => continue,
            Err(e) => return Err(e.into()),
        };
        for name in orphans {
            fixes.push(Fix {
                fix_type: FixType::Clean,
                description: format!("images/{img}/{name} belongs to no volume"),
                data: json!({"kind": "orphan", "img": img, "file": name}),
            });
        }
        for vol in vols {
            check_volume(agent, &dom, &img, &vol, &mut fixes);
        }
    }
    Ok(fixes)
}

/// Findings about one volume: unreadable metadata, ILLEGAL and idle, a size that disagrees.
fn check_volume(agent: &Agent, dom: &Domain, img: &Uuid, vol: &Uuid, fixes: &mut Vec<Fix>) {
    let md = match read_metadata(dom, img, vol) {
        Ok(md) => md,
        // Removed since the listing (a deletion beside the scan).
        Err(StorageError::VolumeNotFound { .. } | StorageError::ImageNotFound { .. }) => return,
        Err(e) => {
            fixes.push(Fix {
                fix_type: FixType::Mend,
                description: format!("volume {vol}: {e}"),
                data: json!({"kind": "bad_metadata", "img": img, "vol": vol}),
            });
            return;
        }
    };
    if md.legality == Legality::Illegal && volume_is_idle(agent, dom, img, vol) {
        fixes.push(Fix {
            fix_type: FixType::Mend,
            description: format!(
                "volume {vol} of image {img} is ILLEGAL and no job writes it: its content is not to be trusted. Set data.confirm_delete to true to delete it"
            ),
            data: json!({"kind": "illegal_volume", "img": img, "vol": vol, "generation": md.generation, "confirm_delete": false}),
        });
    }
    if let Some(actual) = actual_size(dom, img, vol, md.format) {
        if actual != md.capacity {
            fixes.push(Fix {
                fix_type: FixType::Mend,
                description: format!("volume {vol}: size {actual} disagrees with capacity {} in its metadata", md.capacity),
                data: json!({"kind": "size_mismatch", "img": img, "vol": vol, "actual": actual, "capacity": md.capacity, "format": md.format}),
            });
        }
    }
}

fn volume_is_idle(agent: &Agent, dom: &Domain, img: &Uuid, vol: &Uuid) -> bool {
    let Ok(_g) = agent.locks.lock(
        &[(image_key(dom.sd_id.as_str(), img.as_str()), Mode::Exclusive)],
        std::time::Duration::ZERO,
        &|| false,
    ) else {
        return false;
    };
    dom.lease_status(img, vol)
        .is_ok_and(|s| s.owners.is_empty())
}

/// The size a volume's data has: RAW its length, COW the virtual size its qcow2 declares.
fn actual_size(dom: &Domain, img: &Uuid, vol: &Uuid, format: VolumeFormat) -> Option<u64> {
    match format {
        VolumeFormat::Raw => dom.backend.volume_size(img, vol).ok().map(|s| s.apparent),
        VolumeFormat::Cow => {
            let data = dom.backend.prepare(img, vol).ok()?;
            qemu::virtual_size(data.path())
        }
    }
}

fn field<'a>(fix: &'a Fix, key: &str) -> Result<&'a str, AgentError> {
    fix.data
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::invalid(format!("fix data has no string field {key:?}")).into())
}

fn uuid_field(fix: &Fix, key: &str) -> Result<Uuid, AgentError> {
    Ok(Uuid::parse(field(fix, key)?).map_err(ApiError::invalid)?)
}

/// The in-process locks a repair of one image takes.
fn image_locks(dom: &Domain, img: &Uuid) -> [(String, Mode); 2] {
    [
        (domain_key(dom.sd_id.as_str()), Mode::Shared),
        (image_key(dom.sd_id.as_str(), img.as_str()), Mode::Exclusive),
    ]
}

/// `StorageDomain.fix`: validates the finding and starts its repair as a job.
pub fn fix(agent: &Arc<Agent>, p: FixDomainParams) -> Result<TaskRef, AgentError> {
    let FixDomainParams { sd_id, fix, job_id } = p;
    let dom = agent.domain(&sd_id)?;
    let job_id = job_id.unwrap_or_else(Uuid::new_v4);
    let a = agent.clone();
    match field(&fix, "kind")? {
        "leftover" => {
            let name = field(&fix, "name")?;
            let l =
                Leftover::parse(name).ok_or_else(|| ApiError::invalid("not a leftover name"))?;
            if !dom.backend.leftover_exists(&l) {
                return Err(ApiError::invalid(format!(
                    "images/{name} does not exist (already fixed?)"
                ))
                .into());
            }
            spawn_job(agent, &job_id, "fix_leftover", move |job| {
                purge::purge(&a, job, &dom, &l, false, Vec::new())
            })?;
        }
        "orphan" => {
            let img = uuid_field(&fix, "img")?;
            let file = field(&fix, "file")?.to_string();
            if !dom.backend.is_orphan_name(&file) {
                return Err(ApiError::invalid("not a volume file name").into());
            }
            spawn_job(agent, &job_id, "fix_orphan", move |job| {
                let _l = lock_for_job(&a, job, &image_locks(&dom, &img))?;
                dom.backend.remove_orphan(&img, &file)?;
                Ok(None)
            })?;
        }
        "illegal_volume" => {
            let img = uuid_field(&fix, "img")?;
            let vol = uuid_field(&fix, "vol")?;
            if fix.data.get("confirm_delete").and_then(|v| v.as_bool()) != Some(true) {
                return Err(ApiError::invalid(
                    "deleting an ILLEGAL volume needs confirmation: send the fix with data.confirm_delete set to true",
                ).into());
            }
            spawn_job(agent, &job_id, "fix_illegal_volume", move |job| {
                delete_illegal(&a, job, &dom, &img, &vol)
            })?;
        }
        "size_mismatch" => {
            let img = uuid_field(&fix, "img")?;
            let vol = uuid_field(&fix, "vol")?;
            spawn_job(agent, &job_id, "fix_size", move |job| {
                let _l = lock_for_job(&a, job, &image_locks(&dom, &img))?;
                let md = read_metadata(&dom, &img, &vol)?;
                let actual = actual_size(&dom, &img, &vol, md.format).unwrap_or(0);
                if md.format != VolumeFormat::Raw || actual > md.capacity {
                    return Err(ApiError::new(ErrorCode::UnsupportedOperation, "only a RAW volume shorter than its capacity can be mended (by extending it); anything else would lose data").into());
                }
                let _held = dom.acquire_volume_lease(&img, &vol)?;
                dom.backend.grow_raw(&img, &vol, md.capacity)?;
                Ok(None)
            })?;
        }
        "bad_metadata" => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedOperation,
                "unreadable metadata cannot be repaired automatically; see docs/operations.md",
            )
            .into())
        }
        other => return Err(ApiError::invalid(format!("unknown fix kind {other:?}")).into()),
    }
    Ok(TaskRef { uuid: job_id })
}

fn delete_illegal(
    agent: &Agent,
    job: &Arc<Job>,
    dom: &Domain,
    img: &Uuid,
    vol: &Uuid,
) -> Result<Option<JobResult>, AgentError> {
    let _l = lock_for_job(agent, job, &image_locks(dom, img))?;
    let md = read_metadata(dom, img, vol)?;
    if md.legality != Legality::Illegal {
        return Err(
            ApiError::invalid(format!("volume {vol} is {} now; not deleted", md.legality)).into(),
        );
    }
    for other in dom.backend.list_volumes(img)? {
        if read_metadata(dom, img, &other).is_ok_and(|omd| omd.parent == vol.as_str()) {
            return Err(ApiError::invalid(format!(
                "volume {vol} is the parent of {other}; not deleted"
            ))
            .into());
        }
    }
    let held = dom.acquire_volume_lease(img, vol)?;
    dom.backend.remove_volume(img, vol, held)?;
    tracing::info!(sd_id = %dom.sd_id, img_id = %img, vol_id = %vol, "deleted ILLEGAL volume on request");
    Ok(None)
}
