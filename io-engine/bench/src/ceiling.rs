//! The engine-shaped IO ceiling: read A while writing B, no data dependency between them.
//! What a copy could reach if it cost nothing but the IO.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use io_uring::{opcode, types::Fd, IoUring};
use sdm_io::{EngineConfig, PageBuf};

/// Reads SRC and writes as many bytes to DST at the same time, each stream on its own thread
/// and ring with the IO shape a copy between them gets from `cfg` (O_DIRECT; the queue depth
/// and chunk size of a copy touching a block device when either is one, else the file ones;
/// buffers in the engine's huge-page backed [`PageBuf`]), then fdatasyncs DST. A copy keeps
/// as many reads and as many writes in flight, so this is the most it can reach.
pub fn ceiling(cfg: &EngineConfig, src: &Path, dst: &Path) -> Result<()> {
    let len = crate::image::size_of(src)?;
    let block = [src, dst].iter().any(|p| {
        std::fs::metadata(p)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
    });
    let (depth, bs) = if block {
        (cfg.block_queue_depth, cfg.block_chunk_size)
    } else {
        (cfg.queue_depth, cfg.chunk_size)
    };
    let shape = Shape {
        depth: depth.clamp(1, 1024) as usize,
        bs: bs.clamp(4096, 64 << 20).next_multiple_of(4096),
    };
    eprintln!(
        "ceiling: {} requests of {} KiB per stream",
        shape.depth,
        shape.bs >> 10
    );
    std::thread::scope(|s| {
        let r = s.spawn(|| stream(src, len, false, shape));
        let w = s.spawn(|| stream(dst, len, true, shape));
        let r = r.join().map_err(|_| anyhow!("reader panicked"))?;
        let w = w.join().map_err(|_| anyhow!("writer panicked"))?;
        r.and(w)
    })
}

#[derive(Clone, Copy)]
struct Shape {
    depth: usize,
    bs: usize,
}

fn stream(path: &Path, len: u64, write: bool, shape: Shape) -> Result<()> {
    let Shape { depth, bs } = shape;
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .create(write)
        .truncate(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| path.display().to_string())?;
    let fd = Fd(f.as_raw_fd());
    let mut buf = PageBuf::new(depth * bs).context("IO buffers")?;
    if write {
        buf.as_mut_slice().fill(0xa5);
    }
    let mut ring = IoUring::new(2 * depth as u32).context("ring")?;
    let iov: Vec<libc::iovec> = (0..depth)
        .map(|i| libc::iovec {
            iov_base: buf.as_ptr().wrapping_add(i * bs).cast(),
            iov_len: bs,
        })
        .collect();
    // SAFETY: the buffers stay mapped until `buf` drops, which is after the ring: `ring` is
    // declared later (dropped first) and closed explicitly on the error path below.
    unsafe { ring.submitter().register_buffers(&iov) }.context("register buffers")?;
    let mut free: Vec<usize> = (0..depth).collect();
    let (mut next, mut inflight, mut err) = (0u64, 0usize, None);
    loop {
        while err.is_none() && next < len {
            let Some(i) = free.pop() else { break };
            // At most bs, so it fits in u32.
            let n = (len - next).min(bs as u64) as u32;
            let p = buf.as_ptr().wrapping_add(i * bs);
            let sqe = if write {
                opcode::WriteFixed::new(fd, p, n, i as u16)
                    .offset(next)
                    .build()
            } else {
                opcode::ReadFixed::new(fd, p, n, i as u16)
                    .offset(next)
                    .build()
            };
            // SAFETY: buffer i belongs to this request until its completion is reaped below;
            // the loop only ends once nothing is in flight, or on the error path, which closes
            // the ring before `buf` can be dropped.
            unsafe { ring.submission().push(&sqe.user_data(i as u64)) }
                .map_err(|_| anyhow!("submission queue full"))?;
            next += u64::from(n);
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() != Some(libc::EINTR) {
                // Requests may still be in flight. They use registered buffers, whose pages
                // the kernel keeps pinned until the ring is torn down after the last of them
                // completes, so closing the ring first makes unmapping `buf` safe.
                drop(ring);
                return Err(e).context("io_uring_enter");
            }
        }
        for c in ring.completion() {
            inflight -= 1;
            free.push(c.user_data() as usize);
            if c.result() < 0 && err.is_none() {
                err = Some(std::io::Error::from_raw_os_error(-c.result()));
            }
        }
    }
    if let Some(e) = err {
        bail!("{}: {e}", path.display());
    }
    if write {
        f.sync_data()
            .with_context(|| format!("fdatasync {}", path.display()))?;
    }
    Ok(())
}
