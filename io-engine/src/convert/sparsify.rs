//! Giving back the all-zero ranges of an image without changing what it reads.
//!
//! This is not what `virt-sparsify` does: that tool looks into the guest's file systems and
//! discards what they no longer use (through fstrim), changing the guest's view of free blocks.
//! Here only bytes that are zeros already are released, so every reader — the guest, a child
//! volume reading through this one, a backup — sees the same data before and after, at any
//! moment in between.
//!
//! RAW file: every whole 4 KiB block of zeros becomes a hole (`FALLOC_FL_PUNCH_HOLE`). A block
//! device has no holes (a discard does not promise zeros), so nothing is done there.
//!
//! qcow2: every allocated cluster (plain or compressed) whose guest bytes are all zeros is
//! discarded to a zero cluster through imago (the image's backing cannot show through), and
//! the host clusters it held are punched out of the file after the metadata is durable. An
//! image imago should not write (see `Header::writer_blocker`: bitmaps, internal snapshots,
//! version 2) is sparsified by `qemu-io` with the same ranges (`write -z -u`, or `discard`
//! where a v2 image has no backing file), which keeps its bitmaps as qemu keeps them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::commit::open_writable;
use super::header::Header;
use super::{Allocation, Converter, ImageFormat, Layer};
use crate::target::{FileKind, Target};
use crate::{sys, Control, Engine, IoError};

const OP: &str = "sparsify";
/// Commands per qemu-io process (its command line stays far below ARG_MAX).
const QEMU_IO_BATCH: usize = 512;

/// What a sparsify did.
#[derive(Clone, Debug)]
pub struct SparsifyReport {
    /// Native (imago + punch-hole) or qemu-io (with the reason).
    pub converter: Converter,
    /// Guest bytes found all zeros in allocated ranges and given back.
    pub bytes_given_back: u64,
    /// Bytes the file held before and after (`st_blocks` × 512; 0 for block devices).
    pub allocated_before: u64,
    /// See `allocated_before`.
    pub allocated_after: u64,
}

fn allocated(path: &Path) -> Result<u64, IoError> {
    let m = std::fs::metadata(path).map_err(|e| IoError::os("stat", path, e))?;
    Ok(if m.file_type().is_file() {
        m.blocks() * 512
    } else {
        0
    })
}

impl Engine {
    /// Gives back every all-zero range of `image` (holes in a RAW file, zero clusters in a
    /// qcow2); see the module documentation of `convert::sparsify`. What the image reads does
    /// not change. Progress counts guest bytes scanned.
    pub fn sparsify(&self, image: &Layer, ctl: &Control) -> Result<SparsifyReport, IoError> {
        let before = allocated(&image.path)?;
        let mut report = SparsifyReport {
            converter: Converter::Native,
            bytes_given_back: 0,
            allocated_before: before,
            allocated_after: before,
        };
        match image.format {
            ImageFormat::Raw => {
                let t = Target::open(&image.path, true)?;
                if t.kind == FileKind::Block {
                    ctl.start(t.size);
                    ctl.add_done(t.size);
                    return Ok(report);
                }
                drop(t);
                self.sparsify_raw(image, ctl, &mut report)?;
            }
            ImageFormat::Qcow2 => {
                let h = Header::read(&image.path)?;
                if let Some(why) = h.native_blocker() {
                    return Err(IoError::image(
                        &image.path,
                        format!("cannot be sparsified exactly: {why}"),
                    ));
                }
                self.sparsify_qcow2(image, &h, ctl, &mut report)?;
            }
        }
        report.allocated_after = allocated(&image.path)?;
        Ok(report)
    }

    fn sparsify_raw(
        &self,
        image: &Layer,
        ctl: &Control,
        report: &mut SparsifyReport,
    ) -> Result<(), IoError> {
        let data: Vec<(u64, u64)> = self
            .allocation_map(image)?
            .into_iter()
            .filter(|e| e.allocation == Allocation::Data)
            .map(|e| (e.offset, e.length))
            .collect();
        let zeros = self.zero_ranges(image, ctl)?;
        let t = Target::open(&image.path, true)?;
        for (off, len) in intersect(&zeros, &data) {
            if ctl.is_aborted() {
                return Err(IoError::aborted(OP, &image.path));
            }
            sys::fallocate(
                t.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
            .map_err(|e| IoError::at("punch a hole in", &image.path, off, e))?;
            report.bytes_given_back += len;
        }
        t.sync_data()
    }

    fn sparsify_qcow2(
        &self,
        image: &Layer,
        h: &Header,
        ctl: &Control,
        report: &mut SparsifyReport,
    ) -> Result<(), IoError> {
        let cs = 1u64 << h.cluster_bits;
        let map = self.allocation_map(image)?;
        let stored: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| matches!(e.allocation, Allocation::Data | Allocation::Compressed))
            .map(|e| (e.offset, e.length))
            .collect();
        let zeros = self.zero_ranges(image, ctl)?;
        // Whole clusters only (the image's last one may be short).
        let runs: Vec<(u64, u64)> = intersect(&zeros, &stored)
            .into_iter()
            .filter_map(|(off, len)| {
                let s = off.next_multiple_of(cs);
                let e = if off + len == h.size {
                    h.size
                } else {
                    (off + len) / cs * cs
                };
                (s < e).then(|| (s, e - s))
            })
            .collect();
        report.bytes_given_back = runs.iter().map(|r| r.1).sum();
        if runs.is_empty() {
            return Ok(());
        }
        if let Some(why) = h.writer_blocker() {
            report.converter = Converter::QemuImg {
                reason: format!("qemu-io: {why}"),
            };
            let unmap_only = h.version == 2 && h.backing_file.is_none();
            if h.version == 2 && !unmap_only {
                // v2 has no zero clusters: with a backing file nothing can be given back.
                report.bytes_given_back = 0;
                return Ok(());
            }
            return qemu_io(&image.path, &runs, unmap_only, ctl);
        }
        let mut q = match open_writable(&image.path)? {
            Ok(q) => q,
            Err(why) => {
                report.converter = Converter::QemuImg {
                    reason: format!("qemu-io: {why}"),
                };
                return qemu_io(&image.path, &runs, false, ctl);
            }
        };
        for &(off, len) in &runs {
            if ctl.is_aborted() {
                return Err(IoError::aborted(OP, &image.path));
            }
            q.discard_to_zero(off, len)
                .map_err(|e| IoError::at("discard clusters of", &image.path, off, e))?;
        }
        q.flush()
            .and_then(|()| q.sync())
            .map_err(|e| IoError::os("write qcow2 metadata to", &image.path, e))?;
        drop(q);
        // The clusters are free in the image's own metadata now: their bytes may go.
        let t = Target::open(&image.path, true)?;
        if t.kind == FileKind::Regular {
            for e in &map {
                let (Allocation::Data, Some(host)) = (e.allocation, e.host_offset) else {
                    continue;
                };
                for (off, len) in intersect(&runs, &[(e.offset, e.length)]) {
                    let at = host + (off - e.offset);
                    let len = len.next_multiple_of(cs);
                    sys::fallocate(
                        t.fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        at,
                        len,
                    )
                    .map_err(|e| IoError::at("punch a hole in", &image.path, at, e))?;
                }
            }
            t.sync_data()?;
        }
        Ok(())
    }
}

/// The overlap of two sorted lists of disjoint (offset, length) ranges.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), (a[i].0 + a[i].1).min(b[j].0 + b[j].1));
        if s < e {
            match out.last_mut() {
                Some((o, l)) if *o + *l == s => *l += e - s,
                _ => out.push((s, e - s)),
            }
        }
        if a[i].0 + a[i].1 <= b[j].0 + b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn qemu_io_bin() -> PathBuf {
    std::env::var_os("SDM_QEMU_IO").map_or_else(|| "qemu-io".into(), PathBuf::from)
}

/// Gives `runs` back through qemu-io: `write -z -u` (zero clusters, host clusters unmapped),
/// or `discard` where unallocated reads zeros (v2 without a backing file).
fn qemu_io(path: &Path, runs: &[(u64, u64)], discard: bool, ctl: &Control) -> Result<(), IoError> {
    for batch in runs.chunks(QEMU_IO_BATCH) {
        if ctl.is_aborted() {
            return Err(IoError::aborted(OP, path));
        }
        let mut cmd = Command::new(qemu_io_bin());
        cmd.args(["-d", "unmap", "-f", "qcow2"]);
        for (off, len) in batch {
            let c = if discard {
                format!("discard {off} {len}")
            } else {
                format!("write -z -u {off} {len}")
            };
            cmd.arg("-c").arg(c);
        }
        cmd.arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        sys::kill_with_parent(&mut cmd);
        let out = cmd
            .output()
            .map_err(|e| IoError::os("run qemu-io on", path, e))?;
        // qemu-io reports a failed command on stderr but may still exit 0.
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() || !err.is_empty() {
            return Err(IoError::External {
                path: path.to_owned(),
                status: out.status.to_string(),
                stderr: err,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::intersect;

    #[test]
    fn intersection_of_range_lists() {
        let a = [(0, 10), (20, 10), (40, 100)];
        let b = [(5, 20), (100, 5), (200, 1)];
        assert_eq!(intersect(&a, &b), vec![(5, 5), (20, 5), (100, 5)]);
        assert_eq!(intersect(&a, &[]), vec![]);
        assert_eq!(intersect(&[(0, 8)], &[(0, 4), (4, 4)]), vec![(0, 8)]);
    }
}
