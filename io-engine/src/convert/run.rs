//! Orchestration of a conversion: checks, the native-or-qemu-img decision, then the run.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::chain::{Chain, OpenLayer};
use super::header::Header;
use super::layout::{self, ClusterMap, Layout};
use super::pipeline::{Exec, Plan, ReadFds, Sink};
use super::plan::{classify, Qcow2Plan, RawPlan};
use super::qemu_img;
use super::{
    ClusterState, ConvertDest, ConvertOptions, ConvertReport, Converter, DestFormat, ImageFormat,
    Layer, Measure, Qcow2Compat,
};
use crate::copy::{seg_align, tail_start};
use crate::extents::all_hole;
use crate::io::Io;
use crate::target::{FileKind, Target};
use crate::zero::{ZeroMethod, Zeroer, ZeroerConfig};
use crate::{Control, Engine, IoError, WipeOptions};

const OP: &str = "convert to";

/// The source, checked: headers, sizes, and whether the native path may run.
struct Checked {
    headers: Vec<Option<Header>>,
    src_size: u64,
    top_only: bool,
    /// Why qemu-img must convert, if it must.
    fallback: Option<String>,
    /// The caller's chain stops above a backing file the headers still name.
    truncated: bool,
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino(), x.rdev()) == (y.dev(), y.ino(), y.rdev()),
        _ => false,
    }
}

fn format_named(name: &str) -> Option<ImageFormat> {
    match name {
        "raw" | "file" | "host_device" => Some(ImageFormat::Raw),
        "qcow2" => Some(ImageFormat::Qcow2),
        _ => None,
    }
}

fn check(src: &[Layer], dst: &DestFormat, opts: &ConvertOptions) -> Result<Checked, IoError> {
    let Some(top) = src.first() else {
        return Err(IoError::invalid(OP, Path::new(""), "empty source chain"));
    };
    let bad = |p: &Path, why: String| IoError::invalid(OP, p, why);
    if let DestFormat::Qcow2(q) = dst {
        let cs = q.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(bad(
                top.path.as_path(),
                format!("cluster size {cs} invalid"),
            ));
        }
        if q.backing.as_ref().is_some_and(|b| b.name.is_empty()) {
            return Err(bad(top.path.as_path(), "empty backing file name".into()));
        }
    }
    if opts.copy_bitmaps && (matches!(dst, DestFormat::Raw) || top.format == ImageFormat::Raw) {
        return Err(bad(
            top.path.as_path(),
            "bitmaps can only be copied from qcow2 to qcow2".into(),
        ));
    }
    let mut headers = Vec::with_capacity(src.len());
    for (i, l) in src.iter().enumerate() {
        let h = match l.format {
            ImageFormat::Raw if i + 1 < src.len() => {
                return Err(bad(
                    &l.path,
                    "a RAW layer has no backing: it must be the last".into(),
                ));
            }
            ImageFormat::Raw => None,
            ImageFormat::Qcow2 => Some(Header::read(&l.path)?),
        };
        headers.push(h);
    }
    // The layers must be the chain the headers describe, or the two converters (and qemu
    // itself, later) would read different data.
    for i in 0..src.len().saturating_sub(1) {
        let h = headers[i]
            .as_ref()
            .expect("only qcow2 layers have a lower layer");
        let (l, next) = (&src[i], &src[i + 1]);
        let Some(name) = &h.backing_file else {
            return Err(bad(
                &l.path,
                "has no backing file, yet the chain goes on".into(),
            ));
        };
        let dir = l.path.parent().unwrap_or(Path::new("/"));
        if !same_file(&dir.join(name), &next.path) {
            return Err(bad(
                &l.path,
                format!("backing file {name:?} is not {}", next.path.display()),
            ));
        }
        if let Some(f) = &h.backing_format {
            if format_named(f) != Some(next.format) {
                return Err(bad(
                    &l.path,
                    format!(
                        "backing format {f:?}, but the layer below is {}",
                        next.format.as_str()
                    ),
                ));
            }
        }
    }
    let src_size = match &headers[0] {
        Some(h) => h.size,
        None => Target::open(&top.path, false)?.size,
    };
    let top_only = dst.backing().is_some();
    let last = headers.last().expect("non-empty");
    let truncated = last.as_ref().is_some_and(|h| h.backing_file.is_some());
    let mut fallback = None;
    if opts.force_qemu_img {
        fallback = Some("qemu-img forced by the caller".to_string());
    } else if opts.copy_bitmaps {
        fallback = Some("bitmaps are copied by qemu-img".to_string());
    } else {
        for (l, h) in src.iter().zip(&headers) {
            if let Some(why) = h.as_ref().and_then(Header::native_blocker) {
                fallback = Some(format!("{}: {why}", l.path.display()));
                break;
            }
        }
    }
    Ok(Checked {
        headers,
        src_size,
        top_only,
        fallback,
        truncated,
    })
}

fn open_chain(src: &[Layer]) -> Result<Result<Chain, String>, IoError> {
    let mut layers = Vec::with_capacity(src.len());
    for l in src {
        match OpenLayer::open(&l.path, l.format)? {
            Ok(o) => layers.push(o),
            Err(why) => return Ok(Err(why)),
        }
    }
    Ok(Ok(Chain { layers }))
}

/// The cluster map of a qcow2 destination, final except for clusters found zero later.
struct Qcow2Shape {
    map: ClusterMap,
    layout: Layout,
}

fn qcow2_shape(
    chain: &Chain,
    top_only: bool,
    q: &super::Qcow2Options,
    dst_size: u64,
    ctl: &Control,
) -> Result<(Qcow2Shape, bool), IoError> {
    let cb = q.cluster_size.trailing_zeros();
    let (mut map, mixed) = classify(chain, top_only, cb, dst_size, &|| ctl.is_aborted())?;
    let backing = q.backing.is_some();
    let v2 = q.compat == Qcow2Compat::V0_10;
    let span = (q.cluster_size / 8) as u64;
    let (mut data, mut l2, mut table_used) = (0u64, 0u64, false);
    for i in 0..map.len() {
        if i % span == 0 {
            l2 += u64::from(table_used);
            table_used = false;
        }
        let s = match map.get(i) {
            // Without a backing file unallocated reads zeros; v2 has no zero clusters.
            ClusterState::Zero if !backing => ClusterState::Unallocated,
            ClusterState::Zero if v2 => ClusterState::Data,
            s => s,
        };
        map.set(i, s);
        data += u64::from(s == ClusterState::Data);
        table_used |= s != ClusterState::Unallocated;
    }
    l2 += u64::from(table_used);
    let version = if v2 { 2 } else { 3 };
    let layout = Layout::new(cb, version, dst_size, l2, data);
    Ok((Qcow2Shape { map, layout }, mixed))
}

impl Engine {
    /// Converts the chain `src` (top first) into `dst`; see the module documentation of
    /// [`crate::convert`] for what is written and when qemu-img is used instead.
    ///
    /// The destination is durable (fdatasync) when this returns Ok. Progress counts guest
    /// bytes of the destination's virtual size.
    pub fn convert(
        &self,
        src: &[Layer],
        dst: &ConvertDest,
        opts: &ConvertOptions,
        ctl: &Control,
    ) -> Result<ConvertReport, IoError> {
        let c = check(src, &dst.format, opts)?;
        let dst_size = dest_size(dst.size, c.src_size, &dst.format);
        if dst_size < c.src_size {
            return Err(IoError::invalid(
                OP,
                &dst.path,
                format!(
                    "destination size {dst_size} is below the source's {}",
                    c.src_size
                ),
            ));
        }
        ctl.start(dst_size);
        let mut report = ConvertReport {
            converter: Converter::Native,
            top_only: c.top_only,
            virtual_size: dst_size,
            bytes_read: 0,
            bytes_written: 0,
            bytes_zeroed_or_skipped: 0,
            image_end: None,
            backend: self.backend(),
            qemu_img_args: None,
        };
        let mut reason = c.fallback.clone();
        let mut chain = None;
        if reason.is_none() {
            match open_chain(src)? {
                Ok(ch) => chain = Some(ch),
                Err(why) => reason = Some(why),
            }
        }
        if let (Some(ch), DestFormat::Qcow2(q)) = (&chain, &dst.format) {
            let (shape, mixed) = qcow2_shape(ch, c.top_only, q, dst_size, ctl)?;
            let backing_below = c.headers[0]
                .as_ref()
                .is_some_and(|h| h.backing_file.is_some());
            if c.top_only && mixed && src.len() == 1 && backing_below {
                reason = Some(
                    "destination clusters mix top data with backing data, and the chain given \
                     has no layer below the top to read it from"
                        .into(),
                );
            } else {
                report.image_end = Some(shape.layout.end());
                self.native_qcow2(ch, dst, q, shape, ctl, &mut report)?;
                return Ok(report);
            }
        }
        if let Some(ch) = chain.filter(|_| reason.is_none()) {
            self.native_raw(&ch, dst, dst_size, ctl, &mut report)?;
            return Ok(report);
        }
        let reason = reason.expect("native path not taken");
        tracing::info!(dst = %dst.path.display(), %reason, "converting with qemu-img");
        let args = qemu_img::args(&qemu_img::Job {
            src,
            pin_chain: c.truncated && !c.top_only,
            dst,
            dst_is_block: is_block(&dst.path),
            copy_bitmaps: opts.copy_bitmaps,
            rate_limit: ctl.bandwidth_limit(),
        });
        let cwd = src[0].path.parent().unwrap_or(Path::new("/"));
        qemu_img::run(&args, cwd, &dst.path, ctl)?;
        grow_after_qemu_img(dst, c.src_size, dst_size, cwd, ctl)?;
        report.converter = Converter::QemuImg { reason };
        report.qemu_img_args = Some(args);
        Ok(report)
    }

    fn native_raw(
        &self,
        chain: &Chain,
        dst: &ConvertDest,
        dst_size: u64,
        ctl: &Control,
        report: &mut ConvertReport,
    ) -> Result<(), IoError> {
        let mut d = Target::open(&dst.path, true)?;
        match d.kind {
            FileKind::Regular => {
                if dst.create {
                    d.set_len(0)?;
                }
                d.set_len(dst_size)?;
            }
            FileKind::Block if d.size < dst_size => {
                return Err(IoError::invalid(
                    OP,
                    &dst.path,
                    format!("device holds {} bytes, {dst_size} needed", d.size),
                ));
            }
            FileKind::Block => {}
        }
        let fresh = d.kind == FileKind::Regular && dst.create;
        let dst_zero = dst.reads_zero
            || fresh
            || all_hole(&d).map_err(|e| IoError::os("SEEK_DATA on", &dst.path, e))?;
        let align = seg_align(&d, None);
        let tail = tail_start(&d, dst_size, align);
        let tail_fd = if tail < dst_size {
            d.buffered_fd()?
        } else {
            d.fd()
        };
        let method = match d.kind {
            // A preallocated file keeps its blocks: zero them in place, never punch.
            FileKind::Regular if dst.create => ZeroMethod::PunchHole,
            FileKind::Regular => ZeroMethod::ZeroRange,
            FileKind::Block => ZeroMethod::BlkZeroOut,
        };
        let chunk = self.chunk_size() as u64;
        let sink = Sink::Raw {
            zero: Zeroer::new(ZeroerConfig {
                method,
                fd: d.fd(),
                tail_fd,
                tail_start: tail,
                lbs: d.lbs,
                step: WipeOptions::default().step,
                chunk,
            }),
            dst_zero,
            fd: d.fd(),
            tail_fd,
            tail_start: tail,
            align: align as usize,
        };
        let plan = Plan::Raw(RawPlan::new(chain, dst_size, tail, align, chunk));
        let mut ch_fds = read_fds(chain)?;
        let mut io = Io::new(self.backend(), self.queue_depth(), chunk as usize)?;
        inline_memory_fds(&mut io, chain, &mut ch_fds, &d, tail_fd);
        let mut ex = Exec::new(
            chain,
            ch_fds,
            ctl,
            plan,
            sink,
            &dst.path,
            self.queue_depth(),
        );
        ex.run(&mut io)?;
        d.sync_data()?;
        report.bytes_read = ex.counts.read;
        report.bytes_written = ex.counts.written;
        report.bytes_zeroed_or_skipped = ex.counts.zeroed_or_skipped;
        Ok(())
    }

    fn native_qcow2(
        &self,
        chain: &Chain,
        dst: &ConvertDest,
        q: &super::Qcow2Options,
        shape: Qcow2Shape,
        ctl: &Control,
        report: &mut ConvertReport,
    ) -> Result<(), IoError> {
        let Qcow2Shape { mut map, layout } = shape;
        let backing = q
            .backing
            .as_ref()
            .map(|b| (b.name.as_str(), b.format.as_str()));
        let header =
            layout::header(&layout, backing).map_err(|why| IoError::invalid(OP, &dst.path, why))?;
        let end = layout.end();
        let mut d = Target::open(&dst.path, true)?;
        match d.kind {
            FileKind::Regular => {
                d.set_len(0)?;
                d.set_len(end)?;
            }
            FileKind::Block if d.size < end => {
                return Err(IoError::invalid(
                    OP,
                    &dst.path,
                    format!("device holds {} bytes, the image needs {end}", d.size),
                ));
            }
            FileKind::Block => {}
        }
        let meta_fd = d.buffered_fd()?;
        // Until the header is written last, the destination is no image at all.
        crate::sys::pwrite(meta_fd, &vec![0u8; header.len()], 0)
            .map_err(|e| IoError::at("write to", &dst.path, 0, e))?;
        let cs = layout.cluster_size();
        let data_fd = if d.direct && cs % d.align == 0 {
            d.fd()
        } else {
            meta_fd
        };
        let chunk = (self.chunk_size() as u64).max(cs).next_multiple_of(cs);
        // The plan walks pass 1's map; the sink marks clusters found zero in its own copy.
        let plan_map = map.clone();
        let sink = Sink::Qcow2 {
            map: &mut map,
            skip_zero: !(q.compat == Qcow2Compat::V0_10 && backing.is_some()),
            fd: data_fd,
            cluster_bits: layout.cluster_bits,
        };
        let plan = Plan::Qcow2(Qcow2Plan::new(
            chain,
            &plan_map,
            &layout,
            layout.size,
            chunk,
        ));
        let mut fds = read_fds(chain)?;
        let mut io = Io::new(self.backend(), self.queue_depth(), chunk as usize)?;
        inline_memory_fds(&mut io, chain, &mut fds, &d, data_fd);
        let mut ex = Exec::new(chain, fds, ctl, plan, sink, &dst.path, self.queue_depth());
        ex.run(&mut io)?;
        let counts = std::mem::take(&mut ex.counts);
        drop(ex);
        layout::write_metadata(meta_fd, &layout, &map, backing)
            .map_err(|e| IoError::os("write qcow2 metadata to", &dst.path, e))?;
        d.sync_data()?;
        report.bytes_read = counts.read;
        report.bytes_written = counts.written;
        report.bytes_zeroed_or_skipped = counts.zeroed_or_skipped;
        Ok(())
    }
}

/// The destination's virtual size. qemu reads a qcow2 size in whole 512-byte sectors (and
/// drops a partial last one), so a qcow2 destination is rounded up to a sector, as
/// `qemu-img create` does.
fn dest_size(asked: Option<u64>, src_size: u64, format: &DestFormat) -> u64 {
    let size = asked.unwrap_or(src_size);
    match format {
        DestFormat::Raw => size,
        DestFormat::Qcow2(_) => size.next_multiple_of(512),
    }
}

fn is_block(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// Each layer's descriptors: O_DIRECT for aligned pieces, buffered for the rest.
fn read_fds(chain: &Chain) -> Result<Vec<ReadFds>, IoError> {
    chain
        .layers
        .iter()
        .map(|l| {
            let direct = l.target.fd();
            Ok(ReadFds {
                direct,
                buffered: l.buffered_fd,
                align: if l.target.direct {
                    l.target.align.max(512)
                } else {
                    1
                },
            })
        })
        .collect()
}

/// tmpfs files are served with plain syscalls (see `Io::run_inline`).
fn inline_memory_fds(io: &mut Io, chain: &Chain, fds: &mut [ReadFds], d: &Target, extra: i32) {
    for (l, f) in chain.layers.iter().zip(fds.iter()) {
        if l.target.in_memory {
            io.run_inline(f.direct);
            io.run_inline(f.buffered);
        }
    }
    if d.in_memory {
        io.run_inline(d.fd());
        io.run_inline(extra);
    }
}

/// qemu-img makes the destination the source's size: extend it to the size asked for.
fn grow_after_qemu_img(
    dst: &ConvertDest,
    src_size: u64,
    dst_size: u64,
    cwd: &Path,
    ctl: &Control,
) -> Result<(), IoError> {
    if dst_size <= src_size || !dst.create {
        return Ok(());
    }
    match &dst.format {
        DestFormat::Raw if !is_block(&dst.path) => std::fs::OpenOptions::new()
            .write(true)
            .open(&dst.path)
            .and_then(|f| f.set_len(dst_size))
            .map_err(|e| IoError::os("truncate", &dst.path, e)),
        DestFormat::Raw => Ok(()),
        DestFormat::Qcow2(_) => {
            let args: Vec<String> = vec![
                "resize".into(),
                "-f".into(),
                "qcow2".into(),
                dst.path.display().to_string(),
                dst_size.to_string(),
            ];
            qemu_img::run(&args, cwd, &dst.path, ctl)
        }
    }
}

impl Engine {
    /// Bytes a conversion of `src` into `format` (virtual size `size`, None: the source's)
    /// needs in the destination, like `qemu-img measure`: exact for qcow2 (the layout the
    /// native path will write; data found to be zeros can only make it smaller). Images
    /// the native path cannot read are measured by `qemu-img measure`.
    pub fn measure(
        &self,
        src: &[Layer],
        format: &DestFormat,
        size: Option<u64>,
    ) -> Result<Measure, IoError> {
        let c = check(src, format, &ConvertOptions::default())?;
        let dst_size = dest_size(size, c.src_size, format).max(c.src_size);
        let q = match format {
            DestFormat::Raw => {
                return Ok(Measure {
                    required: dst_size,
                    fully_allocated: dst_size,
                })
            }
            DestFormat::Qcow2(q) => q,
        };
        let opened = match &c.fallback {
            None => open_chain(src)?,
            Some(why) => Err(why.clone()),
        };
        let chain = match opened {
            Ok(ch) => ch,
            Err(why) => {
                tracing::info!(reason = %why, "measuring with qemu-img");
                return qemu_img::measure(&src[0], q, dst_size);
            }
        };
        let (shape, _) = qcow2_shape(&chain, c.top_only, q, dst_size, &Control::new())?;
        let cb = q.cluster_size.trailing_zeros();
        let clusters = dst_size.div_ceil(1 << cb);
        let full = Layout::new(
            cb,
            shape.layout.version,
            dst_size,
            clusters.div_ceil(shape.layout.l2_span()),
            clusters,
        );
        Ok(Measure {
            required: shape.layout.end(),
            fully_allocated: full.end(),
        })
    }
}
