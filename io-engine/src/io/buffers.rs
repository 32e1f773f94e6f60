//! Buffer ownership: the pool's slots, their idle views, and lending a slot to another thread.

use super::{Io, LENT};

/// A slot's content handed to another thread; see [`Io::lend`].
pub(crate) struct Lent {
    ptr: *const u8,
    len: usize,
    slot: usize,
}

// SAFETY: a Lent is a read-only view of pool memory that Io will neither write nor free
// (nor let the kernel write) until the slot is reclaimed, so it may cross threads.
unsafe impl Send for Lent {}

impl Lent {
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len lie inside the pool; the slot is marked LENT, so Io does not reuse
        // it, and Io outlives every Lent (the hasher thread is scoped inside Io's lifetime).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The lent bytes to fill (a decoder thread writes a window into them).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; besides, the pool is a private read-write mapping and,
        // while the slot is LENT, neither Io, the kernel nor any other Lent touches these
        // bytes, so this Lent (borrowed mutably) is their only user.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

impl Io {
    pub(super) fn slot_ptr(&self, slot: usize) -> *mut u8 {
        self.pool.as_ptr().wrapping_add(slot * self.chunk)
    }

    pub(super) fn zero_slot(&self) -> usize {
        self.slots
    }

    /// The content of an idle slot.
    pub(crate) fn buf(&self, slot: usize) -> &[u8] {
        assert!(
            slot < self.slots && self.uses[slot] == 0,
            "slot {slot} is busy"
        );
        // SAFETY: the slot lies in the pool and no request or borrower uses it (checked above);
        // the borrow of self keeps it so.
        unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), self.chunk) }
    }

    /// The content of an idle slot, to fill before reads complete the rest of it.
    pub(crate) fn buf_mut(&mut self, slot: usize) -> &mut [u8] {
        assert!(
            slot < self.slots && self.uses[slot] == 0,
            "slot {slot} is busy"
        );
        // SAFETY: the slot lies in the pool and no request or borrower uses it (checked above);
        // the exclusive borrow of self keeps it so.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(slot), self.chunk) }
    }

    /// Hands an idle slot's first `len` bytes to another thread until [`Io::reclaim`].
    pub(crate) fn lend(&mut self, slot: usize, len: usize) -> Lent {
        assert!(slot < self.slots && self.uses[slot] == 0 && len <= self.chunk);
        self.uses[slot] = LENT;
        Lent {
            ptr: self.slot_ptr(slot),
            len,
            slot,
        }
    }

    /// Takes a lent slot back; consuming the `Lent` proves the borrower is done with it.
    pub(crate) fn reclaim(&mut self, lent: Lent) -> usize {
        assert_eq!(self.uses[lent.slot], LENT);
        self.uses[lent.slot] = 0;
        lent.slot
    }
}
