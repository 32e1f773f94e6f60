//! `SDM.copy_data`: copy one volume's data into another, any host, crash-safe.
//!
//! Order (CONTRACT §4, reference: VDSM's copy_data and volume operation):
//! 1. in-process locks, sorted: both domains shared, destination image exclusive, source image
//!    shared when it differs;
//! 2. the destination's volume lease, exclusive, never waiting for another holder (651);
//! 3. generation check on the destination (911, nothing changed yet);
//! 4. source legality (227), the destination's capacity (at least the source's) and formats;
//! 5. destination ILLEGAL, durably, before any data byte is written — right after confirming
//!    the lease on storage and re-reading the generation;
//! 6. the copy — or the conversion to the destination's format, collapsing the source's chain
//!    when the destination has no parent (`ops::convert`) — ending durable (and an optional
//!    verify), while a watcher stops the job if the lease is lost (`lease_watch`); a byte copy
//!    (RAW to RAW, or a qcow2 file copied as it is) checkpoints as it goes and starts where a
//!    valid checkpoint of an earlier attempt says the destination is good (`ops::resume`);
//! 7. the source re-read: still LEGAL at the same generation; then one metadata write: LEGAL
//!    and generation+1 together, then the checkpoint is removed;
//! 8. release the lease, then the locks.
//!
//! A failure, abort or crash anywhere after 5 leaves the destination ILLEGAL with its old
//! generation; after 7 it is LEGAL with the new one. An engine that lost the job reads exactly
//! that (and the lease) to decide.

use std::sync::Arc;

use sdm_proto::api::CopyDataParams;
use sdm_proto::{ApiError, Endpoint, ErrorCode, Generation, JobResult, Legality, Size};

use super::lease_watch::with_watch;
use super::outcome::{before_first_write, source_unchanged, write_legal};
use super::resume::{self, CopyShape};
use super::{check_abort, convert, flag, lock_for_job, spawn_job};
use crate::error::AgentError;
use crate::jobs::Job;
use crate::locks::{domain_key, image_key, Mode};
use crate::service::Agent;
use crate::storage::backend::Prepared;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::{read_metadata, update_metadata};

/// Validated `SDM.copy_data` request.
#[derive(Clone, Debug)]
pub struct CopyRequest {
    /// Source volume.
    pub source: Endpoint,
    /// Destination volume.
    pub destination: Endpoint,
    /// Read back and compare.
    pub verify: bool,
    /// Bytes per second (None: the agent's default).
    pub bandwidth_limit: Option<u64>,
    /// Copy persistent bitmaps (COW to COW only).
    pub copy_bitmaps: bool,
    /// Continue from a valid checkpoint of an earlier attempt (default true).
    pub resume: bool,
}

/// Validates and schedules a copy.
pub fn schedule(agent: &Arc<Agent>, p: CopyDataParams) -> Result<(), AgentError> {
    let (s, d) = (&p.source, &p.destination);
    if s.sd_id == d.sd_id && s.img_id == d.img_id && s.vol_id == d.vol_id {
        return Err(ApiError::invalid("source and destination are the same volume").into());
    }
    let copy_bitmaps = convert::check_copy_bitmaps(agent, &p)?;
    let req = CopyRequest {
        source: p.source,
        destination: p.destination,
        verify: flag(p.verify),
        bandwidth_limit: p.bandwidth_limit.map(Size::get).filter(|v| *v > 0),
        copy_bitmaps,
        resume: p.resume.is_none_or(|f| f.get()),
    };
    let agent2 = agent.clone();
    spawn_job(agent, &p.job_id, "copy_data", move |job| {
        run(&agent2, job, &req)
    })
}

fn run(agent: &Agent, job: &Arc<Job>, req: &CopyRequest) -> Result<Option<JobResult>, AgentError> {
    let (src, dst) = (&req.source, &req.destination);
    let src_dom = agent.domain(&src.sd_id)?;
    let dst_dom = agent.domain(&dst.sd_id)?;

    // Step 2 before step 1: the destination's lease comes first and never waits, so a second
    // writer of the same volume fails at once with AcquireLockFailure, here or on any other
    // host. The in-process locks after it may wait (another job on the same image), but never
    // for this volume. The read before it only refuses a missing volume early; nothing it
    // says is used.
    read_metadata(&dst_dom, &dst.img_id, &dst.vol_id)?;
    fail::fail_point!("sdm::copy_data::before_lease");
    let held = dst_dom.acquire_volume_lease(&dst.img_id, &dst.vol_id)?;
    fail::fail_point!("sdm::copy_data::after_lease");
    // From here until the release, a lost lease stops the job (`lease_watch`).
    with_watch(agent, job, job.control(), &[&held], || {
        let _locks = lock_for_job(agent, job, &wanted_locks(src, dst))?;
        check_abort(job)?;

        // Re-read under the lease: another host may have written it while we waited. A failed
        // read fails the job; the read before the lease is never a stand-in for it.
        let dst_md = reread_under_lease(&dst_dom, dst)?;
        let start_gen = check_generation(dst, &dst_md)?;
        let src_md = read_metadata(&src_dom, &src.img_id, &src.vol_id)?;
        check_source(src, &src_md, &dst_md)?;
        check_abort(job)?;

        // Room for what the copy writes (a block domain grows a thin COW LV), then both
        // volumes made usable before anything is written (the backend refuses links planted
        // in a domain that lead outside it).
        let src_size = src_dom.backend.volume_size(&src.img_id, &src.vol_id)?;
        dst_dom
            .backend
            .reserve(&dst.img_id, &dst.vol_id, src_size.apparent)?;
        let src_data = src_dom.backend.prepare(&src.img_id, &src.vol_id)?;
        let dst_data = dst_dom.backend.prepare(&dst.img_id, &dst.vol_id)?;
        let byte_copy = byte_copy(
            req,
            (&src_dom, &src_md, &src_data),
            (&dst_dom, &dst_md, &dst_data),
        )?;
        let plain = byte_copy && dst_dom.backend.keeps_checkpoints();
        let shape = CopyShape {
            src: (src, &src_md),
            dst: (dst, &dst_md),
            src_path: src_data.path().to_path_buf(),
            dst_path: dst_data.path().to_path_buf(),
            total: src_size.apparent,
            stage: (1, 1),
        };
        let decided = resume::decide(&dst_dom, &shape, req.resume && plain);
        let decided = match plain {
            true => decided,
            false if dst_dom.backend.keeps_checkpoints() => {
                Err("a conversion does not resume".into())
            }
            false => Err("the destination domain keeps no checkpoints".into()),
        };
        job.note_copy_start(resume::copy_start(&shape, &decided));
        let start = decided.unwrap_or(0);
        let checkpoints = plain.then(|| resume::hook(agent, dst_dom.clone(), &shape, job));

        // From here on the destination's content is not to be trusted until the final write.
        // The first write: only with the lease confirmed on storage, and at the generation
        // checked (the wait for locks may have been long).
        let mut dst_md = before_first_write(&dst_dom, dst, start_gen, &held)?;
        dst_md.legality = Legality::Illegal;
        update_metadata(&dst_dom, &dst.img_id, &dst.vol_id, &mut dst_md)?;
        fail::fail_point!("sdm::copy_data::after_illegal");

        copy_bytes(
            agent,
            job,
            req,
            &dst_dom,
            (&src_data, &src_md),
            (&dst_data, &dst_md),
            Plan {
                byte_copy,
                start,
                checkpoint: checkpoints,
            },
        )
        .inspect_err(|e| resume::record_failure(&dst_dom, dst, job, &e.to_string()))?;
        fail::fail_point!("sdm::copy_data::before_legal");
        check_abort(job)?;
        // The source must still be what was copied (step 7 only declares that copy good).
        source_unchanged(&src_dom, src, &src_md)?;

        mark_legal(&dst_dom, dst, start_gen, &held)?;
        resume::forget(&dst_dom, dst);
        Ok(())
    })?;
    fail::fail_point!("sdm::copy_data::after_legal");
    if let Err(e) = held.release() {
        tracing::warn!(error = %e, "releasing the destination lease failed");
    }
    Ok(None)
}

/// The destination's metadata, read again now that the lease is held.
fn reread_under_lease(dom: &Domain, dst: &Endpoint) -> Result<VolumeMetadata, AgentError> {
    fail::fail_point!("sdm::copy_data::reread", |arg| Err(
        crate::storage::StorageError::io(
            "read",
            dom.backend.path(),
            std::io::Error::from_raw_os_error(if arg.as_deref() == Some("ENOENT") {
                libc::ENOENT
            } else {
                libc::EIO
            })
        )
        .into()
    ));
    Ok(read_metadata(dom, &dst.img_id, &dst.vol_id)?)
}

/// Step 1: both domains shared, the destination image exclusive, the source image shared
/// when it is another one.
fn wanted_locks(src: &Endpoint, dst: &Endpoint) -> Vec<(String, Mode)> {
    let mut wanted = vec![
        (domain_key(src.sd_id.as_str()), Mode::Shared),
        (domain_key(dst.sd_id.as_str()), Mode::Shared),
        (
            image_key(dst.sd_id.as_str(), dst.img_id.as_str()),
            Mode::Exclusive,
        ),
    ];
    if (&src.sd_id, &src.img_id) != (&dst.sd_id, &dst.img_id) {
        wanted.push((
            image_key(src.sd_id.as_str(), src.img_id.as_str()),
            Mode::Shared,
        ));
    }
    wanted
}

/// Step 3: the destination's generation is the one the engine expects (911 otherwise, with
/// nothing changed yet). Returns it.
fn check_generation(dst: &Endpoint, dst_md: &VolumeMetadata) -> Result<u16, AgentError> {
    let start_gen = dst_md.generation;
    match dst.generation {
        Some(want) if want.get() != start_gen => Err(ApiError::new(
            ErrorCode::GenerationMismatch,
            format!(
                "destination generation is {start_gen}, requested {}",
                want.get()
            ),
        )
        .into()),
        _ => Ok(start_gen),
    }
}

/// Step 4: the source is LEGAL (227 otherwise), and the destination can hold it (its
/// capacity is at least the source's; formats may differ, see `ops::convert`).
fn check_source(
    src: &Endpoint,
    src_md: &VolumeMetadata,
    dst_md: &VolumeMetadata,
) -> Result<(), AgentError> {
    if src_md.legality != Legality::Legal {
        return Err(ApiError::new(
            ErrorCode::prepareIllegalVolumeError,
            format!("source volume {} is {}", src.vol_id, src_md.legality),
        )
        .into());
    }
    convert::check_shapes(src_md, dst_md, false)
}

/// Whether the copy is a byte copy: RAW to RAW, or COW to COW of the same shape, whose qcow2
/// file is copied as it is (`convert::copies_as_is`). Every byte then lands at its source
/// offset, so a durable prefix of an earlier attempt is still right (the copy may resume);
/// a conversion's layout writer places clusters where its own allocation order puts them and
/// keeps its tables in memory until the end, so its output has no such prefix.
fn byte_copy(
    req: &CopyRequest,
    (src_dom, src_md, src_data): (&Domain, &VolumeMetadata, &Prepared),
    (dst_dom, dst_md, dst_data): (&Domain, &VolumeMetadata, &Prepared),
) -> Result<bool, AgentError> {
    if !convert::converts(src_md, dst_md) {
        return Ok(true);
    }
    let side = |dom, ep, md, data| convert::Side { dom, ep, md, data };
    convert::copies_as_is(
        &side(src_dom, &req.source, src_md, src_data),
        &side(dst_dom, &req.destination, dst_md, dst_data),
        req.copy_bitmaps,
    )
}

/// How step 6 copies: byte for byte or converting, from where, with which checkpoints.
struct Plan {
    /// [`byte_copy`]'s answer.
    byte_copy: bool,
    /// The resume offset (0: from the start).
    start: u64,
    /// Checkpoints to write as the copy goes.
    checkpoint: Option<sdm_io::CheckpointHook>,
}

/// Step 6: the bytes, through the data path, ending durable. A byte copy ([`byte_copy`]) is
/// a plain copy (with a read-back when asked) after which a larger RAW destination grows to
/// its capacity; any other pair is converted to the destination's format, collapsing the
/// source's chain when the destination has no parent (`ops::convert`).
fn copy_bytes(
    agent: &Agent,
    job: &Job,
    req: &CopyRequest,
    dst_dom: &Domain,
    (src_data, src_md): (&Prepared, &VolumeMetadata),
    (dst_data, dst_md): (&Prepared, &VolumeMetadata),
    plan: Plan,
) -> Result<(), AgentError> {
    let dst = &req.destination;
    let ctl = job.control();
    ctl.set_bandwidth_limit(
        req.bandwidth_limit
            .or_else(|| nonzero(agent.cfg.io.bandwidth_limit)),
    );
    job.mark_started();
    if !plan.byte_copy {
        let src_dom = agent.domain(&req.source.sd_id)?;
        let side = |dom, ep, md, data| convert::Side { dom, ep, md, data };
        let (s, d) = (
            side(&src_dom, &req.source, src_md, src_data),
            side(dst_dom, dst, dst_md, dst_data),
        );
        convert::convert(agent, job, s, d, req.verify, req.copy_bitmaps)?;
        return Ok(());
    }
    if convert::converts(src_md, dst_md) {
        tracing::info!(job = %job.id(), "COW to COW of the same shape: the qcow2 file is copied as it is");
    }
    let opts = sdm_io::CopyOptions {
        verify: req.verify,
        start: plan.start,
        checkpoint: plan.checkpoint,
        ..Default::default()
    };
    let r = agent
        .engine
        .copy(src_data.path(), dst_data.path(), &opts, ctl)?;
    tracing::info!(
        vol = %dst.vol_id,
        resumed_from = plan.start,
        bytes_read = r.bytes_read,
        bytes_written = r.bytes_written,
        checkpoints = r.checkpoints.count,
        checkpoint_work_ms = r.checkpoints.work.as_millis() as u64,
        checkpoint_blocked_ms = r.checkpoints.blocked.as_millis() as u64,
        "copy finished"
    );
    if dst_md.capacity > src_md.capacity {
        dst_dom
            .backend
            .grow_raw(&dst.img_id, &dst.vol_id, dst_md.capacity)?;
    }
    Ok(())
}

/// Step 7: the data is durable; make the outcome durable in one write, LEGAL and generation+1
/// together. Re-checks first that nobody fenced the volume meanwhile (a fence needs this lease,
/// so this is belt and braces), and that the lease is still ours: only its holder may declare
/// the data good. A failed directory fsync after the write landed is settled by what the disk
/// says (`outcome::write_legal`).
fn mark_legal(
    dst_dom: &Domain,
    dst: &Endpoint,
    start_gen: u16,
    held: &sdm_lease::Lease,
) -> Result<(), AgentError> {
    let mut now = read_metadata(dst_dom, &dst.img_id, &dst.vol_id)?;
    if now.generation != start_gen {
        return Err(ApiError::new(
            ErrorCode::GenerationMismatch,
            format!(
                "destination generation changed to {} during the copy",
                now.generation
            ),
        )
        .into());
    }
    held.verify()?;
    now.legality = Legality::Legal;
    now.generation = Generation(start_gen).next().get();
    write_legal(dst_dom, &dst.img_id, &dst.vol_id, &mut now)
}

fn nonzero(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}
