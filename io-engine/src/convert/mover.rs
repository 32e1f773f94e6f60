//! Moving known ranges from one file to another through the engine's [`Io`]: each move is a
//! read into a pool slot (or a decode into it) followed by a write, up to the pool's depth in
//! flight, throttled and abortable. Used where the ranges are decided before any byte moves
//! (a commit: the top's allocated clusters to their places in the base).

use std::os::fd::RawFd;
use std::path::Path;

use crate::control::{Admit, Throttle};
use crate::io::{Io, Op};
use crate::{Control, IoError};

/// A file, with the descriptor to use for aligned and for unaligned requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fds {
    /// O_DIRECT when the file could be opened so; else the same as `buffered`.
    pub(crate) direct: RawFd,
    pub(crate) buffered: RawFd,
    /// What O_DIRECT needs offsets and lengths aligned to (1: no O_DIRECT).
    pub(crate) align: u64,
}

impl Fds {
    fn pick(&self, off: u64, len: usize) -> RawFd {
        if off.is_multiple_of(self.align) && (len as u64).is_multiple_of(self.align) {
            self.direct
        } else {
            self.buffered
        }
    }
}

/// Where a move's bytes come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum From {
    /// `len` bytes at `off` of the source file.
    File { off: u64 },
    /// Bytes decoded by the caller (compressed clusters), at guest offset `guest`.
    Decode { guest: u64 },
}

/// One range to move: at most the pool's chunk size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Move {
    pub(crate) from: From,
    /// Destination offset.
    pub(crate) to: u64,
    pub(crate) len: usize,
}

const WRITE: u64 = 1;

/// Fills a buffer with the guest bytes at an offset (decoding compressed clusters).
pub(crate) type Decode<'a> = &'a dyn Fn(&mut [u8], u64) -> Result<(), IoError>;

/// Runs `moves` from `src` to `dst`; `decode` fills a buffer for [`From::Decode`]. Progress
/// is counted as each write completes. Returns the bytes written.
pub(crate) fn run(
    io: &mut Io,
    moves: &[Move],
    (src, dst): (Fds, Fds),
    decode: Decode<'_>,
    ctl: &Control,
    dst_path: &Path,
) -> Result<u64, IoError> {
    let r = run_inner(io, moves, (src, dst), decode, ctl, dst_path);
    if r.is_err() {
        // Nothing may still write into the pool or the files once the caller moves on.
        let _ = io.drain();
    }
    r
}

fn run_inner(
    io: &mut Io,
    moves: &[Move],
    (src, dst): (Fds, Fds),
    decode: Decode<'_>,
    ctl: &Control,
    dst_path: &Path,
) -> Result<u64, IoError> {
    let slots = io.slots();
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut of_slot = vec![0usize; slots];
    let mut throttle = Throttle::new();
    let mut done = Vec::new();
    let (mut next, mut written) = (0usize, 0u64);
    loop {
        while next < moves.len() && !free.is_empty() {
            let m = moves[next];
            assert!(m.len <= io.chunk(), "a move is larger than a slot");
            match throttle.admit(ctl, m.len as u64, io.inflight() > 0) {
                Admit::Go => {}
                Admit::Later => break,
                Admit::Aborted => return Err(IoError::aborted("commit into", dst_path)),
            }
            let slot = free.pop().expect("checked non-empty");
            of_slot[slot] = next;
            next += 1;
            match m.from {
                From::File { off } => io.submit(
                    slot as u64 * 2,
                    Op::Read {
                        fd: src.pick(off, m.len),
                        slot,
                        pos: 0,
                        off,
                        len: m.len,
                    },
                )?,
                From::Decode { guest } => {
                    decode(&mut io.buf_mut(slot)[..m.len], guest)?;
                    submit_write(io, slot, &m, dst)?;
                }
            }
        }
        if ctl.is_aborted() {
            return Err(IoError::aborted("commit into", dst_path));
        }
        if io.inflight() == 0 {
            if next >= moves.len() {
                return Ok(written);
            }
            continue;
        }
        io.wait(&mut done)?;
        for d in done.drain(..) {
            let slot = (d.tag / 2) as usize;
            let m = moves[of_slot[slot]];
            if d.tag & WRITE == 0 {
                let n = match (d.op, d.res) {
                    (_, Ok(n)) => n,
                    (Op::Read { off, .. }, Err(e)) => {
                        return Err(IoError::at("read for a commit into", dst_path, off, e))
                    }
                    (_, Err(e)) => return Err(IoError::at("read for", dst_path, m.to, e)),
                };
                // A read stops short only at the end of the source: the rest reads zeros.
                if (n as usize) < m.len {
                    io.buf_mut(slot)[n as usize..m.len].fill(0);
                }
                submit_write(io, slot, &m, dst)?;
            } else {
                d.res
                    .map_err(|e| IoError::at("write to", dst_path, m.to, e))?;
                written += m.len as u64;
                ctl.add_done(m.len as u64);
                free.push(slot);
            }
        }
    }
}

fn submit_write(io: &mut Io, slot: usize, m: &Move, dst: Fds) -> Result<(), IoError> {
    io.submit(
        slot as u64 * 2 + WRITE,
        Op::Write {
            fd: dst.pick(m.to, m.len),
            slot,
            pos: 0,
            off: m.to,
            len: m.len,
        },
    )
}
