//! The synchronous fallback: one attempt of a request as a plain syscall on this thread.

use crate::sys;

use super::{Io, Op};

impl Io {
    /// Runs one attempt synchronously; returns bytes transferred or -errno.
    pub(super) fn exec_sync(&mut self, op: Op, done: u64, len: u64) -> i64 {
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
}
