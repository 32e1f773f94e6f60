//! The conversion step of `SDM.copy_data`, with VDSM's rules (its `copy_data` job and
//! `qemuimg.convert`):
//!
//! - the destination's format is its metadata's (RAW or COW), whatever the source's;
//! - a destination **with** a parent gets only what the source volume itself allocates (zero
//!   clusters stay zero clusters), its backing file the bare parent UUID (`-B`);
//! - a destination **without** a parent gets the source's whole chain (collapse);
//! - the destination may be larger than the source (it reads zeros past the source's end),
//!   never smaller: that is refused before anything changes;
//! - qcow2 destinations are written compat 1.1 on V4/V5 domains (0.10 below);
//! - holes and zero clusters are never read or written as data, and a destination known to
//!   read zeros (the backend's `reads_zeros_when_new`) gets holes.
//!
//! RAW to RAW stays a plain copy (`Engine::copy`), and so does COW to COW of the same shape
//! (`copies_as_is`); everything else goes through
//! `Engine::convert` (native, or `qemu-img convert` with VDSM's flags where it must, e.g. to
//! copy bitmaps).

use std::path::Path;
use std::process::Command;

use sdm_proto::api::CopyDataParams;
use sdm_proto::{ApiError, Endpoint, ErrorCode, Preallocation, VolumeFormat};

use super::chain::{chain_of, image_format, layer_path, parent_of, prepare_chain};
use super::flag;
use crate::error::AgentError;
use crate::jobs::Job;
use crate::service::Agent;
use crate::storage::backend::Prepared;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::read_metadata;
use crate::storage::{qcow2, qemu};
use crate::uncached::takes_direct_io;

/// `copy_bitmaps` is for COW to COW only: refused (UnsupportedOperation) before a job is made
/// when the metadata of both volumes says otherwise. Metadata that cannot be read now is left
/// to the job, which checks again.
pub fn check_copy_bitmaps(agent: &Agent, p: &CopyDataParams) -> Result<bool, AgentError> {
    if !flag(p.copy_bitmaps) {
        return Ok(false);
    }
    let format = |e: &Endpoint| {
        agent
            .domain(&e.sd_id)
            .ok()
            .and_then(|d| read_metadata(&d, &e.img_id, &e.vol_id).ok())
            .map(|md| md.format)
    };
    for f in [format(&p.source), format(&p.destination)] {
        if f == Some(VolumeFormat::Raw) {
            return Err(bitmaps_need_cow().into());
        }
    }
    Ok(true)
}

fn bitmaps_need_cow() -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedOperation,
        "copy_bitmaps needs COW source and destination volumes",
    )
}

/// The checks of the formats and sizes, before anything changes: the destination holds the
/// source's capacity, and bitmaps are copied only between COW volumes.
pub fn check_shapes(
    src_md: &VolumeMetadata,
    dst_md: &VolumeMetadata,
    copy_bitmaps: bool,
) -> Result<(), AgentError> {
    if dst_md.capacity < src_md.capacity {
        return Err(ApiError::invalid(format!(
            "destination capacity {} is smaller than the source's {}",
            dst_md.capacity, src_md.capacity
        ))
        .into());
    }
    if copy_bitmaps && (src_md.format == VolumeFormat::Raw || dst_md.format == VolumeFormat::Raw) {
        return Err(bitmaps_need_cow().into());
    }
    Ok(())
}

/// Whether the copy converts (anything but RAW to RAW).
pub fn converts(src_md: &VolumeMetadata, dst_md: &VolumeMetadata) -> bool {
    !(src_md.format == VolumeFormat::Raw && dst_md.format == VolumeFormat::Raw)
}

/// Whether a COW to COW copy may copy the source's qcow2 file as it is, as issue 4's copy did:
/// the same capacity and allocation policy, the same parent (its backing file already names the same bare UUID), the
/// compat level the destination's domain creates, no bitmaps unless they are to be copied, and
/// nothing a byte copy could get wrong (encryption, an external data file, a corrupt image).
/// The result is what VDSM's `convert -n -B PARENT` would give — only the source's own
/// clusters, zero clusters kept, the same backing name — and it is the source's file byte for
/// byte, which an engine that verifies a disk move by `Volume.checksum` of both files relies
/// on (sdm-client does). The one difference from a conversion: clusters the source stores as
/// data that happen to hold zeros are copied as such, not turned into zero clusters.
pub fn copies_as_is(
    src: &Side<'_>,
    dst: &Side<'_>,
    copy_bitmaps: bool,
) -> Result<bool, AgentError> {
    let (s, d) = (src.md, dst.md);
    if s.format != VolumeFormat::Cow
        || d.format != VolumeFormat::Cow
        || s.capacity != d.capacity
        || s.allocation != d.allocation
        || parent_of(s)? != parent_of(d)?
    {
        return Ok(false);
    }
    let path = layer_path(src.dom, &src.ep.img_id, &src.ep.vol_id, src.data);
    let h = qcow2::summary(&path)?;
    Ok(
        h.compat == qcow2_compat(dst.dom).as_str()
            && (copy_bitmaps || !h.has_bitmaps)
            && !h.unusual,
    )
}

/// One side of a conversion.
pub struct Side<'a> {
    /// Its domain.
    pub dom: &'a Domain,
    /// The volume.
    pub ep: &'a Endpoint,
    /// Its metadata.
    pub md: &'a VolumeMetadata,
    /// The volume made usable.
    pub data: &'a Prepared,
}

/// Converts the source volume (with its chain) into the destination, as its metadata says.
/// The destination is durable when this returns; with `verify` it is compared with the source
/// through both chains (`qemu-img compare`, ImageVerificationError when they differ).
pub fn convert(
    agent: &Agent,
    job: &Job,
    src: Side<'_>,
    dst: Side<'_>,
    verify: bool,
    copy_bitmaps: bool,
) -> Result<sdm_io::ConvertReport, AgentError> {
    let chain = chain_of(src.dom, &src.ep.img_id, &src.ep.vol_id, src.md)?;
    // The top is prepared already; its parents are made usable here, as long as the copy runs.
    let below = prepare_chain(src.dom, &src.ep.img_id, &chain[1..])?;
    let mut layers = vec![sdm_io::Layer {
        path: layer_path(src.dom, &src.ep.img_id, &src.ep.vol_id, src.data),
        format: image_format(src.md.format),
    }];
    layers.extend(below.layers.iter().cloned());
    let format = match dst.md.format {
        VolumeFormat::Raw => sdm_io::DestFormat::Raw,
        VolumeFormat::Cow => sdm_io::DestFormat::Qcow2(sdm_io::Qcow2Options {
            compat: qcow2_compat(dst.dom),
            backing: backing_of(dst.dom, &dst.ep.img_id, dst.md)?,
            ..Default::default()
        }),
    };
    let has_parent = parent_of(dst.md)?.is_some();
    let dest = sdm_io::ConvertDest {
        path: layer_path(dst.dom, &dst.ep.img_id, &dst.ep.vol_id, dst.data),
        format,
        size: Some(dst.md.capacity),
        // VDSM's requires_create: a sparse RAW volume, a COW volume without parent.
        create: match dst.md.format {
            VolumeFormat::Raw => dst.md.allocation == Preallocation::Sparse,
            VolumeFormat::Cow => !has_parent,
        },
        reads_zero: dst
            .dom
            .backend
            .reads_zeros_when_new(dst.md.format, dst.md.allocation),
    };
    let opts = sdm_io::ConvertOptions {
        copy_bitmaps,
        force_qemu_img: false,
    };
    let report = agent.engine.convert(&layers, &dest, &opts, job.control())?;
    tracing::info!(
        job = %job.id(),
        converter = ?report.converter,
        top_only = report.top_only,
        written = report.bytes_written,
        skipped = report.bytes_zeroed_or_skipped,
        "converted"
    );
    if verify {
        compare(&layers[0], &dest.path, dst.md.format)?;
    }
    Ok(report)
}

/// The qcow2 version a domain's new COW volumes get (VDSM: 1.1 from domain version 4 on).
fn qcow2_compat(dom: &Domain) -> sdm_io::Qcow2Compat {
    let version: u32 = dom
        .metadata
        .get("VERSION")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    if version >= 4 {
        sdm_io::Qcow2Compat::V1_1
    } else {
        sdm_io::Qcow2Compat::V0_10
    }
}

/// The backing file a COW destination names: its parent's bare UUID and format.
fn backing_of(
    dom: &Domain,
    img: &sdm_proto::Uuid,
    md: &VolumeMetadata,
) -> Result<Option<sdm_io::BackingFile>, AgentError> {
    let Some(p) = parent_of(md)? else {
        return Ok(None);
    };
    let pmd = read_metadata(dom, img, &p)?;
    Ok(Some(sdm_io::BackingFile {
        name: p.to_string(),
        format: image_format(pmd.format),
    }))
}

/// `qemu-img compare` of the source and the destination, each through its own chain.
fn compare(src: &sdm_io::Layer, dst: &Path, dst_format: VolumeFormat) -> Result<(), AgentError> {
    // cache=none reads both sides as they are on storage, not as this host's page cache may
    // still hold them; where O_DIRECT is refused (qemu-img would fail to open) the default.
    let cache = if takes_direct_io(&src.path) && takes_direct_io(dst) {
        "none"
    } else {
        "writeback"
    };
    let mut cmd = Command::new("qemu-img");
    cmd.args([
        "compare",
        "-q",
        "-T",
        cache,
        "-f",
        src.format.as_str(),
        "-F",
    ])
    .arg(qemu::format_name(dst_format))
    .arg(&src.path)
    .arg(dst);
    qemu::die_with_parent(&mut cmd);
    let out = cmd.output().map_err(|e| {
        ApiError::new(
            ErrorCode::GeneralException,
            format!("qemu-img compare: {e}"),
        )
    })?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(ApiError::new(
            ErrorCode::ImageVerificationError,
            "the destination does not read the same as the source",
        )
        .into()),
        _ => Err(ApiError::new(
            ErrorCode::GeneralException,
            format!(
                "qemu-img compare failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verify's answer, with the cache mode it picks on the test's file system: same
    /// bytes pass, one changed byte in the last, partial sector is ImageVerificationError.
    #[test]
    fn compare_tells_equal_from_different() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipping: qemu-img missing (scripts/install-deps installs it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let data: Vec<u8> = (0..(1 << 20) + 4096).map(|i| (i % 253) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        std::fs::write(&b, &data).unwrap();
        let src = sdm_io::Layer {
            path: a,
            format: sdm_io::ImageFormat::Raw,
        };
        compare(&src, &b, VolumeFormat::Raw).unwrap();
        let mut other = data;
        *other.last_mut().unwrap() ^= 1;
        std::fs::write(&b, &other).unwrap();
        let e = ApiError::from(compare(&src, &b, VolumeFormat::Raw).unwrap_err());
        assert_eq!(e.code, ErrorCode::ImageVerificationError, "{e:?}");
    }
}
