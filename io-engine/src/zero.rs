//! Making ranges of a destination read as zeros, as cheaply as the target allows.
//!
//! Files: PUNCH_HOLE|KEEP_SIZE (keeps the copy sparse), else ZERO_RANGE. Block devices:
//! BLKZEROOUT in steps. Writing zero buffers is the last resort, and the only method a wipe
//! of a file may use, since it must overwrite the old data rather than unmap it. A method the
//! target refuses (EOPNOTSUPP and friends) is dropped for the next one and the range retried.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::extents::align_down;
use crate::io::{Io, Op};
use crate::IoError;

/// Fallocate requests are split so that an abort never waits on one huge request.
const FALLOCATE_STEP: u64 = 1 << 30;

/// Largest BLKZEROOUT step the adaptive sizing grows to.
pub(crate) const MAX_ZEROOUT_STEP: u64 = 1 << 30;
/// A BLKZEROOUT step quicker than this doubles the next one...
const ZEROOUT_FAST: Duration = Duration::from_millis(25);
/// ...and one slower than this halves it (never below the configured step), so that an abort
/// waits at most about this long for the step under way.
const ZEROOUT_SLOW: Duration = Duration::from_millis(250);

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

/// The byte range (offset, length) a zeroing request covers.
pub(crate) fn range_of(op: &Op) -> (u64, u64) {
    match *op {
        Op::Fallocate { off, len, .. } | Op::ZeroOut { off, len, .. } => (off, len),
        Op::WriteZeros { off, len, .. } => (off, len as u64),
        _ => unreachable!("not a zeroing request"),
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
    /// Current BLKZEROOUT size; adapts between `min_step` and [`MAX_ZEROOUT_STEP`].
    step: u64,
    min_step: u64,
    chunk: u64,
    /// Requests issued and not yet completed.
    pub(crate) inflight: usize,
    /// Start offsets of those requests (checkpoints need the lowest).
    inflight_at: Vec<u64>,
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
            min_step: c.step.max(c.lbs),
            chunk: c.chunk,
            inflight: 0,
            inflight_at: Vec::new(),
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

    /// The lowest offset not yet known to read as zeros, queued or in flight (None: idle).
    pub(crate) fn low_water(&self) -> Option<u64> {
        let queued = self.queue.iter().map(|r| r.0);
        queued.chain(self.inflight_at.iter().copied()).min()
    }

    fn landed(&mut self, off: u64) {
        self.inflight -= 1;
        if let Some(i) = self.inflight_at.iter().position(|&o| o == off) {
            self.inflight_at.swap_remove(i);
        }
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
        let (o, n) = range_of(&op);
        debug_assert_eq!(o, off);
        let front = self.queue.front_mut().expect("checked above");
        if n == front.1 {
            self.queue.pop_front();
        } else {
            front.0 += n;
            front.1 -= n;
        }
        self.inflight += 1;
        self.inflight_at.push(off);
        Some(op)
    }

    /// Returns an issued request to the queue, unissued (the throttle declined it).
    pub(crate) fn put_back(&mut self, op: &Op) {
        let (off, len) = range_of(op);
        self.landed(off);
        match self.queue.front_mut() {
            Some(front) if front.0 == off + len => {
                front.0 = off;
                front.1 += len;
            }
            _ => self.queue.push_front((off, len)),
        }
    }

    /// Submits a request from [`Zeroer::next_op`], timing BLKZEROOUT to adapt the step.
    pub(crate) fn submit(&mut self, io: &mut Io, op: Op) -> Result<(), IoError> {
        if !matches!(op, Op::ZeroOut { .. }) {
            return io.submit(0, op);
        }
        // BLKZEROOUT has no ring opcode and runs inside submit, so this is the ioctl's time.
        let started = Instant::now();
        io.submit(0, op)?;
        self.zeroout_took(started.elapsed());
        Ok(())
    }

    /// Under a bandwidth limit a step never exceeds the throttle's burst (a quarter second's
    /// worth), so that the limit paces steps rather than one huge step then a long pause.
    pub(crate) fn cap_step(&mut self, bandwidth_limit: Option<u64>) {
        if let Some(limit) = bandwidth_limit {
            self.step = self.step.min((limit / 4).max(self.min_step));
        }
    }

    /// Adapts the BLKZEROOUT step to how long the last one took.
    fn zeroout_took(&mut self, took: Duration) {
        if took < ZEROOUT_FAST {
            self.step = (self.step * 2).min(MAX_ZEROOUT_STEP.max(self.min_step));
        } else if took > ZEROOUT_SLOW {
            self.step = (self.step / 2).max(self.min_step);
        }
    }

    /// Accounts a finished request. Ok(bytes) when the range now reads as zeros (0 when it was
    /// requeued for a fallback method), Err when it failed for good.
    pub(crate) fn complete(&mut self, op: &Op, res: io::Result<u64>) -> io::Result<u64> {
        let (off, len) = range_of(op);
        self.landed(off);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn block_zeroer(step: u64) -> Zeroer {
        Zeroer::new(ZeroerConfig {
            method: ZeroMethod::BlkZeroOut,
            fd: -1,
            tail_fd: -1,
            tail_start: u64::MAX,
            lbs: 512,
            step,
            chunk: 1 << 20,
        })
    }

    fn next_len(z: &mut Zeroer) -> u64 {
        let op = z.next_op().expect("queued");
        let (_, len) = range_of(&op);
        z.complete(&op, Ok(len)).unwrap();
        len
    }

    #[test]
    fn zeroout_step_grows_when_fast_and_shrinks_when_slow() {
        let mut z = block_zeroer(32 << 20);
        z.push(0, 8 << 30);
        assert_eq!(next_len(&mut z), 32 << 20);
        z.zeroout_took(Duration::from_millis(1));
        assert_eq!(next_len(&mut z), 64 << 20);
        for _ in 0..10 {
            z.zeroout_took(Duration::from_millis(1));
        }
        assert_eq!(next_len(&mut z), MAX_ZEROOUT_STEP);
        z.zeroout_took(Duration::from_secs(1));
        assert_eq!(next_len(&mut z), MAX_ZEROOUT_STEP / 2);
        for _ in 0..20 {
            z.zeroout_took(Duration::from_secs(1));
        }
        assert_eq!(
            next_len(&mut z),
            32 << 20,
            "never below the configured step"
        );
        z.zeroout_took(Duration::from_millis(100));
        assert_eq!(next_len(&mut z), 32 << 20, "a moderate step keeps its size");
    }

    #[test]
    fn bandwidth_limit_caps_the_step() {
        let mut z = block_zeroer(1 << 20);
        z.push(0, 1 << 30);
        for _ in 0..8 {
            z.zeroout_took(Duration::from_millis(1));
        }
        z.cap_step(Some(8 << 20));
        assert_eq!(next_len(&mut z), 2 << 20);
    }

    #[test]
    fn put_back_restores_the_range() {
        let mut z = block_zeroer(1 << 20);
        z.push(0, 3 << 20);
        let op = z.next_op().unwrap();
        z.put_back(&op);
        assert_eq!(z.inflight, 0);
        assert_eq!(z.queue.iter().copied().collect::<Vec<_>>(), [(0, 3 << 20)]);
    }
}
