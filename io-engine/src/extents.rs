//! Walking a volume as data and hole regions (SEEK_DATA / SEEK_HOLE).
//!
//! Regions are widened to the IO alignment: a data region starts at an aligned offset at or
//! before the filesystem's data and ends aligned at or after it (but never past `len`). Reading
//! a little hole costs nothing, while an unaligned region would break O_DIRECT.

use std::io;
use std::os::fd::RawFd;

use crate::sys;
use crate::target::Target;

pub(crate) fn align_down(x: u64, a: u64) -> u64 {
    x - x % a
}

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

pub(crate) struct Extents {
    fd: RawFd,
    /// Only regular files have holes; block devices are all data.
    sparse: bool,
    len: u64,
    align: u64,
    /// Last region found: [start, end), data or hole.
    cached: (u64, u64, bool),
}

impl Extents {
    pub(crate) fn new(t: &Target, len: u64, align: u64) -> Extents {
        Extents {
            fd: t.fd(),
            sparse: !t.is_block(),
            len,
            align,
            cached: (0, 0, false),
        }
    }

    /// The region containing `pos` (which must be below `len`): whether it is data, and
    /// where it ends.
    pub(crate) fn at(&mut self, pos: u64) -> io::Result<(bool, u64)> {
        debug_assert!(pos < self.len);
        let (s, e, d) = self.cached;
        if s <= pos && pos < e {
            return Ok((d, e));
        }
        let region = self.find(pos)?;
        self.cached = region;
        Ok((region.2, region.1))
    }

    fn find(&self, pos: u64) -> io::Result<(u64, u64, bool)> {
        if !self.sparse {
            return Ok((pos, self.len, true));
        }
        let data = match sys::seek_data(self.fd, pos)? {
            None => return Ok((pos, self.len, false)),
            Some(d) => align_down(d, self.align),
        };
        if data >= self.len {
            return Ok((pos, self.len, false));
        }
        if data > pos {
            return Ok((pos, data, false));
        }
        let hole = sys::seek_hole(self.fd, pos)?.unwrap_or(self.len);
        let end = align_up(hole, self.align).min(self.len).max(pos + 1);
        Ok((pos, end, true))
    }
}

/// Whether the file has no data at all, i.e. reads as zeros everywhere.
pub(crate) fn all_hole(t: &Target) -> io::Result<bool> {
    if t.is_block() {
        return Ok(false);
    }
    Ok(sys::seek_data(t.fd(), 0)?.is_none())
}

/// Whether every byte of `buf` is zero.
///
/// Scans in 64-byte blocks OR-ed together, which the compiler vectorises, and stops at the
/// first non-zero block: random data costs one block, zero data runs at memory speed.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for b in &mut blocks {
        let mut acc = 0u64;
        for w in b.chunks_exact(8) {
            acc |= u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Splits `buf` into alternating data and zero runs, as (start, len, is_zero).
///
/// Zero is judged per `block`; zero runs shorter than `min_zero` are folded into the data
/// around them, because a few small holes are not worth extra write requests.
pub(crate) fn zero_runs(
    buf: &[u8],
    block: usize,
    min_zero: usize,
    out: &mut Vec<(usize, usize, bool)>,
) {
    out.clear();
    for (i, b) in buf.chunks(block).enumerate() {
        let z = is_zero(b);
        match out.last_mut() {
            Some(last) if last.2 == z => last.1 += b.len(),
            _ => out.push((i * block, b.len(), z)),
        }
    }
    if out.len() <= 1 {
        return;
    }
    let mut merged: Vec<(usize, usize, bool)> = Vec::with_capacity(out.len());
    for &(start, len, z) in out.iter() {
        let z = z && len >= min_zero;
        match merged.last_mut() {
            Some(last) if last.2 == z => last.1 += len,
            _ => merged.push((start, len, z)),
        }
    }
    *out = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4096 + 7];
        assert!(is_zero(&v));
        v[4096 + 6] = 1;
        assert!(!is_zero(&v));
        v[4096 + 6] = 0;
        v[100] = 0x80;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    #[test]
    fn runs_fold_small_zero_gaps() {
        let mut buf = vec![0u8; 64 * 1024];
        buf[4096] = 1; // block 1
        buf[3 * 4096] = 1; // block 3: the zero block 2 between is too short to skip
        let mut runs = Vec::new();
        zero_runs(&buf, 4096, 8192, &mut runs);
        // Leading zero block and block 2 are too short to skip; blocks 4.. are a real hole.
        assert_eq!(
            runs,
            vec![(0, 4 * 4096, false), (4 * 4096, 12 * 4096, true)]
        );
        zero_runs(&[0u8; 10_000], 4096, 8192, &mut runs);
        assert_eq!(runs, vec![(0, 10_000, true)]);
        zero_runs(&[], 4096, 8192, &mut runs);
        assert!(runs.is_empty());
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_down(4097, 4096), 4096);
        assert_eq!(align_up(4097, 4096), 8192);
        assert_eq!(align_up(8192, 4096), 8192);
    }
}
