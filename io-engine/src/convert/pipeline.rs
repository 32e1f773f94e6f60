//! Running a plan: windows are gathered into pool slots (zeros filled in, compressed clusters
//! decoded, the rest read from the layers' files through the engine's [`Io`]), then written to
//! the destination, up to `queue_depth` windows in flight.
//!
//! What is written depends on the sink. RAW: the window's non-zero runs at the guest offset,
//! zero runs becoming holes as in a plain copy. qcow2: the window's clusters at their reserved
//! host offsets, except clusters that came out all zeros, which are marked skipped in the
//! cluster map (their L2 entries will say zero/unallocated) and never written.

use std::os::fd::RawFd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::chain::Chain;
use super::decode::{self, Decoders};
use super::layout::ClusterMap;
use super::plan::{Qcow2Plan, RawPlan, Src, Step, Window};
use super::ClusterState;
use crate::control::{Admit, Throttle};
use crate::extents::{is_zero, zero_runs};
use crate::io::{Done, Io, Op};
use crate::zero::{range_of, Zeroer};
use crate::{Control, IoError};

const OP: &str = "convert to";
/// Zero runs inside a RAW window shorter than this are written as data (as in a copy).
const MIN_ZERO_RUN: usize = 64 << 10;

pub(crate) enum Plan<'a> {
    Raw(RawPlan<'a>),
    Qcow2(Qcow2Plan<'a>),
}

impl Plan<'_> {
    fn next(&mut self) -> Result<Option<Step>, IoError> {
        match self {
            Plan::Raw(p) => p.next(),
            Plan::Qcow2(p) => p.next(),
        }
    }
}

pub(crate) enum Sink<'a> {
    Raw {
        zero: Zeroer,
        /// The destination already reads zeros where nothing is written.
        dst_zero: bool,
        fd: RawFd,
        tail_fd: RawFd,
        tail_start: u64,
        align: usize,
    },
    Qcow2 {
        map: &'a mut ClusterMap,
        /// Whether an all-zero cluster may be left unwritten (not for v2 with a backing file).
        skip_zero: bool,
        fd: RawFd,
        cluster_bits: u32,
    },
}

/// The descriptors a layer's data is read through: O_DIRECT (if any) and buffered.
#[derive(Clone, Copy)]
pub(crate) struct ReadFds {
    pub(crate) direct: RawFd,
    pub(crate) buffered: RawFd,
    pub(crate) align: u64,
}

#[derive(Default)]
struct SlotState {
    win: Option<Window>,
    reads: u32,
    writes: u32,
    /// Parts of the window a read left unfilled (the file ended): zeros, as qemu reads them.
    short: Vec<(usize, usize)>,
}

/// Counters of a run.
#[derive(Default, Debug)]
pub(crate) struct Counts {
    pub(crate) read: u64,
    pub(crate) written: u64,
    pub(crate) zeroed_or_skipped: u64,
}

pub(crate) struct Exec<'a> {
    pub(crate) chain: &'a Chain,
    pub(crate) fds: Vec<ReadFds>,
    pub(crate) ctl: &'a Control,
    pub(crate) plan: Plan<'a>,
    pub(crate) sink: Sink<'a>,
    pub(crate) dst_path: &'a std::path::Path,
    throttle: Throttle,
    pending: Option<Step>,
    planned_all: bool,
    free: Vec<usize>,
    slots: Vec<SlotState>,
    runs: Vec<(usize, usize, bool)>,
    /// Decoder threads of a run with qcow2 layers (None: compressed clusters decode inline).
    decoders: Option<Decoders>,
    pub(crate) counts: Counts,
}

impl<'a> Exec<'a> {
    pub(crate) fn new(
        chain: &'a Chain,
        fds: Vec<ReadFds>,
        ctl: &'a Control,
        plan: Plan<'a>,
        sink: Sink<'a>,
        dst_path: &'a std::path::Path,
        slots: usize,
    ) -> Exec<'a> {
        Exec {
            chain,
            fds,
            ctl,
            plan,
            sink,
            dst_path,
            throttle: Throttle::new(),
            pending: None,
            planned_all: false,
            free: (0..slots).rev().collect(),
            slots: (0..slots).map(|_| SlotState::default()).collect(),
            runs: Vec::new(),
            decoders: None,
            counts: Counts::default(),
        }
    }

    pub(crate) fn run(&mut self, io: &mut Io) -> Result<(), IoError> {
        let workers = if self.chain.layers.iter().any(|l| l.qcow2.is_some()) {
            decode::threads()
        } else {
            0
        };
        if workers <= 1 {
            return self.run_checked(io);
        }
        let (decoders, jobs, done) = decode::channels();
        let stop = AtomicBool::new(false);
        let chain = self.chain;
        std::thread::scope(|s| {
            for _ in 0..workers {
                let (jobs, done, stop) = (&jobs, done.clone(), &stop);
                s.spawn(move || decode::worker(chain, jobs, done, stop));
            }
            drop(done);
            self.decoders = Some(decoders);
            let r = self.run_checked(io);
            // Every window out with a worker comes back before the pool may go away.
            stop.store(true, Ordering::Relaxed);
            let d = self.decoders.take().expect("set above");
            for lent in d.finish() {
                io.reclaim(lent);
            }
            r
        })
    }

    fn run_checked(&mut self, io: &mut Io) -> Result<(), IoError> {
        let r = self.run_inner(io);
        if r.is_err() {
            // Reap before the error leaves: the buffers must not outlive their requests.
            let _ = io.drain();
        }
        r
    }

    /// Takes decoded windows back (waiting when nothing else can make progress) and reads
    /// the rest of each.
    fn collect_decoded(&mut self, io: &mut Io, wait: bool) -> Result<(), IoError> {
        loop {
            let Some(d) = self.decoders.as_mut() else {
                return Ok(());
            };
            let timeout = (wait && d.outstanding > 0).then_some(Duration::from_millis(50));
            let Some(got) = d.recv(timeout) else {
                return Ok(());
            };
            io.reclaim(got.lent);
            self.counts.read += got.result?;
            self.submit_reads(io, got.slot)?;
            if wait {
                return Ok(());
            }
        }
    }

    fn decoding(&self) -> bool {
        self.decoders.as_ref().is_some_and(|d| d.outstanding > 0)
    }

    fn run_inner(&mut self, io: &mut Io) -> Result<(), IoError> {
        let mut done = Vec::new();
        loop {
            if self.ctl.is_aborted() {
                return Err(IoError::aborted(OP, self.dst_path));
            }
            self.fill(io)?;
            self.collect_decoded(io, false)?;
            if io.inflight() == 0 {
                if self.decoding() {
                    self.collect_decoded(io, true)?;
                    continue;
                }
                if self.planned_all && self.zero_idle() && self.free.len() == self.slots.len() {
                    return Ok(());
                }
                continue;
            }
            io.wait(&mut done)?;
            for d in done.drain(..) {
                self.complete(io, d)?;
            }
        }
    }

    fn zero_idle(&self) -> bool {
        match &self.sink {
            Sink::Raw { zero, .. } => zero.is_idle(),
            Sink::Qcow2 { .. } => true,
        }
    }

    fn fill(&mut self, io: &mut Io) -> Result<(), IoError> {
        if let Sink::Raw { zero, .. } = &mut self.sink {
            zero.cap_step(self.ctl.bandwidth_limit());
        }
        loop {
            if let Sink::Raw { zero, .. } = &mut self.sink {
                if zero.inflight < self.slots.len() {
                    if let Some(op) = zero.next_op() {
                        zero.submit(io, op)?;
                        continue;
                    }
                }
            }
            if self.free.is_empty() || (self.planned_all && self.pending.is_none()) {
                return Ok(());
            }
            let step = match self.pending.take() {
                Some(s) => s,
                None => match self.plan.next()? {
                    Some(s) => s,
                    None => {
                        self.planned_all = true;
                        return Ok(());
                    }
                },
            };
            let win = match step {
                Step::Hole { guest, len } => {
                    self.hole(guest, len);
                    continue;
                }
                Step::Data(w) => w,
            };
            match self
                .throttle
                .admit(self.ctl, win.len as u64, io.inflight() > 0)
            {
                Admit::Go => {}
                Admit::Later => {
                    self.pending = Some(Step::Data(win));
                    return Ok(());
                }
                Admit::Aborted => return Err(IoError::aborted(OP, self.dst_path)),
            }
            self.start(io, win)?;
        }
    }

    /// A guest range that must read as zeros in the destination.
    fn hole(&mut self, guest: u64, len: u64) {
        match &mut self.sink {
            Sink::Raw {
                zero,
                dst_zero: false,
                ..
            } => zero.push(guest, len),
            _ => {
                self.counts.zeroed_or_skipped += len;
                self.ctl.add_done(len);
            }
        }
    }

    /// Fills what needs no IO (zeros, decoded clusters) and submits the reads of a window.
    fn start(&mut self, io: &mut Io, win: Window) -> Result<(), IoError> {
        let slot = self.free.pop().expect("caller checked for a free slot");
        let buf = io.buf_mut(slot);
        let mut compressed = Vec::new();
        for p in &win.pieces {
            match p.src {
                Src::Zero => buf[p.pos..p.pos + p.len].fill(0),
                Src::Decode { layer, guest } => compressed.push((p.pos, p.len, layer, guest)),
                Src::Read { .. } => {}
            }
        }
        let len = win.len;
        let st = &mut self.slots[slot];
        st.win = Some(win);
        st.reads = 0;
        st.writes = 0;
        st.short.clear();
        if compressed.is_empty() {
            return self.submit_reads(io, slot);
        }
        match self.decoders.as_mut() {
            Some(d) => {
                let lent = io.lend(slot, len);
                d.send(decode::Job {
                    slot,
                    lent,
                    pieces: compressed,
                });
                Ok(())
            }
            None => {
                self.counts.read += decode::decode(self.chain, io.buf_mut(slot), &compressed)?;
                self.submit_reads(io, slot)
            }
        }
    }

    /// Submits the reads of the window in `slot` (its other pieces are in place).
    fn submit_reads(&mut self, io: &mut Io, slot: usize) -> Result<(), IoError> {
        let win = self.slots[slot].win.take().expect("slot holds a window");
        let mut reads = 0;
        for p in &win.pieces {
            let Src::Read { layer, host } = p.src else {
                continue;
            };
            let f = self.fds[layer];
            let a = f.align;
            let aligned = host.is_multiple_of(a)
                && (p.len as u64).is_multiple_of(a)
                && (p.pos as u64).is_multiple_of(a);
            io.submit(
                slot as u64,
                Op::Read {
                    fd: if aligned { f.direct } else { f.buffered },
                    slot,
                    pos: p.pos,
                    off: host,
                    len: p.len,
                },
            )?;
            reads += 1;
        }
        let st = &mut self.slots[slot];
        st.win = Some(win);
        st.reads = reads;
        if reads == 0 {
            self.filled(io, slot)?;
        }
        Ok(())
    }

    fn complete(&mut self, io: &mut Io, d: Done) -> Result<(), IoError> {
        match d.op {
            Op::Read {
                fd,
                slot,
                pos,
                off,
                len,
            } => {
                let n = d.res.map_err(|e| {
                    let path = self.path_of(fd);
                    IoError::at("read from", path, off, e)
                })? as usize;
                self.counts.read += n as u64;
                let st = &mut self.slots[slot];
                if n < len {
                    st.short.push((pos + n, len - n));
                }
                st.reads -= 1;
                if st.reads == 0 {
                    self.filled(io, slot)?;
                }
            }
            Op::Write { slot, off, len, .. } => {
                d.res
                    .map_err(|e| IoError::at("write to", self.dst_path, off, e))?;
                self.counts.written += len as u64;
                if matches!(self.sink, Sink::Raw { .. }) {
                    self.ctl.add_done(len as u64);
                }
                self.slots[slot].writes -= 1;
                if self.slots[slot].writes == 0 {
                    self.release(slot);
                }
            }
            ref op => {
                let Sink::Raw { zero, .. } = &mut self.sink else {
                    unreachable!("only RAW destinations are zeroed")
                };
                let n = zero
                    .complete(op, d.res)
                    .map_err(|e| IoError::at("zeroing", self.dst_path, range_of(op).0, e))?;
                self.counts.zeroed_or_skipped += n;
                self.ctl.add_done(n);
            }
        }
        Ok(())
    }

    fn path_of(&self, fd: RawFd) -> &std::path::Path {
        self.fds
            .iter()
            .position(|f| f.direct == fd || f.buffered == fd)
            .map_or(self.dst_path, |i| &self.chain.layers[i].path)
    }

    /// Every piece of the window in `slot` is in place: write it out.
    fn filled(&mut self, io: &mut Io, slot: usize) -> Result<(), IoError> {
        let short = std::mem::take(&mut self.slots[slot].short);
        if !short.is_empty() {
            let buf = io.buf_mut(slot);
            for &(pos, len) in &short {
                buf[pos..pos + len].fill(0);
            }
        }
        self.slots[slot].short = short;
        let win = self.slots[slot].win.as_ref().expect("slot holds a window");
        let (guest, dst, len) = (win.guest, win.dst, win.len);
        let mut runs = std::mem::take(&mut self.runs);
        let mut writes = 0;
        match &mut self.sink {
            Sink::Raw {
                zero,
                dst_zero,
                fd,
                tail_fd,
                tail_start,
                align,
            } => {
                zero_runs(&io.buf(slot)[..len], *align, MIN_ZERO_RUN, &mut runs);
                let wfd = if dst >= *tail_start { *tail_fd } else { *fd };
                for &(pos, n, z) in &runs {
                    let at = dst + pos as u64;
                    if z {
                        if *dst_zero {
                            self.counts.zeroed_or_skipped += n as u64;
                            self.ctl.add_done(n as u64);
                        } else {
                            zero.push(at, n as u64);
                        }
                        continue;
                    }
                    io.submit(
                        slot as u64,
                        Op::Write {
                            fd: wfd,
                            slot,
                            pos,
                            off: at,
                            len: n,
                        },
                    )?;
                    writes += 1;
                }
            }
            Sink::Qcow2 {
                map,
                skip_zero,
                fd,
                cluster_bits,
            } => {
                let cs = 1usize << *cluster_bits;
                let first = guest >> *cluster_bits;
                runs.clear();
                let buf = io.buf(slot);
                for (k, c) in buf[..len].chunks(cs).enumerate() {
                    let zero = *skip_zero && is_zero(c);
                    if zero {
                        map.set(first + k as u64, ClusterState::Skipped);
                        self.counts.zeroed_or_skipped += cs as u64;
                    }
                    match runs.last_mut() {
                        Some(last) if last.2 == zero => last.1 += cs,
                        _ => runs.push((k * cs, cs, zero)),
                    }
                }
                for &(pos, n, z) in &runs {
                    if z {
                        continue;
                    }
                    io.submit(
                        slot as u64,
                        Op::Write {
                            fd: *fd,
                            slot,
                            pos,
                            off: dst + pos as u64,
                            len: n,
                        },
                    )?;
                    writes += 1;
                }
            }
        }
        self.runs = runs;
        self.slots[slot].writes = writes;
        if writes == 0 {
            self.release(slot);
        }
        Ok(())
    }

    fn release(&mut self, slot: usize) {
        let win = self.slots[slot].win.take().expect("slot holds a window");
        if matches!(self.sink, Sink::Qcow2 { .. }) {
            self.ctl.add_done(win.progress);
        }
        self.free.push(slot);
    }
}
