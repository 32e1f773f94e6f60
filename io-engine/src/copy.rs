//! Copy: the read→write pipeline, then fdatasync, then the optional read-back verify.

use std::io;
use std::path::Path;

use crate::checkpoint::Checkpointer;
use crate::control::{Admit, Throttle};
use crate::extents::{align_down, align_up, all_hole, is_zero, zero_runs, Extents};
use crate::io::{Done, Io, Op};
use crate::target::{FileKind, Target, DEFAULT_DIO_ALIGN};
use crate::zero::{range_of, ZeroMethod, Zeroer, ZeroerConfig};
use crate::{Control, CopyOptions, CopyReport, Engine, IoError, WipeOptions};

const OP: &str = "copy to";

/// Zero runs inside a data chunk shorter than this are written as data.
const MIN_ZERO_RUN: usize = 64 << 10;

/// Where the data path cuts a volume: multiples of this, never finer than a filesystem block,
/// so that zeroing one range never touches a block another request is writing.
pub(crate) fn seg_align(a: &Target, b: Option<&Target>) -> u64 {
    let b = b.map_or(1, |b| b.align);
    a.align.max(b).max(DEFAULT_DIO_ALIGN)
}

/// Start of the part of a `len`-byte volume that O_DIRECT cannot write (len when none).
pub(crate) fn tail_start(t: &Target, len: u64, align: u64) -> u64 {
    if t.direct && !len.is_multiple_of(align) {
        align_down(len, align)
    } else {
        len
    }
}

pub(crate) fn copy(
    engine: &Engine,
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    ctl: &Control,
) -> Result<CopyReport, IoError> {
    let s = Target::open(src, false)?;
    let mut d = Target::open(dst, true)?;
    let len = opts.length.unwrap_or(s.size);
    if len > s.size {
        return Err(IoError::invalid(
            OP,
            dst,
            format!("length {len} exceeds the source size {}", s.size),
        ));
    }
    match d.kind {
        FileKind::Regular => d.set_len(len)?,
        FileKind::Block if d.size < len => {
            return Err(IoError::invalid(
                OP,
                dst,
                format!("device holds {} bytes, {len} needed", d.size),
            ));
        }
        FileKind::Block => {}
    }
    let dst_zero =
        opts.dst_reads_zero || all_hole(&d).map_err(|e| IoError::os("SEEK_DATA on", dst, e))?;
    ctl.start(len);
    if opts.verify {
        ctl.add_total(len);
    }

    let align = seg_align(&s, Some(&d));
    // A resumed copy starts at a segment boundary; bytes below it are the destination's.
    let start = align_down(opts.start.min(len), align);
    ctl.add_done(start);
    let tail = tail_start(&d, len, align);
    let tail_fd = if tail < len { d.buffered_fd()? } else { d.fd() };
    let method = match d.kind {
        FileKind::Regular => ZeroMethod::PunchHole,
        FileKind::Block => ZeroMethod::BlkZeroOut,
    };
    let (depth, chunk) = engine.shape_for(&[&s, &d]);
    let block = s.kind == FileKind::Block || d.kind == FileKind::Block;
    // Onto or off a block device, reads and writes each get `depth` slots: a read in flight
    // never takes a write's place, so both devices keep `depth` requests busy as the ceiling
    // does (measured on LVs, docs/performance.md). Between files the `depth` slots are shared,
    // which measured as fast with half the memory. Verify reads both sides of a segment at
    // once, so it needs two slots at least.
    let (slots, read_depth) = if block {
        (2 * depth, depth)
    } else {
        (depth.max(2), depth.max(2))
    };
    let mut io = Io::new(engine.backend(), slots, chunk)?;
    if s.in_memory {
        io.run_inline(s.fd());
    }
    if d.in_memory {
        io.run_inline(d.fd());
        io.run_inline(tail_fd);
    }
    let mut c = Copier {
        src: &s,
        dst: &d,
        ctl,
        throttle: Throttle::new(),
        ext: Extents::new(&s, len, align),
        len,
        pos: start,
        chunk: chunk as u64,
        tail_start: tail,
        tail_fd,
        dst_zero,
        dst_ext: (!dst_zero).then(|| Extents::new(&d, len, align)),
        free: (0..slots).rev().collect(),
        reading: 0,
        read_depth,
        seg: vec![(0, 0); slots],
        writes: vec![0; slots],
        runs: Vec::new(),
        align,
        zero: Zeroer::new(ZeroerConfig {
            method,
            fd: d.fd(),
            tail_fd,
            tail_start: tail,
            lbs: d.lbs,
            step: WipeOptions::default().step,
            chunk: chunk as u64,
        }),
        max_zero_inflight: slots,
        checkpoints: opts
            .checkpoint
            .clone()
            .map(|h| Checkpointer::new(h, start, len)),
        report: CopyReport {
            bytes_total: len,
            bytes_read: 0,
            bytes_written: 0,
            bytes_zeroed_or_skipped: 0,
            backend: engine.backend(),
            direct_io: s.direct && d.direct,
            verified: false,
            checkpoints: Default::default(),
        },
    };
    let r = c.run(&mut io);
    let mut report = c.report;
    if let Err(e) = r {
        // Reap before the error leaves: the buffers must not outlive their requests' interest.
        let _ = io.drain();
        return Err(e);
    }
    d.sync_data()?;
    // The last checkpoint says "all of it": a crash before the caller's own end (metadata)
    // then resumes with nothing left to copy.
    if let Some(cp) = c.checkpoints.as_mut() {
        cp.finish(&d)?;
        report.checkpoints = cp.stats();
    }
    if opts.verify {
        if !d.direct {
            crate::sys::fadvise_dontneed(d.fd());
        }
        verify(&mut io, &s, &d, len, align, ctl).inspect_err(|_| {
            let _ = io.drain();
        })?;
        report.verified = true;
    }
    tracing::debug!(src = %src.display(), dst = %dst.display(), ?report, "copy done");
    Ok(report)
}

struct Copier<'a> {
    src: &'a Target,
    dst: &'a Target,
    ctl: &'a Control,
    throttle: Throttle,
    ext: Extents,
    len: u64,
    /// Next offset not yet planned.
    pos: u64,
    chunk: u64,
    tail_start: u64,
    tail_fd: std::os::fd::RawFd,
    dst_zero: bool,
    /// The destination's holes, where it is not known to read zeros as a whole.
    dst_ext: Option<Extents>,
    free: Vec<usize>,
    /// Reads in flight, at most `read_depth`; the other slots are left to writes.
    reading: usize,
    read_depth: usize,
    /// The (offset, length) each busy slot carries.
    seg: Vec<(u64, u64)>,
    /// Write requests outstanding per slot; the slot is free again at zero.
    writes: Vec<u32>,
    runs: Vec<(usize, usize, bool)>,
    align: u64,
    zero: Zeroer,
    max_zero_inflight: usize,
    checkpoints: Option<Checkpointer>,
    report: CopyReport,
}

impl Copier<'_> {
    fn run(&mut self, io: &mut Io) -> Result<(), IoError> {
        let mut done = Vec::new();
        loop {
            if self.ctl.is_aborted() {
                return Err(IoError::aborted(OP, &self.dst.path));
            }
            self.fill(io)?;
            if io.inflight() == 0 {
                if self.pos >= self.len && self.zero.is_idle() {
                    return Ok(());
                }
                continue;
            }
            io.wait(&mut done)?;
            for d in done.drain(..) {
                self.complete(io, d)?;
            }
            if self.checkpoints.as_ref().is_some_and(|c| c.due(self.pos)) {
                let durable = self.durable_prefix();
                if let Some(c) = self.checkpoints.as_mut() {
                    c.take(self.dst, self.pos, durable)?;
                }
            }
        }
    }

    /// End of the contiguous completed prefix: the lowest offset still in flight (a data
    /// segment, a zeroing queued or issued), else the next unissued one.
    fn durable_prefix(&self) -> u64 {
        let mut busy = vec![true; self.seg.len()];
        for &f in &self.free {
            busy[f] = false;
        }
        let segs = busy
            .iter()
            .zip(&self.seg)
            .filter(|(b, _)| **b)
            .map(|(_, s)| s.0);
        segs.chain(self.zero.low_water()).fold(self.pos, u64::min)
    }

    /// Issues as much work as slots and queue limits allow.
    fn fill(&mut self, io: &mut Io) -> Result<(), IoError> {
        self.zero.cap_step(self.ctl.bandwidth_limit());
        loop {
            if self.zero.inflight < self.max_zero_inflight {
                if let Some(op) = self.zero.next_op() {
                    self.zero.submit(io, op)?;
                    continue;
                }
            }
            if self.free.is_empty() || self.reading >= self.read_depth || self.pos >= self.len {
                return Ok(());
            }
            let (data, end) = self
                .ext
                .at(self.pos)
                .map_err(|e| IoError::at("SEEK_DATA on", &self.src.path, self.pos, e))?;
            let off = self.pos;
            if !data {
                self.pos = end;
                self.hole(off, end - off)?;
                continue;
            }
            let mut end = end.min(off + self.chunk);
            if off < self.tail_start && end > self.tail_start {
                end = self.tail_start;
            }
            let len = end - off;
            match self.throttle.admit(self.ctl, len, io.inflight() > 0) {
                Admit::Go => {}
                // Reap what is in flight first, so progress moves while the limit holds us.
                Admit::Later => return Ok(()),
                Admit::Aborted => return Err(IoError::aborted(OP, &self.dst.path)),
            }
            self.pos = end;
            let slot = self.free.pop().expect("checked above");
            self.seg[slot] = (off, len);
            let rlen = align_up(len, self.src.align).min(self.chunk) as usize;
            io.submit(
                0,
                Op::Read {
                    fd: self.src.fd(),
                    slot,
                    pos: 0,
                    off,
                    len: rlen,
                },
            )?;
            self.reading += 1;
        }
    }

    /// A range of the destination that must end up reading zeros. Parts that are holes in
    /// the destination already are left alone: this copy never writes into a range it hands
    /// here, so they stay zeros. That is most of a resumed copy's remainder, and on ext4 a
    /// punch waits for every O_DIRECT write in flight on the file, draining the queue.
    fn hole(&mut self, off: u64, len: u64) -> Result<(), IoError> {
        let Some(dx) = self.dst_ext.as_mut().filter(|_| !self.dst_zero) else {
            self.report.bytes_zeroed_or_skipped += len;
            self.ctl.add_done(len);
            return Ok(());
        };
        let (mut at, end) = (off, off + len);
        while at < end {
            let (data, e) = dx
                .at(at)
                .map_err(|e| IoError::at("SEEK_DATA on", &self.dst.path, at, e))?;
            let e = e.min(end);
            if data {
                self.zero.push(at, e - at);
            } else {
                self.report.bytes_zeroed_or_skipped += e - at;
                self.ctl.add_done(e - at);
            }
            at = e;
        }
        Ok(())
    }

    fn complete(&mut self, io: &mut Io, d: Done) -> Result<(), IoError> {
        match d.op {
            Op::Read { slot, off, .. } => {
                self.reading -= 1;
                let n = d
                    .res
                    .map_err(|e| IoError::at("read from", &self.src.path, off, e))?;
                let (off, len) = self.seg[slot];
                if n < len {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "source ended early");
                    return Err(IoError::at("read from", &self.src.path, off + n, e));
                }
                self.report.bytes_read += len;
                // Checked again between a read and its writes: after the process was frozen
                // (a deadline passed meanwhile) or aborted while the read was in flight, the
                // data is not written.
                if self.ctl.is_aborted() {
                    return Err(IoError::aborted(OP, &self.dst.path));
                }
                let mut runs = std::mem::take(&mut self.runs);
                zero_runs(
                    &io.buf(slot)[..len as usize],
                    self.align as usize,
                    MIN_ZERO_RUN,
                    &mut runs,
                );
                let fd = if off >= self.tail_start {
                    self.tail_fd
                } else {
                    self.dst.fd()
                };
                for &(pos, n, zero) in &runs {
                    let at = off + pos as u64;
                    if zero {
                        self.hole(at, n as u64)?;
                    } else {
                        io.submit(
                            0,
                            Op::Write {
                                fd,
                                slot,
                                pos,
                                off: at,
                                len: n,
                            },
                        )?;
                        self.writes[slot] += 1;
                    }
                }
                self.runs = runs;
                if self.writes[slot] == 0 {
                    self.free.push(slot);
                }
            }
            Op::Write { slot, off, len, .. } => {
                d.res
                    .map_err(|e| IoError::at("write to", &self.dst.path, off, e))?;
                self.report.bytes_written += len as u64;
                self.ctl.add_done(len as u64);
                self.writes[slot] -= 1;
                if self.writes[slot] == 0 {
                    self.free.push(slot);
                }
            }
            ref op => {
                let n = self
                    .zero
                    .complete(op, d.res)
                    .map_err(|e| IoError::at("zeroing", &self.dst.path, range_of(op).0, e))?;
                self.report.bytes_zeroed_or_skipped += n;
                self.ctl.add_done(n);
            }
        }
        Ok(())
    }
}

/// One verify segment in flight: which slots hold which side.
struct VSeg {
    off: u64,
    len: u64,
    src: Option<usize>,
    dst: Option<usize>,
    waiting: u8,
}

/// Reads the destination back (and the source where it has data) and compares.
fn verify(
    io: &mut Io,
    s: &Target,
    d: &Target,
    len: u64,
    align: u64,
    ctl: &Control,
) -> Result<(), IoError> {
    let chunk = io.chunk() as u64;
    let mut sx = Extents::new(s, len, align);
    let mut dx = Extents::new(d, len, align);
    // Every slot is idle again after the copy pass.
    let mut free: Vec<usize> = (0..io.slots()).rev().collect();
    let mut segs: Vec<Option<VSeg>> = Vec::new();
    let mut throttle = Throttle::new();
    let mut pos = 0;
    let mut done = Vec::new();
    loop {
        if ctl.is_aborted() {
            return Err(IoError::aborted("verify of", &d.path));
        }
        while free.len() >= 2 && pos < len {
            let (sd, se) = sx
                .at(pos)
                .map_err(|e| IoError::at("SEEK_DATA on", &s.path, pos, e))?;
            let (dd, de) = dx
                .at(pos)
                .map_err(|e| IoError::at("SEEK_DATA on", &d.path, pos, e))?;
            let off = pos;
            let seg_len = se.min(de).min(off + chunk) - off;
            if !sd && !dd {
                pos += seg_len;
                ctl.add_done(seg_len);
                continue;
            }
            match throttle.admit(ctl, seg_len, io.inflight() > 0) {
                Admit::Go => {}
                Admit::Later => break,
                Admit::Aborted => return Err(IoError::aborted("verify of", &d.path)),
            }
            pos += seg_len;
            let id = segs.iter().position(Option::is_none).unwrap_or_else(|| {
                segs.push(None);
                segs.len() - 1
            });
            let mut v = VSeg {
                off,
                len: seg_len,
                src: None,
                dst: None,
                waiting: 0,
            };
            for (is_src, has_data, t) in [(true, sd, s), (false, dd, d)] {
                if !has_data {
                    continue;
                }
                let slot = free.pop().expect("two free slots checked");
                let rlen = align_up(seg_len, t.align).min(chunk) as usize;
                io.submit(
                    id as u64,
                    Op::Read {
                        fd: t.fd(),
                        slot,
                        pos: 0,
                        off,
                        len: rlen,
                    },
                )?;
                v.waiting += 1;
                if is_src {
                    v.src = Some(slot);
                } else {
                    v.dst = Some(slot);
                }
            }
            segs[id] = Some(v);
        }
        if io.inflight() == 0 {
            if pos >= len {
                return Ok(());
            }
            continue;
        }
        io.wait(&mut done)?;
        for r in done.drain(..) {
            let Op::Read { fd, off, .. } = r.op else {
                unreachable!("verify only reads")
            };
            let path = if fd == s.fd() { &s.path } else { &d.path };
            let got = r.res.map_err(|e| IoError::at("read from", path, off, e))?;
            let id = r.tag as usize;
            let v = segs[id].as_mut().expect("live verify segment");
            if got < v.len {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early");
                return Err(IoError::at("read from", path, off + got, e));
            }
            v.waiting -= 1;
            if v.waiting > 0 {
                continue;
            }
            let v = segs[id].take().expect("checked above");
            let n = v.len as usize;
            let differs_at = match (v.src, v.dst) {
                (Some(a), Some(b)) => first_difference(&io.buf(a)[..n], &io.buf(b)[..n]),
                (Some(a), None) | (None, Some(a)) => first_nonzero(&io.buf(a)[..n]),
                (None, None) => None,
            };
            if let Some(i) = differs_at {
                return Err(IoError::VerifyMismatch {
                    src: s.path.clone(),
                    dst: d.path.clone(),
                    offset: v.off + i as u64,
                });
            }
            free.extend(v.src);
            free.extend(v.dst);
            ctl.add_done(v.len);
        }
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn first_nonzero(a: &[u8]) -> Option<usize> {
    if is_zero(a) {
        return None;
    }
    a.iter().position(|&x| x != 0)
}
