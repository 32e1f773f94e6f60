//! Checkpoints of a copy: the caller learns, now and then, up to which offset the destination
//! is durable, so that a later copy can start there ([`crate::CopyOptions::start`]).
//!
//! Requests complete out of order, so the offset reported is the end of the contiguous
//! completed prefix: the lowest offset still in flight (a data segment being read or written,
//! a range queued or being zeroed), or the next unissued one when nothing is in flight. The
//! destination is fdatasync'ed before the hook hears of the offset, so the hook may persist it
//! as a promise: every byte below it is on stable storage.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::target::Target;
use crate::IoError;

/// Default time between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Default bytes between checkpoints (whichever of time and bytes comes first).
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 4 << 30;

/// What a checkpoint reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpointed {
    /// Every destination byte below this offset is written (or zeroed) and fdatasync'ed.
    pub durable: u64,
    /// The copy's length.
    pub total: u64,
}

/// What checkpointing cost a copy, measured by the engine: the work itself (fdatasync of the
/// destination and the hook, wherever they ran) and the part of it the copy waited for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints taken (hook calls that returned), the last one at the copy's end included.
    pub count: u32,
    /// Time spent in their fdatasyncs and hooks, on the helper thread or the copy's.
    pub work: Duration,
    /// Time the copy's own thread spent on them (joining a running one, which includes its
    /// start-up, and the final hook): what they add to the copy's wall time.
    pub blocked: Duration,
}

/// The function a checkpoint calls; an error fails the copy (wrapped as "checkpoint of").
pub type CheckpointFn = dyn Fn(Checkpointed) -> io::Result<()> + Send + Sync;

/// When to checkpoint and whom to tell. Shared (`Arc`), so [`crate::CopyOptions`] stays
/// `Clone`; a hook that keeps state uses interior mutability.
#[derive(Clone)]
pub struct CheckpointHook {
    /// At most this long between checkpoints...
    pub every: Duration,
    /// ...or this many bytes of progress, whichever comes first.
    pub every_bytes: u64,
    /// Called with the durable offset after the destination was synced.
    pub call: Arc<CheckpointFn>,
}

impl CheckpointHook {
    /// A hook with the default interval (5 s or 4 GiB).
    pub fn new(call: Arc<CheckpointFn>) -> CheckpointHook {
        CheckpointHook {
            every: DEFAULT_CHECKPOINT_EVERY,
            every_bytes: DEFAULT_CHECKPOINT_BYTES,
            call,
        }
    }
}

impl fmt::Debug for CheckpointHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointHook")
            .field("every", &self.every)
            .field("every_bytes", &self.every_bytes)
            .finish_non_exhaustive()
    }
}

/// The copy loop's side of checkpointing: decides when, and runs the sync and the hook on a
/// helper thread while the pipeline keeps going (at most one at a time; a checkpoint due
/// while the last one runs is skipped). The offset is computed before the sync is issued, so
/// every write below it completed before the fdatasync started and is covered by it.
pub(crate) struct Checkpointer {
    hook: CheckpointHook,
    last_at: Instant,
    /// How far the copy had issued at the last checkpoint (the byte interval counts from it:
    /// the durable offset trails the issued one by the queue, so counting from it would make
    /// every turn of the loop look due).
    last_issued: u64,
    /// The durable offset last handed to the hook.
    last_off: u64,
    total: u64,
    /// The checkpoint running on the helper thread; it returns the time it took.
    pending: Option<JoinHandle<Result<Duration, IoError>>>,
    stats: CheckpointStats,
}

impl Checkpointer {
    pub(crate) fn new(hook: CheckpointHook, start: u64, total: u64) -> Checkpointer {
        Checkpointer {
            hook,
            last_at: Instant::now(),
            last_issued: start,
            last_off: start,
            total,
            pending: None,
            stats: CheckpointStats::default(),
        }
    }

    /// Whether a checkpoint is due, given how far the copy has issued (cheap: called on every
    /// turn of the loop, before the durable prefix is computed).
    pub(crate) fn due(&self, issued: u64) -> bool {
        issued > self.last_issued
            && (issued - self.last_issued >= self.hook.every_bytes
                || self.last_at.elapsed() >= self.hook.every)
    }

    /// Starts a checkpoint of `durable` (the contiguous completed prefix): fdatasync of `dst`,
    /// then the hook, on the helper thread. Skips when nothing new completed or the last one
    /// still runs; fails with the last one's error.
    pub(crate) fn take(&mut self, dst: &Target, issued: u64, durable: u64) -> Result<(), IoError> {
        self.last_at = Instant::now();
        self.last_issued = issued;
        if self.pending.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        self.wait()?;
        if durable <= self.last_off {
            return Ok(());
        }
        let (fds, path) = (dst.descriptors(), dst.path.clone());
        let call = self.hook.call.clone();
        let c = Checkpointed {
            durable,
            total: self.total,
        };
        // Not the final sync's failpoint: a fault injected there must hit the end of the copy.
        let run = move || {
            let t = Instant::now();
            for fd in fds {
                crate::sys::fdatasync(fd).map_err(|e| IoError::os("fdatasync of", &path, e))?;
            }
            call(c).map_err(|e| IoError::os("checkpoint of", &path, e))?;
            Ok(t.elapsed())
        };
        let h = std::thread::Builder::new()
            .name("sdm-checkpoint".into())
            .spawn(run)
            .map_err(|e| IoError::os("checkpoint thread for", &dst.path, e))?;
        self.pending = Some(h);
        self.last_off = durable;
        Ok(())
    }

    /// The last checkpoint at the copy's end, called right after the copy's final fdatasync
    /// of `dst` (so it syncs nothing itself: a second fdatasync costs a device cache flush
    /// and covers nothing new): waits for the running one, then calls the hook on this
    /// thread.
    pub(crate) fn finish(&mut self, dst: &Target) -> Result<(), IoError> {
        self.wait()?;
        if self.total <= self.last_off && self.last_off > 0 {
            return Ok(());
        }
        let c = Checkpointed {
            durable: self.total,
            total: self.total,
        };
        let t = Instant::now();
        (self.hook.call)(c).map_err(|e| IoError::os("checkpoint of", &dst.path, e))?;
        let took = t.elapsed();
        self.stats.work += took;
        self.stats.blocked += took;
        self.stats.count += 1;
        self.last_off = self.total;
        Ok(())
    }

    /// What checkpointing cost so far (complete once [`Checkpointer::finish`] returned).
    pub(crate) fn stats(&self) -> CheckpointStats {
        self.stats
    }

    /// Joins the running checkpoint, if any, and returns its outcome.
    fn wait(&mut self) -> Result<(), IoError> {
        let Some(h) = self.pending.take() else {
            return Ok(());
        };
        let t = Instant::now();
        let r = h.join();
        self.stats.blocked += t.elapsed();
        match r {
            Ok(Ok(took)) => {
                self.stats.work += took;
                self.stats.count += 1;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(IoError::os(
                "checkpoint of",
                Path::new("(destination)"),
                io::Error::other("the checkpoint hook panicked"),
            )),
        }
    }
}

impl Drop for Checkpointer {
    /// The helper thread uses the destination's descriptors: it ends before they close (the
    /// copy's error paths drop this before the target).
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(every: Duration, every_bytes: u64) -> CheckpointHook {
        CheckpointHook {
            every,
            every_bytes,
            call: Arc::new(|_| Ok(())),
        }
    }

    #[test]
    fn due_by_bytes_or_time_and_never_without_progress() {
        let c = Checkpointer::new(hook(Duration::from_secs(3600), 100), 50, 1000);
        assert!(!c.due(50), "nothing issued past the start");
        assert!(!c.due(149));
        assert!(c.due(150));
        let c = Checkpointer::new(hook(Duration::ZERO, u64::MAX), 0, 1000);
        assert!(c.due(1));
        assert!(!c.due(0));
    }
}
