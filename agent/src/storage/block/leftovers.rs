//! Deleting images: an image's LVs are retagged `IU__remove_me_[ZERO_]<img>` (one `lvchange`,
//! under the metadata-writer lease), which makes them a leftover every host recognises; wiping
//! and `lvremove` follow. Garbage collection finishes what an interruption left.

use sdm_proto::Uuid;

use super::layout::{lease_offset, IMAGE_PREFIX};
use super::volumes::remove_lvs;
use super::BlockDomain;
use crate::storage::backend::{LeaseLocation, Leftover, Prepared};
use crate::storage::StorageError;

/// Retags every LV of live image `img` (half-made ones too) as the leftover of its deletion.
pub fn mark(d: &BlockDomain, img: &Uuid, wipe: bool) -> Result<Leftover, StorageError> {
    let l = Leftover::of(img, wipe);
    d.writer.run("mark an image for removal", |lease| {
        let names: Vec<String> = d
            .volume_lvs()?
            .into_iter()
            .filter(|v| v.image.as_deref() == Some(img.as_str()))
            .map(|v| v.name)
            .collect();
        if names.is_empty() {
            return Err(d.image_not_found(img));
        }
        lease.verify()?;
        d.lvm()
            .change_lv_tags(
                &d.devs,
                &d.vg,
                &names,
                &[format!("{IMAGE_PREFIX}{img}")],
                &[format!("{IMAGE_PREFIX}{}", l.name())],
            )
            .map_err(|e| super::BlockError::from(e).into())
    })?;
    d.links.remove_dir(img.as_str());
    Ok(l)
}

/// Leftovers, by name.
pub fn list(d: &BlockDomain) -> Result<Vec<Leftover>, StorageError> {
    let mut out: Vec<Leftover> = d
        .volume_lvs()?
        .iter()
        .filter_map(|v| v.leftover())
        .collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out.dedup();
    Ok(out)
}

/// Whether any LV still belongs to `l`.
pub fn exists(d: &BlockDomain, l: &Leftover) -> bool {
    d.volume_lvs()
        .is_ok_and(|v| v.iter().any(|v| v.image.as_deref() == Some(l.name())))
}

/// The complete volumes of `l` with their leases (half-made ones have no lease yet).
pub fn volumes(d: &BlockDomain, l: &Leftover) -> Result<Vec<(Uuid, LeaseLocation)>, StorageError> {
    Ok(d.volume_lvs()?
        .into_iter()
        .filter(|v| v.is_volume_of(l.name()))
        .filter_map(|v| {
            let vol = Uuid::parse(&v.name).ok()?;
            let at = LeaseLocation {
                path: d.leases_link.clone(),
                offset: lease_offset(v.slot?),
            };
            Some((vol, at))
        })
        .collect())
}

/// The LVs of `l`, activated, with their sizes.
pub fn wipe_targets(d: &BlockDomain, l: &Leftover) -> Result<Vec<(Prepared, u64)>, StorageError> {
    let mut out = Vec::new();
    for v in d.volume_lvs()? {
        if v.image.as_deref() == Some(l.name()) {
            out.push(d.prepare_lv(l.name(), &v.name)?);
        }
    }
    out.sort_by(|a, b| a.0.path().cmp(b.0.path()));
    Ok(out)
}

/// Removes every LV of `l`.
pub fn purge(d: &BlockDomain, l: &Leftover) -> Result<(), StorageError> {
    d.writer.run("remove a deleted image", |lease| {
        let lvs: Vec<_> = d
            .volume_lvs()?
            .into_iter()
            .filter(|v| v.image.as_deref() == Some(l.name()))
            .collect();
        if lvs.is_empty() {
            return Ok(());
        }
        // Their slots' checkpoints go while the LVs still claim the slots.
        for (v, slot) in lvs.iter().filter_map(|v| Some((v, v.slot?))) {
            if let Err(e) = super::ckpt::clear(d, slot) {
                tracing::warn!(sd_id = %d.sd_id, lv = %v.name, slot, error = %e, "clearing the checkpoint region of a deleted volume failed");
            }
        }
        let names: Vec<String> = lvs.into_iter().map(|v| v.name).collect();
        lease.verify()?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        remove_lvs(d, &refs)
    })?;
    d.links.remove_dir(l.name());
    Ok(())
}
