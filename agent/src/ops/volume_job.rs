//! The discipline every job that writes one volume in place shares (`SDM.merge` on its base,
//! `SDM.amend_volume`, `SDM.sparsify_volume`, the bitmap verbs), as VDSM's `VolumeInfo` jobs
//! and `Volume.operation` make it:
//!
//! 1. the volume's lease, exclusive, never waiting (651 when another job or host holds it);
//! 2. in-process locks: the domain shared, the image exclusive;
//! 3. the generation check when one is given (911 before anything changes);
//! 4. optionally ILLEGAL, durably, before the first write into the volume's data (a crash or
//!    failure then leaves it ILLEGAL with its old generation);
//! 5. the work;
//! 6. one metadata write: generation+1 (and LEGAL when step 4 ran), after checking that the
//!    generation did not move and the lease is still ours;
//! 7. the lease released, then the locks.

use std::sync::Arc;

use sdm_lease::Lease;
use sdm_proto::{ApiError, ErrorCode, Generation, Legality, Uuid};

use super::{check_abort, lock_for_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, LockSet, Mode};
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

/// A volume held for writing: lease and locks taken, generation checked.
pub struct Held {
    /// The domain.
    pub dom: Arc<Domain>,
    /// The volume.
    pub target: Target,
    /// Its metadata, read under the lease.
    pub md: VolumeMetadata,
    start_gen: u16,
    set_illegal: bool,
    lease: Lease,
    _locks: LockSet,
}

/// Steps 1–3.
pub fn begin(agent: &Agent, job: &Job, t: Target) -> Result<Held, AgentError> {
    let dom = agent.domain(&t.sd)?;
    read_metadata(&dom, &t.img, &t.vol)?;
    let lease = dom.acquire_volume_lease(&t.img, &t.vol)?;
    let locks = lock_for_job(
        agent,
        job,
        &[
            (domain_key(t.sd.as_str()), Mode::Shared),
            (image_key(t.sd.as_str(), t.img.as_str()), Mode::Exclusive),
        ],
    )?;
    check_abort(job)?;
    let md = read_metadata(&dom, &t.img, &t.vol)?;
    if let Some(want) = t.generation {
        if want.get() != md.generation {
            return Err(ApiError::new(
                ErrorCode::GenerationMismatch,
                format!(
                    "volume {} generation is {}, requested {}",
                    t.vol,
                    md.generation,
                    want.get()
                ),
            )
            .into());
        }
    }
    Ok(Held {
        dom,
        start_gen: md.generation,
        md,
        target: t,
        set_illegal: false,
        lease,
        _locks: locks,
    })
}

impl Held {
    /// Step 4: ILLEGAL, durably, with `change` applied to the metadata in the same write (a
    /// merge grows the base's capacity there).
    pub fn mark_illegal(
        &mut self,
        change: impl FnOnce(&mut VolumeMetadata),
    ) -> Result<(), AgentError> {
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

    /// Steps 6–7.
    pub fn finish(self) -> Result<(), AgentError> {
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
        self.lease.verify()?;
        if self.set_illegal {
            now.legality = Legality::Legal;
        }
        now.generation = Generation(self.start_gen).next().get();
        update_metadata(&self.dom, &t.img, &t.vol, &mut now)?;
        if let Err(e) = self.lease.release() {
            tracing::warn!(error = %e, "releasing the volume lease failed");
        }
        Ok(())
    }
}
