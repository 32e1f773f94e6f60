//! The io_uring backend: ring set-up with the pool as fixed buffers, submission entries, and
//! reaping completions.

use io_uring::{opcode, squeue, types::Fd};

use crate::uring::Ring;
use crate::IoError;

use super::{Io, Op};

impl Io {
    /// Sets up the ring, with the pool registered as fixed buffers, on first use.
    pub(super) fn ensure_ring(&mut self) -> Result<(), IoError> {
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

    pub(super) fn sqe(&self, op: Op, done: u64, len: u64) -> squeue::Entry {
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

    /// Waits for at least one kernel completion and applies all available ones.
    pub(super) fn reap_kernel(&mut self) -> Result<(), IoError> {
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
}
