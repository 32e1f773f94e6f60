//! The request an [`Io`](super::Io) takes, the completion it returns, and the bookkeeping of a
//! request in flight.

use std::io;
use std::os::fd::RawFd;

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
    pub(super) fn len(&self) -> u64 {
        match *self {
            Op::Read { len, .. } | Op::Write { len, .. } | Op::WriteZeros { len, .. } => len as u64,
            Op::Fallocate { len, .. } | Op::ZeroOut { len, .. } => len,
        }
    }

    pub(super) fn slot(&self) -> Option<usize> {
        match *self {
            Op::Read { slot, .. } | Op::Write { slot, .. } => Some(slot),
            _ => None,
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        match *self {
            Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::WriteZeros { fd, .. }
            | Op::Fallocate { fd, .. }
            | Op::ZeroOut { fd, .. } => fd,
        }
    }

    /// Where in its buffer the request starts.
    pub(super) fn buf_pos(&self) -> usize {
        match *self {
            Op::Read { pos, .. } | Op::Write { pos, .. } => pos,
            _ => 0,
        }
    }

    pub(super) fn fail_point(&self) -> &'static str {
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

pub(super) struct Pending {
    pub(super) tag: u64,
    pub(super) op: Op,
    /// Bytes already transferred by earlier (short) attempts.
    pub(super) done: u64,
}
