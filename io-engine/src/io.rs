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
//!
//! # Rooms
//!
//! This file holds the queue itself (submission, retries, completion bookkeeping, drain);
//! `op` the request and completion types, `buffers` the pool's slots and lending, `ring`
//! the io_uring backend, `sync` the synchronous fallback and `inject` the failpoints.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;

use crate::sys::PageBuf;
use crate::uring::Ring;
use crate::{BackendKind, IoError};

mod buffers;
mod inject;
mod op;
mod ring;
mod sync;

pub(crate) use buffers::Lent;
pub(crate) use inject::inject_fsync;
use inject::{inject, Inject};
use op::Pending;
pub(crate) use op::{Done, Op};

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
