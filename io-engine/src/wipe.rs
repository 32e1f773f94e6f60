//! Wipe: overwrite a whole volume with zeros, durably.
//!
//! Block devices get BLKZEROOUT in steps, so that progress moves and an abort is seen between
//! steps. The step starts at `step` (32 MiB) and grows while steps finish quickly (devices that
//! zero by unmapping or WRITE SAME do a step in microseconds, and then the per-ioctl cost is
//! all there is), so each step's time, not its size, bounds the abort delay. Files get real
//! zero writes over every allocated extent: unmapping (punch hole, ZERO_RANGE) would leave the
//! old data on the medium. Holes hold no data and are skipped.

use std::path::Path;

use crate::control::{Admit, Throttle};
use crate::copy::{seg_align, tail_start};
use crate::extents::Extents;
use crate::io::Io;
use crate::sys;
use crate::target::{FileKind, Target};
use crate::zero::{range_of, ZeroMethod, Zeroer, ZeroerConfig};
use crate::{Control, Engine, IoError, WipeOptions, WipeReport};

const OP: &str = "wipe of";

pub(crate) fn wipe(
    engine: &Engine,
    path: &Path,
    opts: &WipeOptions,
    ctl: &Control,
) -> Result<WipeReport, IoError> {
    let mut t = Target::open(path, true)?;
    if opts.step == 0 {
        return Err(IoError::invalid(OP, path, "step must be positive"));
    }
    let len = t.size;
    ctl.start(len);
    let align = seg_align(&t, None);
    let tail = tail_start(&t, len, align);
    let tail_fd = if tail < len { t.buffered_fd()? } else { t.fd() };
    let method = match t.kind {
        FileKind::Regular => ZeroMethod::Write,
        FileKind::Block => ZeroMethod::BlkZeroOut,
    };
    let chunk = engine.chunk_size();
    // Zero writes all come from the one zero chunk: no data slots needed.
    let mut io = Io::new(engine.backend(), 0, chunk)?;
    if t.in_memory {
        io.run_inline(t.fd());
        io.run_inline(tail_fd);
    }
    let mut zero = Zeroer::new(ZeroerConfig {
        method,
        fd: t.fd(),
        tail_fd,
        tail_start: tail,
        lbs: t.lbs,
        step: opts.step,
        chunk: chunk as u64,
    });
    let mut report = WipeReport {
        bytes_total: len,
        bytes_zeroed: 0,
        bytes_skipped: 0,
        discarded: false,
        backend: engine.backend(),
        direct_io: t.direct,
    };
    let mut ext = Extents::new(&t, len, align);
    let r = run(
        &mut io,
        &t,
        &mut ext,
        &mut zero,
        engine.queue_depth(),
        ctl,
        &mut report,
    );
    if let Err(e) = r {
        let _ = io.drain();
        return Err(e);
    }
    t.sync_data()?;
    if opts.discard {
        report.discarded = discard(&t, len);
    }
    tracing::debug!(path = %path.display(), ?report, "wipe done");
    Ok(report)
}

fn run(
    io: &mut Io,
    t: &Target,
    ext: &mut Extents,
    zero: &mut Zeroer,
    depth: usize,
    ctl: &Control,
    report: &mut WipeReport,
) -> Result<(), IoError> {
    let mut throttle = Throttle::new();
    let mut pos = 0;
    let len = t.size;
    let mut done = Vec::new();
    loop {
        if ctl.is_aborted() {
            return Err(IoError::aborted(OP, &t.path));
        }
        zero.cap_step(ctl.bandwidth_limit());
        while zero.inflight < depth {
            if let Some(op) = zero.next_op() {
                let (_, n) = range_of(&op);
                match throttle.admit(ctl, n, io.inflight() > 0) {
                    Admit::Go => {}
                    Admit::Later => {
                        // Reap first so that progress moves; the request goes out next round.
                        zero.put_back(&op);
                        break;
                    }
                    Admit::Aborted => {
                        zero.put_back(&op);
                        return Err(IoError::aborted(OP, &t.path));
                    }
                }
                zero.submit(io, op)?;
                continue;
            }
            if pos >= len {
                break;
            }
            let (data, end) = ext
                .at(pos)
                .map_err(|e| IoError::at("SEEK_DATA on", &t.path, pos, e))?;
            if data {
                zero.push(pos, end - pos);
            } else {
                report.bytes_skipped += end - pos;
                ctl.add_done(end - pos);
            }
            pos = end;
        }
        if io.inflight() == 0 {
            if pos >= len && zero.is_idle() {
                return Ok(());
            }
            continue;
        }
        io.wait(&mut done)?;
        for d in done.drain(..) {
            let (off, _) = range_of(&d.op);
            let n = zero
                .complete(&d.op, d.res)
                .map_err(|e| IoError::at("zeroing", &t.path, off, e))?;
            report.bytes_zeroed += n;
            ctl.add_done(n);
        }
    }
}

/// Best-effort unmap after the zeroing; failures are logged, never fatal.
fn discard(t: &Target, len: u64) -> bool {
    let r = match t.kind {
        FileKind::Block => sys::blk_discard(t.fd(), 0, len),
        FileKind::Regular => sys::fallocate(
            t.fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        ),
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(path = %t.path.display(), error = %e, "discard after wipe failed (ignored)");
            false
        }
    }
}
