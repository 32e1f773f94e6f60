//! `Volume.checksum`: SHA-256 of a volume's raw bytes (what `sha256sum` prints for the file),
//! as a job whose finished info carries the digest.

use std::sync::Arc;

use sdm_proto::api::ChecksumVolumeParams;
use sdm_proto::{ChecksumAlgorithm, JobResult};

use super::{lock_for_job, spawn_job};
use crate::error::AgentError;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::volume::read_metadata;

/// Validates and schedules a checksum (SHA-256, the only algorithm).
pub fn schedule(agent: &Arc<Agent>, p: ChecksumVolumeParams) -> Result<(), AgentError> {
    agent.domain(&p.sd_id)?;
    let ChecksumVolumeParams {
        job_id,
        sd_id: sd,
        img_id: img,
        vol_id: vol,
        ..
    } = p;
    let agent2 = agent.clone();
    spawn_job(agent, &job_id, "checksum", move |job| {
        let dom = agent2.domain(&sd)?;
        let _locks = lock_for_job(
            &agent2,
            job,
            &[
                (domain_key(sd.as_str()), Mode::Shared),
                (image_key(sd.as_str(), img.as_str()), Mode::Shared),
            ],
        )?;
        read_metadata(&dom, &img, &vol)?;
        let data = dom.backend.prepare(&img, &vol)?;
        job.mark_started();
        let checksum = agent2.engine.checksum(data.path(), job.control())?;
        Ok(Some(JobResult {
            checksum,
            algorithm: ChecksumAlgorithm::Sha256,
        }))
    })
}
