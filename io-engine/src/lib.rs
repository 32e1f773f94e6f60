//! sdm data path: copy, wipe and checksum of volumes (regular files or block devices) over
//! io_uring, with a synchronous `pread`/`pwrite` engine of identical semantics as fallback.
//!
//! # Use
//!
//! Build one [`Engine`] at start-up ([`Engine::new`] probes io_uring once and logs the choice),
//! clone it freely, and call its blocking methods from a thread per operation. Each call sets
//! up its own ring and buffer pool on the calling thread and tears them down before returning,
//! so operations share nothing but the engine's configuration. A [`Control`] (shared as
//! `Arc<Control>`) lets the control plane abort, throttle and watch an operation.
//!
//! # Pipeline
//!
//! An operation walks its source as data and hole regions (SEEK_DATA/SEEK_HOLE; block devices
//! are all data) and cuts the data into chunks of [`EngineConfig::chunk_size`]:
//!
//! ```text
//!   plan ──hole─────────────────────────────────────────► skip, or zero the destination range
//!     └──data chunk──► read (slot) ──► split into zero and data runs (4 KiB blocks)
//!                                        ├─ zero runs >= 64 KiB ──► skip / zero range
//!                                        └─ data runs ──► write from the same slot ──► slot freed
//! ```
//!
//! Up to [`EngineConfig::queue_depth`] chunks are in flight, each in its own slot of a fixed
//! buffer pool, so memory per operation is `(queue_depth + 1) * chunk_size` whatever the
//! volume size. A copy onto or off a block device uses [`EngineConfig::block_queue_depth`]
//! and [`EngineConfig::block_chunk_size`] instead, and has `block_queue_depth` slots for reads
//! and as many again for writes, so that a read in flight never holds back a write (the
//! device ceiling keeps both queues full): its pool is `(2 * block_queue_depth + 1) *
//! block_chunk_size`. Writes complete in any order. A copy ends with `fdatasync`; an error from it
//! fails the operation and is never retried, since a second fsync may report success for data
//! that was lost. Zeroing a destination range prefers PUNCH_HOLE|KEEP_SIZE, then ZERO_RANGE
//! (files) or BLKZEROOUT (block devices), and writes zero buffers only when those are refused.
//!
//! A copy may start at an offset ([`CopyOptions::start`]: a resumed copy neither reads nor
//! writes what the destination already holds) and report checkpoints ([`CheckpointHook`]): now
//! and then the destination is fdatasync'ed and the hook told the end of the contiguous
//! completed prefix (the lowest offset still in flight), once more at the end.
//!
//! A checksum reads the same way, but the chunks go, in order, to a hashing thread beside the
//! IO thread, so reads keep flowing while SHA-256 runs; holes are hashed as zeros, unread.
//!
//! # Buffer ownership
//!
//! Kernel requests point into the pool, so the pool belongs to the ring owner (`io::Io`) and
//! a slot is untouchable from submission until its completion has been reaped. Error and
//! abort paths stop submitting and reap everything in flight before returning; dropping an
//! `Io` reaps too, and leaks the pool rather than free memory the kernel might still use. The
//! hashing thread borrows a slot only between a completed read and handing the slot back.
//!
//! # Performance notes (numbers in docs/performance.md)
//!
//! - The pool is 2 MiB aligned and backed by transparent huge pages, so a chunk is physically
//!   contiguous and a 1 MiB request is one DMA segment. With 4 KiB pages virtio-blk (254
//!   segments per request) splits every 1 MiB request, which cost ~40% of copy throughput.
//! - The ring and the buffer registration are set up on the first request that needs them: a
//!   copy of only holes, or a BLKZEROOUT wipe, never builds them.
//! - Files on tmpfs are served with plain pread/pwrite even under io_uring: the IO is a memory
//!   copy with nothing to overlap, and through the ring it costs ~40% more CPU per byte.
//!
//! # Alignment
//!
//! Each file is probed for O_DIRECT (open flag, STATX_DIOALIGN, else an aligned read); where
//! it is refused the file is used buffered and the reason logged. Requests are aligned to at
//! least 4 KiB; an unaligned end of the volume is written through a second, buffered
//! descriptor of the same file, and covered by the final `fdatasync` of both.
//!
//! # Failpoints
//!
//! With the `failpoints` feature the following [`fail`] points sit at the IO boundary, in both
//! backends. Their `return(ARG)` value picks the fault: an errno name (`EIO`, `ENOSPC`,
//! `EDQUOT`, `EINTR`, `EAGAIN`, `EINVAL`, `EOPNOTSUPP`, `EROFS`, `EPERM`) or number fails the
//! request with it (EINTR and EAGAIN are retried like real ones), and `short` makes a read or
//! write transfer only half, which the engine must then continue. No argument means `EIO`.
//!
//! | name | where |
//! |---|---|
//! | `sdm_io::read` | every read request (copy, verify, checksum) |
//! | `sdm_io::write` | every data write request |
//! | `sdm_io::zero` | every zeroing request: punch hole, zero range, BLKZEROOUT, zero writes |
//! | `sdm_io::fsync` | the final `fdatasync` (`short` counts as `EIO`) |
//!
//! The agent sets them from the `FAILPOINTS` environment variable (`fail::FailScenario`), e.g.
//! `FAILPOINTS='sdm_io::write=3*off->return(ENOSPC)'` fails the fourth write and all after it.

use std::path::Path;
use std::sync::Arc;

mod checkpoint;
mod checksum;
mod control;
pub mod convert;
mod copy;
mod error;
mod extents;
mod io;
mod sys;
mod target;
mod uring;
mod wipe;
mod zero;

pub use checkpoint::{
    CheckpointFn, CheckpointHook, CheckpointStats, Checkpointed, DEFAULT_CHECKPOINT_BYTES,
    DEFAULT_CHECKPOINT_EVERY,
};
pub use control::{Control, Progress};
pub use convert::{
    Allocation, BackingFile, CommitOptions, CommitReport, ConvertDest, ConvertOptions,
    ConvertReport, Converter, DestFormat, ImageFormat, Layer, MapExtent, Measure, Qcow2Compat,
    Qcow2Options, SparsifyReport,
};
pub use error::{IoError, IoErrorKind};
pub use sys::PageBuf;

/// Which backend to use, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring when the start-up probe passes, else sync.
    #[default]
    Auto,
    /// io_uring; still falls back (with a warning) when the probe fails.
    IoUring,
    /// Synchronous pread/pwrite.
    Sync,
}

/// Which backend an [`Engine`] actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// io_uring with registered buffers.
    IoUring,
    /// Synchronous pread/pwrite.
    Sync,
}

impl BackendKind {
    /// Lowercase name for logs and capabilities ("io_uring", "sync").
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Sync => "sync",
        }
    }
}

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Backend selection.
    pub backend: BackendChoice,
    /// Chunks in flight per operation (clamped to 1..=1024).
    pub queue_depth: u32,
    /// Bytes per request (rounded up to a multiple of 4 KiB, clamped to 4 KiB..=64 MiB).
    pub chunk_size: usize,
    /// `queue_depth` of a copy whose source or destination is a block device (told apart
    /// when the volume is opened).
    pub block_queue_depth: u32,
    /// `chunk_size` of a copy whose source or destination is a block device.
    pub block_chunk_size: usize,
}

/// Chunks in flight by default; see docs/performance.md for the measurement behind it.
pub const DEFAULT_QUEUE_DEPTH: u32 = 8;
/// Bytes per request by default; see docs/performance.md.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// Chunks in flight by default when a copy touches a block device: a LUN (or an LV stacked on
/// one) serves more requests at once than a file on a local disk; see docs/performance.md.
pub const DEFAULT_BLOCK_QUEUE_DEPTH: u32 = 16;
/// Bytes per request by default when a copy touches a block device; see docs/performance.md.
pub const DEFAULT_BLOCK_CHUNK_SIZE: usize = 1 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            backend: BackendChoice::Auto,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            chunk_size: DEFAULT_CHUNK_SIZE,
            block_queue_depth: DEFAULT_BLOCK_QUEUE_DEPTH,
            block_chunk_size: DEFAULT_BLOCK_CHUNK_SIZE,
        }
    }
}

fn clamp_depth(d: u32) -> usize {
    d.clamp(1, 1024) as usize
}

fn clamp_chunk(c: usize) -> usize {
    c.clamp(4096, 64 << 20).next_multiple_of(4096)
}

/// Options of [`Engine::copy`].
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// The destination range is known to read as zeros (e.g. a freshly truncated sparse
    /// file): holes and zero chunks are skipped instead of zeroed. Also detected by itself
    /// for a regular file without any allocated data.
    pub dst_reads_zero: bool,
    /// After the final fdatasync, read the destination back and compare with the source.
    pub verify: bool,
    /// Bytes to copy; None means the whole source.
    pub length: Option<u64>,
    /// The destination already holds the source's bytes below this offset (a resumed copy):
    /// they are neither read nor written (verify still reads the whole volume). Rounded down
    /// to the copy's alignment.
    pub start: u64,
    /// Report the durable prefix now and then (see [`CheckpointHook`]).
    pub checkpoint: Option<CheckpointHook>,
}

/// Default [`WipeOptions::step`]: the BLKZEROOUT size VDSM measured best.
pub const DEFAULT_WIPE_STEP: u64 = 32 << 20;

/// Options of [`Engine::wipe`].
#[derive(Clone, Debug)]
pub struct WipeOptions {
    /// Discard (BLKDISCARD, or punch holes in a file) after zeroing; best effort.
    pub discard: bool,
    /// Bytes per BLKZEROOUT request on block devices.
    pub step: u64,
}

impl Default for WipeOptions {
    fn default() -> Self {
        WipeOptions {
            discard: false,
            step: DEFAULT_WIPE_STEP,
        }
    }
}

/// What a copy did.
#[derive(Clone, Debug)]
pub struct CopyReport {
    /// Logical bytes copied (the copy length).
    pub bytes_total: u64,
    /// Bytes read from the source by the copy pass (holes are never read).
    pub bytes_read: u64,
    /// Data bytes written to the destination.
    pub bytes_written: u64,
    /// Bytes not written as data: holes and zero chunks, skipped or zeroed cheaply.
    pub bytes_zeroed_or_skipped: u64,
    /// Backend used.
    pub backend: BackendKind,
    /// Whether both source and destination were accessed with O_DIRECT.
    pub direct_io: bool,
    /// Whether the destination was read back and compared.
    pub verified: bool,
    /// What checkpoints cost (all zero without a hook).
    pub checkpoints: CheckpointStats,
}

/// What a wipe did.
#[derive(Clone, Debug)]
pub struct WipeReport {
    /// Size of the volume.
    pub bytes_total: u64,
    /// Bytes overwritten with zeros (zero writes or BLKZEROOUT).
    pub bytes_zeroed: u64,
    /// Bytes of holes, which already read as zeros and hold no data.
    pub bytes_skipped: u64,
    /// Whether the discard asked for succeeded.
    pub discarded: bool,
    /// Backend used.
    pub backend: BackendKind,
    /// Whether the volume was accessed with O_DIRECT.
    pub direct_io: bool,
}

struct Inner {
    kind: BackendKind,
    reason: Option<String>,
    queue_depth: usize,
    chunk_size: usize,
    block_queue_depth: usize,
    block_chunk_size: usize,
}

/// The data path engine; cheap to clone, shareable between threads.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.inner.kind)
            .field("fallback_reason", &self.inner.reason)
            .field("queue_depth", &self.inner.queue_depth)
            .field("chunk_size", &self.inner.chunk_size)
            .field("block_queue_depth", &self.inner.block_queue_depth)
            .field("block_chunk_size", &self.inner.block_chunk_size)
            .finish()
    }
}

impl Engine {
    /// Probes io_uring (unless `Sync` was asked for) and logs the backend chosen.
    pub fn new(cfg: EngineConfig) -> Engine {
        let (kind, reason) = match cfg.backend {
            BackendChoice::Sync => (BackendKind::Sync, Some("sync backend configured".into())),
            BackendChoice::Auto | BackendChoice::IoUring => match uring::probe() {
                Ok(()) => (BackendKind::IoUring, None),
                Err(why) => (BackendKind::Sync, Some(why)),
            },
        };
        let queue_depth = clamp_depth(cfg.queue_depth);
        let chunk_size = clamp_chunk(cfg.chunk_size);
        let block_queue_depth = clamp_depth(cfg.block_queue_depth);
        let block_chunk_size = clamp_chunk(cfg.block_chunk_size);
        match (&reason, cfg.backend) {
            (None, _) => tracing::info!(
                backend = kind.as_str(),
                queue_depth,
                chunk_size,
                block_queue_depth,
                block_chunk_size,
                "io engine ready"
            ),
            (Some(r), BackendChoice::Sync) => {
                tracing::info!(backend = kind.as_str(), reason = %r, queue_depth, chunk_size, "io engine ready")
            }
            (Some(r), _) => tracing::warn!(
                backend = kind.as_str(),
                reason = %r,
                "io_uring unusable, falling back to the sync engine"
            ),
        }
        Engine {
            inner: Arc::new(Inner {
                kind,
                reason,
                queue_depth,
                chunk_size,
                block_queue_depth,
                block_chunk_size,
            }),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.inner.kind
    }

    /// Why io_uring is not used, if it is not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.inner.reason.as_deref()
    }

    /// Chunks in flight per operation.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue_depth
    }

    /// Bytes per request.
    pub fn chunk_size(&self) -> usize {
        self.inner.chunk_size
    }

    /// Chunks in flight per copy that touches a block device.
    pub fn block_queue_depth(&self) -> usize {
        self.inner.block_queue_depth
    }

    /// Bytes per request of a copy that touches a block device.
    pub fn block_chunk_size(&self) -> usize {
        self.inner.block_chunk_size
    }

    /// (queue depth, chunk size) for IO between `targets`: the block values when any of
    /// them is a block device.
    pub(crate) fn shape_for(&self, targets: &[&target::Target]) -> (usize, usize) {
        if targets.iter().any(|t| t.kind == target::FileKind::Block) {
            (self.inner.block_queue_depth, self.inner.block_chunk_size)
        } else {
            (self.inner.queue_depth, self.inner.chunk_size)
        }
    }

    /// Copies `src` to the existing `dst`; see [`CopyOptions`].
    ///
    /// A regular-file destination is first truncated to exactly the copy length; a block
    /// device destination must be at least that large. The destination is durable
    /// (fdatasync) when this returns Ok.
    pub fn copy(
        &self,
        src: &Path,
        dst: &Path,
        opts: &CopyOptions,
        ctl: &Control,
    ) -> Result<CopyReport, IoError> {
        copy::copy(self, src, dst, opts, ctl)
    }

    /// Overwrites every byte of `target` with zeros, durably; see [`WipeOptions`].
    pub fn wipe(
        &self,
        target: &Path,
        opts: &WipeOptions,
        ctl: &Control,
    ) -> Result<WipeReport, IoError> {
        wipe::wipe(self, target, opts, ctl)
    }

    /// Lowercase hex SHA-256 of the volume's content, as `sha256sum` would print it.
    pub fn checksum(&self, path: &Path, ctl: &Control) -> Result<String, IoError> {
        checksum::checksum(self, path, ctl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        send_sync::<Engine>();
        send_sync::<Control>();
        send_sync::<IoError>();
    }

    #[test]
    fn config_is_clamped() {
        let e = Engine::new(EngineConfig {
            backend: BackendChoice::Sync,
            queue_depth: 0,
            chunk_size: 5000,
            block_queue_depth: 2000,
            block_chunk_size: 1 << 30,
        });
        assert_eq!((e.queue_depth(), e.chunk_size()), (1, 8192));
        assert_eq!(
            (e.block_queue_depth(), e.block_chunk_size()),
            (1024, 64 << 20)
        );
        assert_eq!(e.backend(), BackendKind::Sync);
    }
}
