//! Copies that resume: the checkpoints a plain copy writes as it goes, and the decision, at
//! the start of the next copy into the same ILLEGAL destination (on any host), whether the
//! destination's prefix can be kept.
//!
//! A checkpoint is trusted only when all of these hold, else the copy starts from 0 and the
//! reason is logged: the record's seal is intact; it names the same source volume with the
//! same generation, capacity and format, the same destination volume, at the generation the
//! checkpoint names or that plus the fencing step (a fence changes no byte); the copy length
//! is the same;
//! and the digests it holds (the last MiB before the durable offset and spread samples) match
//! the source now *and* the destination now. Byte copies resume (RAW to RAW, and COW to COW of
//! the same shape, whose qcow2 file is copied as it is: its bytes sit at the source's offsets
//! like a RAW volume's, and the source's format is part of the record). Conversions never
//! resume: the layout writer does not place bytes at the source's offsets (see
//! docs/recovery.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sdm_io::{CheckpointHook, Checkpointed};
use sdm_proto::{Endpoint, Generation, Legality, FENCING_GENERATION_DIFF};

use crate::jobs::Job;
use crate::service::Agent;
use crate::storage::checkpoint::{digest_of, now, Checkpoint, SourceId, VERSION};
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;

/// One plain copy into a volume, as its checkpoints describe it.
pub struct CopyShape<'a> {
    /// Source volume and its metadata as read under the locks.
    pub src: (&'a Endpoint, &'a VolumeMetadata),
    /// Destination volume and its metadata before it was marked ILLEGAL by this copy.
    pub dst: (&'a Endpoint, &'a VolumeMetadata),
    /// The source's bytes, prepared.
    pub src_path: PathBuf,
    /// The destination's bytes, prepared.
    pub dst_path: PathBuf,
    /// Bytes the copy writes (the source's data length).
    pub total: u64,
    /// (k, n) of an `Image.move`; (1, 1) otherwise.
    pub stage: (u32, u32),
}

impl CopyShape<'_> {
    fn source_id(&self) -> SourceId {
        let (ep, md) = self.src;
        SourceId {
            sd: ep.sd_id.clone(),
            img: ep.img_id.clone(),
            vol: ep.vol_id.clone(),
            generation: md.generation,
            capacity: md.capacity,
            format: md.format,
        }
    }
}

/// Where the copy starts: the durable offset of a checkpoint that passed every check, else 0.
/// Any checkpoint not used is removed, so that a later resume never trusts a record that this
/// copy's writes have made stale.
pub fn start_offset(dst_dom: &Domain, shape: &CopyShape<'_>, allowed: bool) -> u64 {
    decide(dst_dom, shape, allowed).unwrap_or(0)
}

/// [`start_offset`], with the reason for a full copy (reported in the job's status).
pub fn decide(dst_dom: &Domain, shape: &CopyShape<'_>, allowed: bool) -> Result<u64, String> {
    let (dst, dst_md) = shape.dst;
    let raw = match dst_dom.backend.read_checkpoint(&dst.img_id, &dst.vol_id) {
        Ok(Some(raw)) => raw,
        Ok(None) => return Err("no checkpoint".into()),
        Err(e) => {
            tracing::warn!(vol = %dst.vol_id, error = %e, "checkpoint unreadable; full copy");
            return Err(format!("checkpoint unreadable: {e}"));
        }
    };
    let verdict = if !allowed {
        Err("resume: false was asked".to_string())
    } else if dst_md.legality != Legality::Illegal {
        Err(format!("destination is {}", dst_md.legality))
    } else {
        Checkpoint::decode(&raw)
            .map_err(|e| e.to_string())
            .and_then(|c| check(&c, shape).map(|()| c.durable))
    };
    match verdict {
        Ok(at) => {
            tracing::info!(vol = %dst.vol_id, offset = at, total = shape.total, "resuming copy from checkpoint");
            Ok(at)
        }
        Err(why) => {
            tracing::info!(vol = %dst.vol_id, reason = %why, "checkpoint not used; full copy");
            forget(dst_dom, dst);
            Err(why)
        }
    }
}

/// What the job's status says about where a copy started.
pub fn copy_start(shape: &CopyShape<'_>, decided: &Result<u64, String>) -> sdm_proto::CopyStart {
    sdm_proto::CopyStart {
        vol_id: shape.dst.0.vol_id.clone(),
        stage: shape.stage.0,
        stages: shape.stage.1,
        resumed_from: *decided.as_ref().unwrap_or(&0),
        bytes_total: shape.total,
        full_copy_reason: decided.as_ref().err().cloned(),
    }
}

/// Every check a checkpoint must pass before its prefix is kept.
fn check(c: &Checkpoint, shape: &CopyShape<'_>) -> Result<(), String> {
    let (dst, dst_md) = shape.dst;
    let src = shape.source_id();
    if c.source != src {
        return Err(format!(
            "source changed: checkpoint has {:?}, now {src:?}",
            c.source
        ));
    }
    if c.dst_vol != dst.vol_id || !same_or_fenced(c.dst_generation, dst_md.generation) {
        return Err(format!(
            "destination changed: checkpoint for {} generation {}, now {} generation {}",
            c.dst_vol, c.dst_generation, dst.vol_id, dst_md.generation
        ));
    }
    if c.total != shape.total {
        return Err(format!(
            "copy length changed: {} then, {} now",
            c.total, shape.total
        ));
    }
    for (side, path) in [
        ("source", &shape.src_path),
        ("destination", &shape.dst_path),
    ] {
        let now = digest_of(path, c.durable).map_err(|e| e.to_string())?;
        if now != c.digest {
            return Err(format!(
                "the {side}'s bytes below offset {} differ from the checkpoint's digest",
                c.durable
            ));
        }
    }
    Ok(())
}

/// Whether the destination's generation is the checkpoint's, or the checkpoint's plus the
/// fencing step (an engine fenced the lost copy: `SDM.update_volume` moves the generation
/// and touches no data byte). Any writer of the destination's bytes removes or replaces the
/// checkpoint first (`copy_data` here, in-place jobs in `ops::volume_job`), so a fence is the
/// only change a checkpoint can outlive; the digests still check the bytes.
pub fn same_or_fenced(then: u16, now: u16) -> bool {
    now == then || now == Generation(then).advance(FENCING_GENERATION_DIFF).get()
}

/// The hook the engine calls at each checkpoint: digest of the source's prefix, then the
/// record, replaced durably on the destination's domain (one that keeps checkpoints).
pub fn hook(
    agent: &Agent,
    dst_dom: Arc<Domain>,
    shape: &CopyShape<'_>,
    job: &Job,
) -> CheckpointHook {
    let (dst, dst_md) = shape.dst;
    let template = Checkpoint {
        version: VERSION,
        source: shape.source_id(),
        dst_vol: dst.vol_id.clone(),
        dst_generation: dst_md.generation,
        durable: 0,
        total: shape.total,
        digest: Default::default(),
        host_id: agent.cfg.host_id,
        job_id: job.id().clone(),
        stage: shape.stage,
        last_error: None,
        written_at: 0,
    };
    let (img, vol) = (dst.img_id.clone(), dst.vol_id.clone());
    let src_path = shape.src_path.clone();
    let call = Arc::new(move |at: Checkpointed| {
        let mut c = template.clone();
        c.durable = at.durable;
        c.written_at = now();
        c.digest = digest_of(&src_path, at.durable).map_err(std::io::Error::other)?;
        fail::fail_point!("sdm::checkpoint::before_write");
        dst_dom
            .backend
            .write_checkpoint(&img, &vol, &c.encode())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        fail::fail_point!("sdm::checkpoint::after_write");
        tracing::debug!(%vol, durable = at.durable, total = at.total, "checkpoint written");
        Ok(())
    });
    CheckpointHook {
        every: Duration::from_millis(agent.cfg.io.checkpoint_interval_ms),
        every_bytes: agent.cfg.io.checkpoint_bytes,
        call,
    }
}

/// A failed copy leaves its error in its checkpoint, for `Image.getStatus` (best effort: the
/// record is only rewritten when it is intact and is this job's).
pub fn record_failure(dst_dom: &Domain, dst: &Endpoint, job: &Job, error: &str) {
    let Ok(Some(raw)) = dst_dom.backend.read_checkpoint(&dst.img_id, &dst.vol_id) else {
        return;
    };
    let Ok(mut c) = Checkpoint::decode(&raw) else {
        return;
    };
    if &c.job_id != job.id() {
        return;
    }
    c.set_error(error);
    c.written_at = now();
    if let Err(e) = dst_dom
        .backend
        .write_checkpoint(&dst.img_id, &dst.vol_id, &c.encode())
    {
        tracing::warn!(vol = %dst.vol_id, error = %e, "recording the failure in the checkpoint failed");
    }
}

/// Removes the destination's checkpoint (it turned LEGAL, or its prefix is not to be trusted).
pub fn forget(dst_dom: &Domain, dst: &Endpoint) {
    if let Err(e) = dst_dom.backend.remove_checkpoint(&dst.img_id, &dst.vol_id) {
        tracing::warn!(vol = %dst.vol_id, error = %e, "removing the checkpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::same_or_fenced;

    #[test]
    fn a_fence_is_the_only_generation_change_a_checkpoint_outlives() {
        assert!(same_or_fenced(4, 4));
        assert!(same_or_fenced(4, 7));
        assert!(same_or_fenced(998, 1), "wraps like the agent's generations");
        assert!(!same_or_fenced(4, 5), "a finished copy");
        assert!(!same_or_fenced(4, 6));
        assert!(!same_or_fenced(4, 10));
    }
}
