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
    is_canonical_uuid, ApiError, ErrorCode, Fix, FixType, JobResult, Legality, TaskRef, Uuid,
};
use serde_json::json;

use super::{lock_for_job, purge, spawn_job};
use crate::error::AgentError;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::domain::{
    list_volumes_in, volume_paths_in, Domain, REMOVE_ME_PREFIX, REMOVE_ME_ZERO_PREFIX,
};
use crate::storage::md::DomainMetadata;
use crate::storage::volume::read_metadata_at;
use crate::storage::StorageError;

/// `StorageDomain.check`.
pub fn check(agent: &Agent, sd: &Uuid) -> Result<Vec<Fix>, AgentError> {
    let dom = agent.domain(sd)?;
    let mut fixes = Vec::new();
    match crate::durable::read_direct(&dom.dom_md().join("metadata"))
        .map_err(StorageError::from)
        .and_then(|raw| DomainMetadata::parse(&raw))
    {
        Ok(_) => {}
        Err(e) => fixes.push(Fix {
            fix_type: FixType::Mend,
            description: format!("domain metadata: {e}"),
            data: json!({"kind": "bad_metadata", "file": "dom_md/metadata"}),
        }),
    }
    for name in dom.list_leftovers()? {
        let wipe = name.starts_with(REMOVE_ME_ZERO_PREFIX);
        fixes.push(Fix {
            fix_type: FixType::Clean,
            description: format!(
                "images/{name} is left over from an interrupted deletion; fixing {} removes it",
                if wipe { "wipes and then" } else { "" }
            ),
            data: json!({"kind": "leftover", "name": name}),
        });
    }
    for img in dom.list_images()? {
        let dir = dom.image_dir(&img);
        let vols = list_volumes_in(&dir)?;
        for entry in std::fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or("");
            let owned = Uuid::parse(stem).is_ok_and(|u| vols.contains(&u));
            let is_temp = name.ends_with(".new");
            if (!owned || is_temp) && is_volume_file_name(&name) {
                fixes.push(Fix {
                    fix_type: FixType::Clean,
                    description: format!("images/{img}/{name} belongs to no volume"),
                    data: json!({"kind": "orphan", "img": img, "file": name}),
                });
            }
        }
        for vol in vols {
            let paths = volume_paths_in(&dir, &vol);
            let md = match read_metadata_at(&paths.meta) {
                Ok(md) => md,
                Err(e) => {
                    fixes.push(Fix {
                        fix_type: FixType::Mend,
                        description: format!("volume {vol}: {e}"),
                        data: json!({"kind": "bad_metadata", "img": img, "vol": vol}),
                    });
                    continue;
                }
            };
            if md.legality == Legality::Illegal && volume_is_idle(agent, &dom, &img, &vol) {
                fixes.push(Fix {
                    fix_type: FixType::Mend,
                    description: format!(
                        "volume {vol} of image {img} is ILLEGAL and no job writes it: its content is not to be trusted. Set data.confirm_delete to true to delete it"
                    ),
                    data: json!({"kind": "illegal_volume", "img": img, "vol": vol, "generation": md.generation, "confirm_delete": false}),
                });
            }
            if let Some(actual) = actual_size(&paths.data, md.format) {
                if actual != md.capacity {
                    fixes.push(Fix {
                        fix_type: FixType::Mend,
                        description: format!("volume {vol}: size {actual} disagrees with capacity {} in its metadata", md.capacity),
                        data: json!({"kind": "size_mismatch", "img": img, "vol": vol, "actual": actual, "capacity": md.capacity, "format": md.format}),
                    });
                }
            }
        }
    }
    Ok(fixes)
}

fn is_volume_file_name(name: &str) -> bool {
    let stem = name.get(..36).unwrap_or("");
    is_canonical_uuid(stem) && matches!(&name[36..], "" | ".meta" | ".lease" | ".meta.new" | ".new")
}

fn volume_is_idle(agent: &Agent, dom: &Domain, img: &Uuid, vol: &Uuid) -> bool {
    let Ok(_g) = agent.locks.lock(
        &[(image_key(dom.sd_id.as_str(), img.as_str()), Mode::Exclusive)],
        std::time::Duration::ZERO,
        &|| false,
    ) else {
        return false;
    };
    let p = dom.volume_paths(img, vol);
    dom.leases
        .status(dom.sd_id.as_str(), vol.as_str(), &p.lease, 0)
        .is_ok_and(|s| s.owners.is_empty())
}

fn actual_size(path: &std::path::Path, format: sdm_proto::VolumeFormat) -> Option<u64> {
    match format {
        sdm_proto::VolumeFormat::Raw => std::fs::metadata(path).ok().map(|m| m.len()),
        sdm_proto::VolumeFormat::Cow => {
            let out = std::process::Command::new("qemu-img")
                .args(["info", "--output=json", "-U", "-f", "qcow2"])
                .arg(path)
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v.get("virtual-size")?.as_u64()
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

/// `StorageDomain.fix`: validates the finding and starts its repair as a job.
pub fn fix(agent: &Arc<Agent>, p: FixDomainParams) -> Result<TaskRef, AgentError> {
    let FixDomainParams { sd_id, fix, job_id } = p;
    let dom = agent.domain(&sd_id)?;
    let job_id = job_id.unwrap_or_else(Uuid::new_v4);
    let a = agent.clone();
    match field(&fix, "kind")? {
        "leftover" => {
            let name = field(&fix, "name")?.to_string();
            let img = name
                .strip_prefix(REMOVE_ME_ZERO_PREFIX)
                .or_else(|| name.strip_prefix(REMOVE_ME_PREFIX))
                .ok_or_else(|| ApiError::invalid("not a leftover name"))?;
            if !is_canonical_uuid(img) {
                return Err(ApiError::invalid("not a leftover name").into());
            }
            let wipe = name.starts_with(REMOVE_ME_ZERO_PREFIX);
            let dir = dom.images_dir().join(&name);
            if !dir.is_dir() {
                return Err(ApiError::invalid(format!(
                    "images/{name} does not exist (already fixed?)"
                ))
                .into());
            }
            spawn_job(agent, &job_id, "fix_leftover", move |job| {
                purge::purge(&a, job, &dom, &dir, wipe, false, Vec::new())
            })?;
        }
        "orphan" => {
            let img = uuid_field(&fix, "img")?;
            let file = field(&fix, "file")?.to_string();
            if !is_volume_file_name(&file) {
                return Err(ApiError::invalid("not a volume file name").into());
            }
            spawn_job(agent, &job_id, "fix_orphan", move |job| {
                let dir = dom.image_dir(&img);
                let _l = lock_for_job(
                    &a,
                    job,
                    &[
                        (domain_key(dom.sd_id.as_str()), Mode::Shared),
                        (image_key(dom.sd_id.as_str(), img.as_str()), Mode::Exclusive),
                    ],
                )?;
                let stem = Uuid::parse(&file[..36]).map_err(ApiError::invalid)?;
                let is_temp = file.ends_with(".new");
                if !is_temp && list_volumes_in(&dir)?.contains(&stem) {
                    return Err(ApiError::invalid(format!("{file} belongs to a volume now")).into());
                }
                let p = dir.join(&file);
                std::fs::remove_file(&p).map_err(|e| StorageError::io("remove", &p, e))?;
                crate::durable::sync_dir(&dir)?;
                tracing::info!(sd_id = %dom.sd_id, file = %p.display(), "removed orphaned file");
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
                let _l = lock_for_job(
                    &a,
                    job,
                    &[
                        (domain_key(dom.sd_id.as_str()), Mode::Shared),
                        (image_key(dom.sd_id.as_str(), img.as_str()), Mode::Exclusive),
                    ],
                )?;
                let p = dom.volume_paths(&img, &vol);
                let md = read_metadata_at(&p.meta)?;
                let actual = actual_size(&p.data, md.format).unwrap_or(0);
                if md.format != sdm_proto::VolumeFormat::Raw || actual > md.capacity {
                    return Err(ApiError::new(ErrorCode::UnsupportedOperation, "only a RAW volume shorter than its capacity can be mended (by extending it); anything else would lose data").into());
                }
                let _held = dom
                    .leases
                    .acquire(dom.sd_id.as_str(), vol.as_str(), &p.lease, 0)?;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p.data)
                    .map_err(|e| StorageError::io("open", &p.data, e))?;
                f.set_len(md.capacity)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| StorageError::io("extend", &p.data, e))?;
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
    job: &Arc<crate::jobs::Job>,
    dom: &Domain,
    img: &Uuid,
    vol: &Uuid,
) -> Result<Option<JobResult>, AgentError> {
    let _l = lock_for_job(
        agent,
        job,
        &[
            (domain_key(dom.sd_id.as_str()), Mode::Shared),
            (image_key(dom.sd_id.as_str(), img.as_str()), Mode::Exclusive),
        ],
    )?;
    let dir = dom.image_dir(img);
    let p = dom.volume_paths(img, vol);
    let md = read_metadata_at(&p.meta)?;
    if md.legality != Legality::Illegal {
        return Err(
            ApiError::invalid(format!("volume {vol} is {} now; not deleted", md.legality)).into(),
        );
    }
    for other in list_volumes_in(&dir)? {
        if let Ok(omd) = read_metadata_at(&volume_paths_in(&dir, &other).meta) {
            if omd.parent == vol.as_str() {
                return Err(ApiError::invalid(format!(
                    "volume {vol} is the parent of {other}; not deleted"
                ))
                .into());
            }
        }
    }
    let held = dom
        .leases
        .acquire(dom.sd_id.as_str(), vol.as_str(), &p.lease, 0)?;
    // Metadata first: once it is gone the volume no longer exists; the rest are orphans at worst.
    for f in [&p.meta, &p.data] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", f, e).into()),
        }
    }
    drop(held);
    let _ = std::fs::remove_file(&p.lease);
    crate::durable::sync_dir(&dir)?;
    if list_volumes_in(&dir).map(|v| v.is_empty()).unwrap_or(false)
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        let _ = std::fs::remove_dir(&dir);
    }
    tracing::info!(sd_id = %dom.sd_id, img_id = %img, vol_id = %vol, "deleted ILLEGAL volume on request");
    Ok(None)
}
