//! What a re-issued `Image.move` keeps of the destination image an interrupted one left.
//!
//! VDSM deletes an existing destination image that is not wholly LEGAL (or any, with `force`)
//! and copies everything again. sdm keeps VDSM's rules for `force` and for a LEGAL image, but
//! without `force` an ILLEGAL destination whose volumes are exactly what this move would create
//! is kept: its LEGAL volumes (copied and declared good under their lease) stay, and each
//! ILLEGAL one continues from its checkpoint where `ops::resume` trusts it. Anything else
//! about the destination (a volume the source does not have, another shape, a LEGAL volume of
//! another generation, a half-made volume) means it is replaced as VDSM would.
//!
//! # Two moves of one image at once (from different hosts)
//!
//! On one host the destination image lock keeps two moves apart; across hosts only the
//! destination volumes' leases do, so a move follows one rule: it changes nothing on the
//! destination it does not hold the lease of, and it holds every destination volume's lease
//! from the moment its volumes exist until it ends (not only the one it copies). Hence:
//! - the plan is read without leases: it only chooses what to try;
//! - replacing takes the lease of every existing volume (and half-made one) first, and marks or
//!   deletes nothing unless it has them all;
//! - after creating what is missing, the move takes every destination volume's lease
//!   ([`hold`]) and reads the plan again under them ([`recheck`]): a busy lease, a volume that
//!   appeared, or a plan that changed (another move finished a volume meanwhile) fails the move
//!   with AcquireLockFailure (651) before it writes a byte, naming the other move as the likely
//!   holder;
//! - a volume another move created between this one's plan and its own creation fails the
//!   creation with the same code.
//!
//! So of two racing moves at most one copies, the other fails with 651 having changed nothing
//! the first made, and a re-issued move continues whatever the survivor left.

use sdm_lease::{Lease, LeaseErrorKind};
use sdm_proto::{ApiError, ErrorCode, Legality, Uuid};

use crate::error::AgentError;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::read_metadata;
use crate::storage::StorageError;

/// What the move does with one source volume on the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstVolume {
    /// Not there: created ILLEGAL, then copied from 0.
    Create,
    /// LEGAL at the source's generation: an earlier attempt finished it.
    Done,
    /// There and ILLEGAL: copied again, from its checkpoint when one is trusted.
    Continue,
}

/// The plan for an existing destination image, in the order of `src`, or why it cannot be
/// kept (the caller then replaces it). `Ok` with nothing but `Create` never happens: an
/// existing image has at least one volume, or it is replaced.
pub fn plan(
    dst_dom: &Domain,
    img: &Uuid,
    src: &[(Uuid, VolumeMetadata)],
    force: bool,
) -> Result<Result<Vec<DstVolume>, String>, AgentError> {
    if force {
        return Ok(Err("force was asked".into()));
    }
    if !dst_dom.backend.half_made_volume_leases(img)?.is_empty() {
        return Ok(Err("it holds half-made volumes".into()));
    }
    let mut dst = Vec::new();
    for v in dst_dom.backend.list_volumes(img)? {
        match read_metadata(dst_dom, img, &v) {
            Ok(md) => dst.push((v, md)),
            Err(e) => return Ok(Err(format!("volume {v}'s metadata is unreadable: {e}"))),
        }
    }
    Ok(compare(src, &dst))
}

/// AcquireLockFailure (651) for a destination another move of `img` appears to work on.
pub fn another_move(img: &Uuid, what: impl std::fmt::Display) -> AgentError {
    ApiError::new(
        ErrorCode::AcquireLockFailure,
        format!("another move of image {img} is working on its destination: {what}"),
    )
    .into()
}

/// Takes destination volume `v`'s lease, never waiting; busy means another move (or another
/// writer) is on it.
pub fn lease_one(dom: &Domain, img: &Uuid, v: &Uuid) -> Result<Lease, AgentError> {
    match dom.acquire_volume_lease(img, v) {
        Ok(l) => Ok(l),
        Err(StorageError::Lease(e)) if e.kind() == LeaseErrorKind::Busy => Err(another_move(
            img,
            format_args!("volume {v}'s lease is held: {e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Takes the leases of every destination volume of the move (`src`'s ids), in `src`'s order.
pub fn hold(
    dom: &Domain,
    img: &Uuid,
    src: &[(Uuid, VolumeMetadata)],
) -> Result<Vec<Lease>, AgentError> {
    src.iter().map(|(v, _)| lease_one(dom, img, v)).collect()
}

/// Reads the destination again under the leases of [`hold`]: no volume but the source's, none
/// half-made, each `Done` one still LEGAL at the source's generation, every other ILLEGAL.
/// Anything else is another move's doing. (The shape of the volumes this move created is the
/// backend's: a block domain rounds a capacity up to its extents.)
pub fn recheck(
    dom: &Domain,
    img: &Uuid,
    src: &[(Uuid, VolumeMetadata)],
    planned: &[DstVolume],
) -> Result<(), AgentError> {
    let changed = |why: String| {
        another_move(
            img,
            format_args!("the destination changed since this move planned it ({why})"),
        )
    };
    if !dom.backend.half_made_volume_leases(img)?.is_empty() {
        return Err(changed("it holds half-made volumes".into()));
    }
    if let Some(v) = dom
        .backend
        .list_volumes(img)?
        .into_iter()
        .find(|d| !src.iter().any(|(s, _)| s == d))
    {
        return Err(changed(format!("volume {v} is not in the source image")));
    }
    for ((v, s), p) in src.iter().zip(planned) {
        let d = read_metadata(dom, img, v).map_err(|e| changed(format!("volume {v}: {e}")))?;
        let as_planned = match p {
            DstVolume::Done => d.legality == Legality::Legal && d.generation == s.generation,
            DstVolume::Create | DstVolume::Continue => d.legality == Legality::Illegal,
        };
        if !as_planned {
            return Err(changed(format!(
                "volume {v} is {} at generation {}, planned {p:?}",
                d.legality, d.generation
            )));
        }
    }
    Ok(())
}

/// [`plan`] on metadata already read.
fn compare(
    src: &[(Uuid, VolumeMetadata)],
    dst: &[(Uuid, VolumeMetadata)],
) -> Result<Vec<DstVolume>, String> {
    if dst.is_empty() {
        return Err("it has no volumes".into());
    }
    if let Some((v, _)) = dst.iter().find(|(d, _)| !src.iter().any(|(s, _)| s == d)) {
        return Err(format!("volume {v} is not in the source image"));
    }
    src.iter()
        .map(|(v, s)| {
            let Some((_, d)) = dst.iter().find(|(d, _)| d == v) else {
                return Ok(DstVolume::Create);
            };
            if (d.capacity, d.format, &d.parent) != (s.capacity, s.format, &s.parent) {
                return Err(format!(
                    "volume {v} has another shape (capacity {}, {}, parent {}) than the source's (capacity {}, {}, parent {})",
                    d.capacity, d.format, d.parent, s.capacity, s.format, s.parent
                ));
            }
            match d.legality {
                Legality::Illegal => Ok(DstVolume::Continue),
                Legality::Legal if (d.generation, d.role) == (s.generation, s.role) => {
                    Ok(DstVolume::Done)
                }
                l => Err(format!(
                    "volume {v} is {l} at generation {}, the source at {}",
                    d.generation, s.generation
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdm_proto::{Preallocation, VolumeFormat, VolumeRole, BLANK_UUID};

    fn md(parent: &str, legality: Legality, generation: u16) -> VolumeMetadata {
        VolumeMetadata {
            capacity: 1 << 30,
            ctime: 0,
            description: String::new(),
            disktype: "DATA".into(),
            domain: BLANK_UUID.into(),
            image: BLANK_UUID.into(),
            format: VolumeFormat::Cow,
            generation,
            legality,
            parent: parent.into(),
            sequence: 0,
            allocation: Preallocation::Sparse,
            role: VolumeRole::Leaf,
        }
    }

    fn chain() -> Vec<(Uuid, VolumeMetadata)> {
        let base = Uuid::new_v4();
        let top = md(base.as_str(), Legality::Legal, 2);
        vec![
            (base, md(BLANK_UUID, Legality::Legal, 5)),
            (Uuid::new_v4(), top),
        ]
    }

    #[test]
    fn a_finished_base_stays_an_illegal_top_continues_a_missing_one_is_created() {
        let src = chain();
        let (base, top) = (&src[0], &src[1]);
        let dst = vec![(base.0.clone(), md(BLANK_UUID, Legality::Legal, 5))];
        assert_eq!(
            compare(&src, &dst),
            Ok(vec![DstVolume::Done, DstVolume::Create])
        );
        let dst = vec![
            (base.0.clone(), md(BLANK_UUID, Legality::Legal, 5)),
            (top.0.clone(), md(base.0.as_str(), Legality::Illegal, 0)),
        ];
        assert_eq!(
            compare(&src, &dst),
            Ok(vec![DstVolume::Done, DstVolume::Continue])
        );
    }

    #[test]
    fn anything_else_replaces_the_destination() {
        let src = chain();
        let base = &src[0].0;
        let stranger = vec![(Uuid::new_v4(), md(BLANK_UUID, Legality::Illegal, 0))];
        assert!(compare(&src, &stranger)
            .unwrap_err()
            .contains("not in the source"));
        let mut bigger = md(BLANK_UUID, Legality::Illegal, 0);
        bigger.capacity *= 2;
        let shape = vec![(base.clone(), bigger)];
        assert!(compare(&src, &shape).unwrap_err().contains("another shape"));
        // The source was written (its generation moved) since the earlier attempt.
        let stale = vec![(base.clone(), md(BLANK_UUID, Legality::Legal, 4))];
        assert!(compare(&src, &stale).unwrap_err().contains("generation"));
        assert!(compare(&src, &[]).is_err());
    }
}
