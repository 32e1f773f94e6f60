//! `Image.getStatus` (sdm extension): an image's state read from its domain alone — each
//! volume's legality and generation, and what the checkpoint of a copy into it says (host,
//! job, stage, percent durable, last error, age) — so that an engine can decide about a copy
//! whose host is gone without asking that host.
//!
//! Read without locks or leases: every file it reads is replaced atomically, so it sees each
//! one whole, old or new; the answer is a snapshot and may be stale by the time it arrives.

use sdm_proto::{CopyStatus, Endpoint, Generation, ImageStatus, Legality, Uuid, VolumeStatus};

use super::resume::same_or_fenced;
use crate::error::AgentError;
use crate::service::Agent;
use crate::storage::checkpoint::{now, Checkpoint};
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::read_metadata;

/// The status of every volume of `img` in `sd`.
pub fn get(agent: &Agent, sd: &Uuid, img: &Uuid) -> Result<ImageStatus, AgentError> {
    let dom = agent.domain(sd)?;
    let mut volumes = Vec::new();
    for vol in dom.backend.list_volumes(img)? {
        // A volume removed meanwhile is simply not reported.
        let Ok(md) = read_metadata(&dom, img, &vol) else {
            continue;
        };
        volumes.push(volume_status(&dom, img, vol, &md));
    }
    Ok(ImageStatus {
        sd_id: sd.clone(),
        img_id: img.clone(),
        volumes,
    })
}

fn volume_status(dom: &Domain, img: &Uuid, vol: Uuid, md: &VolumeMetadata) -> VolumeStatus {
    let mut st = VolumeStatus {
        vol_id: vol.clone(),
        legality: md.legality,
        generation: md.generation,
        copy: None,
        checkpoint_error: None,
    };
    match dom.backend.read_checkpoint(img, &vol) {
        Ok(None) => {}
        Ok(Some(raw)) => match Checkpoint::decode(&raw) {
            Ok(c) => st.copy = Some(copy_status(&c, md)),
            Err(e) => st.checkpoint_error = Some(e.to_string()),
        },
        Err(e) => st.checkpoint_error = Some(e.to_string()),
    }
    st
}

fn copy_status(c: &Checkpoint, md: &VolumeMetadata) -> CopyStatus {
    let s = &c.source;
    CopyStatus {
        host_id: c.host_id,
        job_id: c.job_id.clone(),
        stage: c.stage.0,
        stages: c.stage.1,
        percent: c.percent(),
        bytes_durable: c.durable,
        bytes_total: c.total,
        source: Endpoint::div(
            s.sd.clone(),
            s.img.clone(),
            s.vol.clone(),
            Some(Generation(s.generation)),
        ),
        last_error: c.last_error.clone(),
        age_s: now().saturating_sub(c.written_at),
        resumable: md.legality == Legality::Illegal
            && same_or_fenced(c.dst_generation, md.generation),
    }
}
