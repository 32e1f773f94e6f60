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
use std::sync::Arc;
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

/// The copy loop's side of checkpointing: decides when, syncs, calls.
pub(crate) struct Checkpointer {
    hook: CheckpointHook,
    last_at: Instant,
    /// How far the copy had issued at the last checkpoint (the byte interval counts from it:
    /// the durable offset trails the issued one by the queue, so counting from it would make
    /// every turn of the loop look due).
    last_issued: u64,
    /// The durable offset last reported.
    last_off: u64,
    total: u64,
    /// Checkpoints taken (tests and logs).
    pub(crate) taken: u32,
}

impl Checkpointer {
    pub(crate) fn new(hook: CheckpointHook, start: u64, total: u64) -> Checkpointer {
        Checkpointer {
            hook,
            last_at: Instant::now(),
            last_issued: start,
            last_off: start,
            total,
            taken: 0,
        }
    }

    /// Whether a checkpoint is due, given how far the copy has issued (cheap: called on every
    /// turn of the loop, before the durable prefix is computed).
    pub(crate) fn due(&self, issued: u64) -> bool {
        issued > self.last_issued
            && (issued - self.last_issued >= self.hook.every_bytes
                || self.last_at.elapsed() >= self.hook.every)
    }

    /// Syncs `dst` and reports `durable` (the contiguous completed prefix) to the hook. Skips
    /// when nothing new completed since the last checkpoint.
    pub(crate) fn take(&mut self, dst: &Target, issued: u64, durable: u64) -> Result<(), IoError> {
        self.last_at = Instant::now();
        self.last_issued = issued;
        if durable <= self.last_off {
            return Ok(());
        }
        // Not the final sync's failpoint: a fault injected there must hit the end of the copy.
        dst.sync_descriptors()?;
        let c = Checkpointed {
            durable,
            total: self.total,
        };
        (self.hook.call)(c).map_err(|e| IoError::os("checkpoint of", &dst.path, e))?;
        self.last_off = durable;
        self.taken += 1;
        Ok(())
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
