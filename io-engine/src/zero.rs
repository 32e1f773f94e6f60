//! Making ranges of a destination read as zeros, as cheaply as the target allows.
//!
//! Files: PUNCH_HOLE|KEEP_SIZE (keeps the copy sparse), else ZERO_RANGE. Block devices:
//! BLKZEROOUT in steps. Writing zero buffers is the last resort, and the only method a wipe
//! of a file may use, since it must overwrite the old data rather than unmap it. A method the
//! target refuses (EOPNOTSUPP and friends) is dropped for the next one and the range retried.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use crate::extents::align_down;
use crate::io::Op;

/// Fallocate requests are split so that an abort never waits on one huge request.
const FALLOCATE_STEP: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ZeroMethod {
    PunchHole,
    ZeroRange,
    BlkZeroOut,
    Write,
}

impl ZeroMethod {
    fn of(op: &Op) -> ZeroMethod {
        match op {
            Op::Fallocate { mode, .. } if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 => {
                ZeroMethod::PunchHole
            }
            Op::Fallocate { .. } => ZeroMethod::ZeroRange,
            Op::ZeroOut { .. } => ZeroMethod::BlkZeroOut,
            _ => ZeroMethod::Write,
        }
    }

    fn fallback(self) -> ZeroMethod {
        match self {
            ZeroMethod::PunchHole => ZeroMethod::ZeroRange,
            _ => ZeroMethod::Write,
        }
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

pub(crate) struct Zeroer {
    pub(crate) method: ZeroMethod,
    queue: VecDeque<(u64, u64)>,
    /// Descriptor for aligned requests (O_DIRECT when the target has it).
    fd: RawFd,
    /// Descriptor for writes at or past `tail_start`, which may be unaligned.
    tail_fd: RawFd,
    tail_start: u64,
    lbs: u64,
    step: u64,
    chunk: u64,
    /// Requests issued and not yet completed.
    pub(crate) inflight: usize,
}

pub(crate) struct ZeroerConfig {
    pub(crate) method: ZeroMethod,
    pub(crate) fd: RawFd,
    pub(crate) tail_fd: RawFd,
    pub(crate) tail_start: u64,
    pub(crate) lbs: u64,
    pub(crate) step: u64,
    pub(crate) chunk: u64,
}

impl Zeroer {
    pub(crate) fn new(c: ZeroerConfig) -> Zeroer {
        Zeroer {
            method: c.method,
            queue: VecDeque::new(),
            fd: c.fd,
            tail_fd: c.tail_fd,
            tail_start: c.tail_start,
            lbs: c.lbs,
            step: c.step.max(c.lbs),
            chunk: c.chunk,
            inflight: 0,
        }
    }

    /// Queues [off, off+len) for zeroing, merging with the previous range when adjacent.
    pub(crate) fn push(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.queue.back_mut() {
            if last.0 + last.1 == off {
                last.1 += len;
                return;
            }
        }
        self.queue.push_back((off, len));
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight == 0
    }

    /// The next request to issue, if any range is waiting.
    pub(crate) fn next_op(&mut self) -> Option<Op> {
        let &(off, len) = self.queue.front()?;
        let op = match self.method {
            ZeroMethod::PunchHole | ZeroMethod::ZeroRange => {
                let mode = if self.method == ZeroMethod::PunchHole {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                Op::Fallocate {
                    fd: self.fd,
                    mode,
                    off,
                    len: len.min(FALLOCATE_STEP),
                }
            }
            ZeroMethod::BlkZeroOut if off % self.lbs == 0 && len >= self.lbs => Op::ZeroOut {
                fd: self.fd,
                off,
                len: align_down(len.min(self.step), self.lbs),
            },
            ZeroMethod::BlkZeroOut | ZeroMethod::Write => {
                if off < self.tail_start {
                    let n = len.min(self.chunk).min(self.tail_start - off);
                    Op::WriteZeros {
                        fd: self.fd,
                        off,
                        len: n as usize,
                    }
                } else {
                    Op::WriteZeros {
                        fd: self.tail_fd,
                        off,
                        len: len.min(self.chunk) as usize,
                    }
                }
            }
        };
        let (o, n) = match op {
            Op::Fallocate { off, len, .. } | Op::ZeroOut { off, len, .. } => (off, len),
            Op::WriteZeros { off, len, .. } => (off, len as u64),
            _ => unreachable!(),
        };
        debug_assert_eq!(o, off);
        let front = self.queue.front_mut().expect("checked above");
        if n == front.1 {
            self.queue.pop_front();
        } else {
            front.0 += n;
            front.1 -= n;
        }
        self.inflight += 1;
        Some(op)
    }

    /// Accounts a finished request. Ok(bytes) when the range now reads as zeros (0 when it was
    /// requeued for a fallback method), Err when it failed for good.
    pub(crate) fn complete(&mut self, op: &Op, res: io::Result<u64>) -> io::Result<u64> {
        self.inflight -= 1;
        let (off, len) = match *op {
            Op::Fallocate { off, len, .. } | Op::ZeroOut { off, len, .. } => (off, len),
            Op::WriteZeros { off, len, .. } => (off, len as u64),
            _ => unreachable!("not a zeroing request"),
        };
        match res {
            Ok(_) => Ok(len),
            Err(e) if unsupported(&e) && ZeroMethod::of(op) != ZeroMethod::Write => {
                let used = ZeroMethod::of(op);
                if used == self.method {
                    self.method = used.fallback();
                    tracing::info!(from = ?used, to = ?self.method, error = %e, "zeroing method refused, falling back");
                }
                self.queue.push_front((off, len));
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}
