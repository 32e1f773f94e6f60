//! [`Io`]: the buffer pool and the request queue of one operation, over either backend.
//!
//! # Buffer ownership
//!
//! The pool is one page-aligned mapping cut into `slots` chunks plus one chunk that stays
//! zero forever (the source of zero writes). With io_uring every chunk is a registered buffer.
//!
//! A slot has a use count: each submitted request naming it adds one, its completion (reaped
//! from the kernel) removes one. While the count is non-zero nobody may touch the slot:
//! [`Io::buf`] and [`Io::buf_mut`] panic. A slot can also be *lent* to another thread (the
//! hasher); it then accepts no requests until it is reclaimed.
//!
//! `Io` is the only owner of the mapping, and its `Drop` first reaps every request still in
//! the kernel. If that fails, or a slot is still lent, the mapping is leaked rather than freed
//! under the kernel's (or the borrower's) feet.
//!
//! # Completions
//!
//! Requests carry a caller tag and come back as [`Done`] from [`Io::wait`], in any order.
//! EINTR/EAGAIN are retried and short reads/writes are continued here, so a `Done` is final:
//! a read returns fewer bytes than asked only at end of file, a write all or an error. The
//! sync backend performs each request inside `submit` and queues its `Done`, so callers run
//! the same code over both backends.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types::Fd};

use crate::sys::{self, PageBuf};
use crate::uring::Ring;
use crate::{BackendKind, IoError};

/// A request. Offsets and lengths are in bytes; `slot` indexes the pool.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// Reads `len` bytes into the slot, from `pos` bytes into it. Several reads may fill
    /// disjoint parts of one slot at once (a converter gathers a segment from many pieces).
    Read {
        fd: RawFd,
        slot: usize,
        pos: usize,
        off: u64,
        len: usize,
    },
    /// Writes `len` bytes from `pos` bytes into the slot.
    Write {
        fd: RawFd,
        slot: usize,
        pos: usize,
        off: u64,
        len: usize,
    },
    /// Write `len` zero bytes from the pool's zero chunk (`len` <= chunk size).
    WriteZeros { fd: RawFd, off: u64, len: usize },
    Fallocate {
        fd: RawFd,
        mode: i32,
        off: u64,
        len: u64,
    },
    /// BLKZEROOUT; synchronous in both backends (there is no io_uring opcode for it).
    ZeroOut { fd: RawFd, off: u64, len: u64 },
}

impl Op {
    fn len(&self) -> u64 {
        match *self {
            Op::Read { len, .. } | Op::Write { len, .. } | Op::WriteZeros { len, .. } => len as u64,
            Op::Fallocate { len, .. } | Op::ZeroOut { len, .. } => len,
        }
    }

    fn slot(&self) -> Option<usize> {
        match *self {
            Op::Read { slot, .. } | Op::Write { slot, .. } => Some(slot),
            _ => None,
        }
    }

    fn fd(&self) -> RawFd {
        match *self {
            Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::WriteZeros { fd, .. }
            | Op::Fallocate { fd, .. }
            | Op::ZeroOut { fd, .. } => fd,
        }
    }

    /// Where in its buffer the request starts.
    fn buf_pos(&self) -> usize {
        match *self {
            Op::Read { pos, .. } | Op::Write { pos, .. } => pos,
            _ => 0,
        }
    }

    fn fail_point(&self) -> &'static str {
        match self {
            Op::Read { .. } => "sdm_io::read",
            Op::Write { .. } => "sdm_io::write",
            Op::WriteZeros { .. } | Op::Fallocate { .. } | Op::ZeroOut { .. } => "sdm_io::zero",
        }
    }
}

/// A finished request: bytes transferred (reads may stop short at EOF) or the error.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) tag: u64,
    pub(crate) op: Op,
    pub(crate) res: io::Result<u64>,
}

struct Pending {
    tag: u64,
    op: Op,
    /// Bytes already transferred by earlier (short) attempts.
    done: u64,
}

/// Slot use count marking a slot lent to another thread.
const LENT: u32 = u32::MAX;

pub(crate) struct Io {
    /// Declared before the pool so that it is closed first.
    ring: Option<Ring>,
    /// io_uring backend: asynchronous requests go through `ring` (set up on first use).
    use_ring: bool,
    fixed: bool,
    pool: ManuallyDrop<PageBuf>,
    chunk: usize,
    slots: usize,
    uses: Vec<u32>,
    /// Of `uses`, the reads in flight: a slot takes more reads only while it has no writes.
    reads: Vec<u32>,
    pending: Vec<Option<Pending>>,
    free_ids: Vec<usize>,
    live: usize,
    /// Finished requests not yet returned by `wait`.
    ready: VecDeque<Done>,
    reaped: Vec<(u64, i32)>,
    /// Descriptors served by plain syscalls even with a ring (see `run_inline`).
    inline: Vec<RawFd>,
}

/// A slot's content handed to another thread; see [`Io::lend`].
pub(crate) struct Lent {
    ptr: *const u8,
    len: usize,
    slot: usize,
}

// SAFETY: a Lent is a read-only view of pool memory that Io will neither write nor free
// (nor let the kernel write) until the slot is reclaimed, so it may cross threads.
unsafe impl Send for Lent {}

impl Lent {
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len lie inside the pool; the slot is marked LENT, so Io does not reuse
        // it, and Io outlives every Lent (the hasher thread is scoped inside Io's lifetime).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The lent bytes to fill (a decoder thread writes a window into them).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; besides, the pool is a private read-write mapping and,
        // while the slot is LENT, neither Io, the kernel nor any other Lent touches these
        // bytes, so this Lent (borrowed mutably) is their only user.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

impl Io {
    /// A pool of `slots` chunks of `chunk` bytes (plus the zero chunk) over the given backend.
    ///
    /// Nothing is set up in the kernel yet: the ring and the buffer registration (which pins,
    /// and so faults in, the whole pool) wait for the first request that needs them, so that
    /// a copy of nothing but holes or a BLKZEROOUT wipe pays for neither.
    pub(crate) fn new(backend: BackendKind, slots: usize, chunk: usize) -> Result<Io, IoError> {
        let pool = PageBuf::new((slots + 1) * chunk)
            .map_err(|e| IoError::ring("buffer pool allocation", e))?;
        Ok(Io {
            ring: None,
            use_ring: backend == BackendKind::IoUring,
            fixed: false,
            pool: ManuallyDrop::new(pool),
            chunk,
            slots,
            uses: vec![0; slots + 1],
            reads: vec![0; slots + 1],
            pending: Vec::new(),
            free_ids: Vec::new(),
            live: 0,
            ready: VecDeque::new(),
            reaped: Vec::new(),
            inline: Vec::new(),
        })
    }

    /// Sets up the ring, with the pool registered as fixed buffers, on first use.
    fn ensure_ring(&mut self) -> Result<(), IoError> {
        if self.ring.is_some() {
            return Ok(());
        }
        // Room for every slot plus zeroing requests, which use no slot.
        let ring = Ring::new((2 * self.slots + 8) as u32).map_err(|e| IoError::ring("setup", e))?;
        let iov: Vec<libc::iovec> = (0..=self.slots)
            .map(|i| libc::iovec {
                iov_base: self.slot_ptr(i).cast(),
                iov_len: self.chunk,
            })
            .collect();
        // SAFETY: the iovecs cover the pool, which Io frees only after the ring is closed
        // (field order, and Drop reaps first).
        match unsafe { ring.register_buffers(&iov) } {
            Ok(()) => self.fixed = true,
            // Typically RLIMIT_MEMLOCK for unprivileged users; plain reads still work.
            Err(e) => tracing::debug!(error = %e, "buffer registration refused, using plain IO"),
        }
        self.ring = Some(ring);
        Ok(())
    }

    pub(crate) fn chunk(&self) -> usize {
        self.chunk
    }

    /// Serves `fd`, a memory-backed file (tmpfs), with plain pread/pwrite on this thread.
    ///
    /// IO there is a memory copy by the CPU with no device latency to overlap. Measured on
    /// 2 vCPUs (docs/performance.md): through the ring it costs ~40% more CPU per byte than
    /// pread/pwrite, whether completed inline or punted to io-wq workers (which only buys
    /// ~15% wall time by using a second CPU). On a hypervisor host the CPU matters more.
    pub(crate) fn run_inline(&mut self, fd: RawFd) {
        self.inline.push(fd);
    }

    /// Data slots in the pool (the zero chunk not counted).
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Requests submitted whose `Done` has not been returned yet.
    pub(crate) fn inflight(&self) -> usize {
        self.live + self.ready.len()
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        self.pool.as_ptr().wrapping_add(slot * self.chunk)
    }

    fn zero_slot(&self) -> usize {
        self.slots
    }

    /// The content of an idle slot.
    pub(crate) fn buf(&self, slot: usize) -> &[u8] {
        assert!(
            slot < self.slots && self.uses[slot] == 0,
            "slot {slot} is busy"
        );
        // SAFETY: the slot lies in the pool and no request or borrower uses it (checked above);
        // the borrow of self keeps it so.
        unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), self.chunk) }
    }

    /// The content of an idle slot, to fill before reads complete the rest of it.
    pub(crate) fn buf_mut(&mut self, slot: usize) -> &mut [u8] {
        assert!(
            slot < self.slots && self.uses[slot] == 0,
            "slot {slot} is busy"
        );
        // SAFETY: the slot lies in the pool and no request or borrower uses it (checked above);
        // the exclusive borrow of self keeps it so.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(slot), self.chunk) }
    }

    /// Hands an idle slot's first `len` bytes to another thread until [`Io::reclaim`].
    pub(crate) fn lend(&mut self, slot: usize, len: usize) -> Lent {
        assert!(slot < self.slots && self.uses[slot] == 0 && len <= self.chunk);
        self.uses[slot] = LENT;
        Lent {
            ptr: self.slot_ptr(slot),
            len,
            slot,
        }
    }

    /// Takes a lent slot back; consuming the `Lent` proves the borrower is done with it.
    pub(crate) fn reclaim(&mut self, lent: Lent) -> usize {
        assert_eq!(self.uses[lent.slot], LENT);
        self.uses[lent.slot] = 0;
        lent.slot
    }

    /// Queues a request. With the sync backend it has already run when this returns.
    pub(crate) fn submit(&mut self, tag: u64, op: Op) -> Result<(), IoError> {
        let slot = op.slot().unwrap_or(self.zero_slot());
        if let Op::Read { slot, .. } = op {
            assert!(slot < self.slots, "reads into the zero chunk");
            assert_eq!(
                self.uses[slot], self.reads[slot],
                "read into slot {slot} while it is written from"
            );
            self.reads[slot] += 1;
        }
        assert!(self.uses[slot] != LENT, "slot {slot} is lent");
        match op {
            Op::WriteZeros { len, .. } => assert!(len <= self.chunk),
            Op::Read { pos, len, .. } | Op::Write { pos, len, .. } => {
                assert!(pos + len <= self.chunk)
            }
            _ => {}
        }
        self.uses[slot] += 1;
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        self.pending[id] = Some(Pending { tag, op, done: 0 });
        self.live += 1;
        self.issue(id)
    }

    /// Issues (the rest of) request `id` until it is in the kernel or finished.
    fn issue(&mut self, id: usize) -> Result<(), IoError> {
        loop {
            let Some(p) = self.pending[id].as_ref() else {
                return Ok(());
            };
            let (op, done) = (p.op, p.done);
            let mut len = op.len() - done;
            match inject(op.fail_point()) {
                Some(Inject::Errno(e)) => {
                    if self.finish(id, -i64::from(e)) {
                        return Ok(());
                    }
                    continue;
                }
                // Half, kept 4 KiB aligned so that direct IO continues where it stopped.
                Some(Inject::Short) if len > 4096 => len = (len / 2).max(4096) & !4095,
                _ => {}
            }
            let asynchronous = !matches!(op, Op::ZeroOut { .. }) && !self.inline.contains(&op.fd());
            if asynchronous && self.use_ring {
                if let Err(e) = self.ensure_ring() {
                    // No ring, so nothing is in the kernel: fail just this request.
                    let errno = match &e {
                        IoError::Ring { source, .. } => source.raw_os_error(),
                        _ => None,
                    };
                    tracing::warn!(error = %e, "io_uring setup failed");
                    self.fail_locally(id, errno);
                    return Ok(());
                }
                // Keep the kernel's share below the completion queue size, so that no
                // completion ever overflows: one slot can carry many writes.
                while self.ring.as_ref().is_some_and(|r| !r.has_room()) {
                    self.reap_kernel()?;
                }
                let sqe = self.sqe(op, done, len).user_data(id as u64);
                if let Some(ring) = self.ring.as_mut() {
                    // SAFETY: buffers named by the entry are pool memory whose slot use count
                    // stays raised until this request's completion is reaped in wait() (or in
                    // Drop), and the pool outlives the ring. Nothing else writes a busy slot.
                    match unsafe { ring.push(&sqe) } {
                        Ok(()) => return Ok(()),
                        // Not in the kernel: finish it here, or a drain would wait forever.
                        Err(e) => {
                            self.fail_locally(id, e.raw_os_error());
                            return Ok(());
                        }
                    }
                }
            }
            let res = self.exec_sync(op, done, len);
            if self.finish(id, res) {
                return Ok(());
            }
        }
    }

    /// Finishes a request that never reached the kernel with `errno` (EIO if none, and never
    /// a retryable one, which would only bring it back here).
    fn fail_locally(&mut self, id: usize, errno: Option<i32>) {
        let errno = match errno {
            None | Some(libc::EINTR) | Some(libc::EAGAIN) => libc::EIO,
            Some(e) => e,
        };
        self.finish(id, -i64::from(errno));
    }

    fn sqe(&self, op: Op, done: u64, len: u64) -> squeue::Entry {
        let len32 = len as u32;
        match op {
            Op::Read {
                fd, slot, pos, off, ..
            } => {
                let ptr = self.slot_ptr(slot).wrapping_add(pos + done as usize);
                if self.fixed {
                    opcode::ReadFixed::new(Fd(fd), ptr, len32, slot as u16)
                        .offset(off + done)
                        .build()
                } else {
                    opcode::Read::new(Fd(fd), ptr, len32)
                        .offset(off + done)
                        .build()
                }
            }
            Op::Write { fd, off, .. } | Op::WriteZeros { fd, off, .. } => {
                let slot = op.slot().unwrap_or(self.zero_slot());
                let start = op.buf_pos() + done as usize;
                let ptr = self.slot_ptr(slot).wrapping_add(start).cast_const();
                if self.fixed {
                    opcode::WriteFixed::new(Fd(fd), ptr, len32, slot as u16)
                        .offset(off + done)
                        .build()
                } else {
                    opcode::Write::new(Fd(fd), ptr, len32)
                        .offset(off + done)
                        .build()
                }
            }
            Op::Fallocate { fd, mode, off, len } => opcode::Fallocate::new(Fd(fd), len)
                .offset(off)
                .mode(mode)
                .build(),
            Op::ZeroOut { .. } => unreachable!("BLKZEROOUT is never queued on the ring"),
        }
    }

    /// Runs one attempt synchronously; returns bytes transferred or -errno.
    fn exec_sync(&mut self, op: Op, done: u64, len: u64) -> i64 {
        let len = len as usize;
        let r = match op {
            Op::Read {
                fd, slot, pos, off, ..
            } => {
                // SAFETY: the range lies in the pool (checked in submit). Reads are submitted
                // only into a slot no write uses, each into its own part of the slot, so no
                // other request touches this range, and &mut self excludes any other borrow.
                let b = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.slot_ptr(slot).add(pos + done as usize),
                        len,
                    )
                };
                sys::pread(fd, b, off + done).map(|n| n as u64)
            }
            Op::Write { fd, off, .. } | Op::WriteZeros { fd, off, .. } => {
                let slot = op.slot().unwrap_or(self.zero_slot());
                let start = op.buf_pos() + done as usize;
                // SAFETY: the range lies in the pool. Requests in flight on this slot can only
                // be other writes, which read the buffer as this one does; nothing writes it.
                let b = unsafe { std::slice::from_raw_parts(self.slot_ptr(slot).add(start), len) };
                sys::pwrite(fd, b, off + done).map(|n| n as u64)
            }
            Op::Fallocate { fd, mode, off, len } => sys::fallocate(fd, mode, off, len).map(|_| 0),
            Op::ZeroOut { fd, off, len } => sys::blk_zeroout(fd, off, len).map(|_| 0),
        };
        match r {
            Ok(n) => n as i64,
            Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Applies one attempt's result. Returns true when the request is finished (its `Done`
    /// queued), false when the rest must be issued again.
    fn finish(&mut self, id: usize, res: i64) -> bool {
        let p = self.pending[id]
            .as_mut()
            .expect("completion for a live request");
        let total = p.op.len();
        let outcome: Option<io::Result<u64>> =
            if res == -i64::from(libc::EINTR) || res == -i64::from(libc::EAGAIN) {
                None
            } else if res < 0 {
                Some(Err(io::Error::from_raw_os_error(-res as i32)))
            } else {
                match p.op {
                    Op::Fallocate { .. } | Op::ZeroOut { .. } => Some(Ok(total)),
                    Op::Read { .. } if res == 0 => Some(Ok(p.done)),
                    Op::Write { .. } | Op::WriteZeros { .. } if res == 0 => Some(Err(
                        io::Error::new(io::ErrorKind::WriteZero, "write wrote nothing"),
                    )),
                    _ => {
                        p.done += res as u64;
                        (p.done >= total).then_some(Ok(p.done))
                    }
                }
            };
        let Some(res) = outcome else { return false };
        let p = self.pending[id].take().expect("checked above");
        self.free_ids.push(id);
        self.live -= 1;
        let slot = p.op.slot().unwrap_or(self.zero_slot());
        self.uses[slot] -= 1;
        if matches!(p.op, Op::Read { .. }) {
            self.reads[slot] -= 1;
        }
        self.ready.push_back(Done {
            tag: p.tag,
            op: p.op,
            res,
        });
        true
    }

    /// Moves finished requests into `out`, waiting for at least one if any is in flight.
    pub(crate) fn wait(&mut self, out: &mut Vec<Done>) -> Result<(), IoError> {
        while self.ready.is_empty() && self.live > 0 {
            self.reap_kernel()?;
        }
        out.extend(self.ready.drain(..));
        Ok(())
    }

    /// Waits for at least one kernel completion and applies all available ones.
    fn reap_kernel(&mut self) -> Result<(), IoError> {
        let ring = self
            .ring
            .as_mut()
            .expect("only ring requests stay in flight");
        ring.submit_and_wait()
            .map_err(|e| IoError::ring("wait", e))?;
        let mut reaped = std::mem::take(&mut self.reaped);
        ring.reap(&mut reaped);
        let mut r = Ok(());
        for &(id, res) in &reaped {
            let id = id as usize;
            if !self.finish(id, i64::from(res)) && r.is_ok() {
                r = self.issue(id);
            }
        }
        reaped.clear();
        self.reaped = reaped;
        r
    }

    /// Waits for every request in flight and discards the results (error and abort paths).
    pub(crate) fn drain(&mut self) -> Result<(), IoError> {
        let mut sink = Vec::new();
        while self.inflight() > 0 {
            self.wait(&mut sink)?;
            sink.clear();
        }
        Ok(())
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        let drained = self.drain().is_ok();
        let lent = self.uses.contains(&LENT);
        // Close the ring first: no request can reference the pool any more afterwards.
        self.ring = None;
        if drained && !lent {
            // SAFETY: nothing references the pool any more (no request in flight, ring closed,
            // no slot lent), and it is dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.pool) };
        } else {
            tracing::error!("io requests could not be reaped; leaking the buffer pool");
        }
    }
}

/// A fault injected at the IO boundary by a failpoint.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
enum Inject {
    Errno(i32),
    /// Transfer only part of the request, as a real short read/write would.
    Short,
}

#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn inject(point: &str) -> Option<Inject> {
    fail::fail_point!(point, |arg: Option<String>| Some(parse_inject(
        arg.as_deref()
    )));
    None
}

/// The `sdm_io::fsync` failpoint: an injected fdatasync failure.
#[cfg_attr(not(feature = "failpoints"), allow(clippy::unnecessary_wraps))]
pub(crate) fn inject_fsync() -> io::Result<()> {
    match inject("sdm_io::fsync") {
        Some(Inject::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        Some(Inject::Short) => Err(io::Error::from_raw_os_error(libc::EIO)),
        None => Ok(()),
    }
}

#[cfg(feature = "failpoints")]
fn parse_inject(arg: Option<&str>) -> Inject {
    let errno = match arg.map(str::trim).unwrap_or("EIO") {
        "short" => return Inject::Short,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "EINTR" => libc::EINTR,
        "EAGAIN" => libc::EAGAIN,
        "EINVAL" => libc::EINVAL,
        "EOPNOTSUPP" => libc::EOPNOTSUPP,
        "EROFS" => libc::EROFS,
        "EPERM" => libc::EPERM,
        other => other.parse().unwrap_or(libc::EIO),
    };
    Inject::Errno(errno)
}
