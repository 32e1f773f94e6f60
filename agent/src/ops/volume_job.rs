//! The discipline every job that writes one volume in place shares (`SDM.merge` on its base,
//! `SDM.amend_volume`, `SDM.sparsify_volume`, the bitmap verbs), as VDSM's `VolumeInfo` jobs
//! and `Volume.operation` make it, with the fencing rules of `SDM.copy_data`:
//!
//! 1. the volume's lease (and those of any other volume the job must keep still: a merge's
//!    top), exclusive, never waiting (651 when another job or host holds one);
//! 2. from here until the release, a watcher stops the job when a lease is lost
//!    (`lease_watch`, through the job's Control);
//! 3. in-process locks: the domain shared, the image exclusive;
//! 4. the metadata re-read under the lease, and the generation check when one is given (911
//!    before anything changes);
//! 5. right before the first write (ILLEGAL, durably, for jobs whose crash must leave the volume
//!    unusable; or the first change of a qcow2 file), the lease confirmed on storage and the
//!    generation re-read;
//! 6. the work;
//! 7. one metadata write: generation+1 (and LEGAL when step 5 marked ILLEGAL), after checking
//!    that the generation did not move and the leases are still ours (`outcome::write_legal`);
//! 8. the leases released, then the locks.

use std::sync::Arc;

use sdm_lease::Lease;
use sdm_proto::{ApiError, ErrorCode, Generation, Legality, Uuid};

use super::lease_watch::with_watch;
use super::outcome::write_legal;
use super::{check_abort, lock_for_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::{read_metadata, update_metadata};

/// The volume a job writes.
#[derive(Clone, Debug)]
pub struct Target {
    /// Domain.
    pub sd: Uuid,
    /// Image.
    pub img: Uuid,
    /// Volume.
    pub vol: Uuid,
    /// The generation the caller expects (None: not checked).
    pub generation: Option<Generation>,
}

impl Target {
    /// The volume a `vol_info` names (`generation` checked when given).
    pub fn of(v: &sdm_proto::VolumeRef) -> Target {
        Target {
            sd: v.sd_id.clone(),
            img: v.img_id.clone(),
            vol: v.vol_id.clone(),
            generation: v.generation,
        }
    }
}

/// A volume held for writing: leases and locks taken, metadata re-read under the lease,
/// generation checked.
pub struct Held<'a> {
    /// The domain.
    pub dom: Arc<Domain>,
    /// The volume.
    pub target: Target,
    /// Its metadata, read under the lease.
    pub md: VolumeMetadata,
    start_gen: u16,
    set_illegal: bool,
    /// The target's lease first, then the others the job holds.
    leases: &'a [Lease],
}

/// Steps 1–8: runs `work` on the volume `t` held for writing, with the leases of `also`
/// (other volumes of the same image the job must keep still) held and watched as well.
/// `work` calls [`Held::mark_illegal`] or [`Held::before_write`] before its first write and
/// [`Held::finish`] last.
pub fn with_volume<T>(
    agent: &Agent,
    job: &Arc<Job>,
    t: Target,
    also: &[Uuid],
    work: impl FnOnce(&mut Held<'_>) -> Result<T, AgentError>,
) -> Result<T, AgentError> {
    let dom = agent.domain(&t.sd)?;
    // Only refuses a missing volume before any lease exists; nothing it says is used.
    read_metadata(&dom, &t.img, &t.vol)?;
    let mut leases = vec![dom.acquire_volume_lease(&t.img, &t.vol)?];
    for vol in also {
        leases.push(dom.acquire_volume_lease(&t.img, vol)?);
    }
    let watched: Vec<&Lease> = leases.iter().collect();
    let out = with_watch(agent, job, job.control(), &watched, || {
        let _locks = lock_for_job(
            agent,
            job,
            &[
                (domain_key(t.sd.as_str()), Mode::Shared),
                (image_key(t.sd.as_str(), t.img.as_str()), Mode::Exclusive),
            ],
        )?;
        check_abort(job)?;
        // Another host may have written the volume while we waited for the lease: only what is
        // read under it counts.
        let md = read_metadata(&dom, &t.img, &t.vol)?;
        check_expected(&t, md.generation)?;
        let mut held = Held {
            dom: dom.clone(),
            start_gen: md.generation,
            md,
            target: t.clone(),
            set_illegal: false,
            leases: &leases,
        };
        work(&mut held)
    })?;
    for l in leases {
        if let Err(e) = l.release() {
            tracing::warn!(error = %e, "releasing a volume lease failed");
        }
    }
    Ok(out)
}

fn check_expected(t: &Target, generation: u16) -> Result<(), AgentError> {
    match t.generation {
        Some(want) if want.get() != generation => Err(ApiError::new(
            ErrorCode::GenerationMismatch,
            format!(
                "volume {} generation is {generation}, requested {}",
                t.vol,
                want.get()
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

impl Held<'_> {
    fn verify_leases(&self) -> Result<(), AgentError> {
        for l in self.leases {
            l.verify()?;
        }
        Ok(())
    }

    /// Step 5 for a job that writes without marking the volume ILLEGAL: the leases confirmed on
    /// storage and the generation still the one checked (the wait for locks may have been
    /// long). Refreshes `md`.
    pub fn before_write(&mut self) -> Result<(), AgentError> {
        self.verify_leases()?;
        let t = &self.target;
        let md = read_metadata(&self.dom, &t.img, &t.vol)?;
        if md.generation != self.start_gen {
            return Err(ApiError::new(
                ErrorCode::GenerationMismatch,
                format!(
                    "volume {} generation changed to {} before the job wrote it",
                    t.vol, md.generation
                ),
            )
            .into());
        }
        self.md = md;
        Ok(())
    }

    /// Step 5: ILLEGAL, durably, with `change` applied to the metadata in the same write (a
    /// merge grows the base's capacity there), after [`Held::before_write`]'s checks.
    pub fn mark_illegal(
        &mut self,
        change: impl FnOnce(&mut VolumeMetadata),
    ) -> Result<(), AgentError> {
        self.before_write()?;
        self.md.legality = Legality::Illegal;
        change(&mut self.md);
        update_metadata(&self.dom, &self.target.img, &self.target.vol, &mut self.md)?;
        self.set_illegal = true;
        // The bytes change in place from here on: a copy's checkpoint on this volume no
        // longer describes them (ops::resume trusts a checkpoint only while no other writer
        // has touched the volume).
        self.dom
            .backend
            .remove_checkpoint(&self.target.img, &self.target.vol)?;
        Ok(())
    }

    /// Step 7.
    pub fn finish(&mut self) -> Result<(), AgentError> {
        let t = &self.target;
        let mut now = read_metadata(&self.dom, &t.img, &t.vol)?;
        if now.generation != self.start_gen {
            return Err(ApiError::new(
                ErrorCode::GenerationMismatch,
                format!(
                    "volume {} generation changed to {} while the job ran",
                    t.vol, now.generation
                ),
            )
            .into());
        }
        self.verify_leases()?;
        if self.set_illegal {
            now.legality = Legality::Legal;
        }
        now.generation = Generation(self.start_gen).next().get();
        write_legal(&self.dom, &t.img, &t.vol, &mut now)?;
        self.md = now;
        Ok(())
    }
}
