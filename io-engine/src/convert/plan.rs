//! Turning a resolved chain into the converter's work: holes to skip (or zero) and windows of
//! the destination to fill from pieces of the source layers.
//!
//! A window is one buffer's worth of the destination, aligned to the destination's write
//! granularity (the IO alignment for RAW, the cluster for qcow2). Its pieces tile it exactly:
//! bytes read from a layer's file, bytes decoded by imago, or zeros.

use super::chain::{Chain, Cursor, Kind};
use super::layout::{ClusterMap, Layout};
use super::ClusterState;
use crate::extents::{align_down, align_up};
use crate::IoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    /// Read from layer `layer`'s file at `host`.
    Read {
        layer: usize,
        host: u64,
    },
    /// Decode layer `layer`'s guest range starting at `guest` (compressed clusters).
    Decode {
        layer: usize,
        guest: u64,
    },
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Offset in the window.
    pub(crate) pos: usize,
    pub(crate) len: usize,
    pub(crate) src: Src,
}

#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) guest: u64,
    pub(crate) len: usize,
    /// Destination offset of the window's first byte.
    pub(crate) dst: u64,
    /// Guest bytes the window accounts for in progress (it may run past the virtual size).
    pub(crate) progress: u64,
    pub(crate) pieces: Vec<Piece>,
}

#[derive(Debug)]
pub(crate) enum Step {
    /// A guest range the destination must read as zeros (or, qcow2, whatever its L2 says).
    Hole {
        guest: u64,
        len: u64,
    },
    Data(Window),
}

/// Appends the pieces of guest range [a, b) (bytes at or past `src_size` are zeros).
fn gather(
    cur: &mut Cursor<'_>,
    src_size: u64,
    a: u64,
    b: u64,
    out: &mut Vec<Piece>,
) -> Result<(), IoError> {
    let mut pos = a;
    while pos < b {
        let (src, end) = if pos >= src_size {
            (Src::Zero, b)
        } else {
            let (k, e) = cur.at(pos)?;
            let src = match k {
                Kind::Data { layer, host } => Src::Read { layer, host },
                Kind::Compressed { layer } => Src::Decode { layer, guest: pos },
                Kind::Zero | Kind::Unallocated => Src::Zero,
            };
            (src, e.min(b))
        };
        let len = (end - pos) as usize;
        let p = Piece {
            pos: (pos - a) as usize,
            len,
            src,
        };
        match (out.last_mut(), src) {
            (Some(last), Src::Zero) if last.src == Src::Zero => last.len += len,
            (
                Some(Piece {
                    len: ll,
                    src:
                        Src::Read {
                            layer: la,
                            host: ha,
                        },
                    ..
                }),
                Src::Read { layer, host },
            ) if *la == layer && *ha + *ll as u64 == host => *ll += len,
            _ => out.push(p),
        }
        pos = end;
    }
    Ok(())
}

/// Plans a RAW destination: guest offset = destination offset.
pub(crate) struct RawPlan<'a> {
    cur: Cursor<'a>,
    src_size: u64,
    dst_size: u64,
    /// Where the last window may end: the source's end, padded to the alignment.
    data_limit: u64,
    /// Start of the unaligned end of the destination, written through another descriptor:
    /// no window straddles it.
    tail_start: u64,
    align: u64,
    chunk: u64,
    pos: u64,
}

impl<'a> RawPlan<'a> {
    pub(crate) fn new(
        chain: &'a Chain,
        dst_size: u64,
        tail_start: u64,
        align: u64,
        chunk: u64,
    ) -> RawPlan<'a> {
        RawPlan {
            cur: Cursor::new(chain, chain.layers.len()),
            src_size: chain.size(),
            dst_size,
            data_limit: align_up(chain.size(), align).min(dst_size),
            tail_start,
            align,
            chunk: chunk.max(align),
            pos: 0,
        }
    }

    pub(crate) fn next(&mut self) -> Result<Option<Step>, IoError> {
        let pos = self.pos;
        if pos >= self.dst_size {
            return Ok(None);
        }
        if pos >= self.src_size {
            self.pos = self.dst_size;
            return Ok(Some(Step::Hole {
                guest: pos,
                len: self.dst_size - pos,
            }));
        }
        let (k, mut end) = self.cur.at(pos)?;
        if !k.is_data() {
            while end < self.src_size {
                let (k, e) = self.cur.at(end)?;
                if k.is_data() {
                    break;
                }
                end = e;
            }
            // A hole reaching the source's end runs on to the destination's.
            let hole_end = if end >= self.src_size {
                self.dst_size
            } else {
                align_down(end, self.align)
            };
            if hole_end > pos {
                self.pos = hole_end;
                return Ok(Some(Step::Hole {
                    guest: pos,
                    len: hole_end - pos,
                }));
            }
        }
        // Data starts in this aligned block: fill one buffer, ending after the last data.
        let mut limit = (pos + self.chunk).min(self.data_limit);
        if pos < self.tail_start {
            limit = limit.min(self.tail_start);
        }
        let mut pieces = Vec::new();
        gather(&mut self.cur, self.src_size, pos, limit, &mut pieces)?;
        // There is data within the first aligned block, so a data piece remains.
        while pieces.last().is_some_and(|p| p.src == Src::Zero) {
            pieces.pop();
        }
        let data_end = pieces
            .last()
            .map_or(limit, |p| pos + (p.pos + p.len) as u64);
        let end = align_up(data_end, self.align).min(limit);
        if end > data_end {
            pieces.push(Piece {
                pos: (data_end - pos) as usize,
                len: (end - data_end) as usize,
                src: Src::Zero,
            });
        }
        self.pos = end;
        Ok(Some(Step::Data(Window {
            guest: pos,
            len: (end - pos) as usize,
            dst: pos,
            progress: end - pos,
            pieces,
        })))
    }
}

/// Pass 1 for a qcow2 destination: the state of every destination cluster, from the mapping
/// alone. Returns the map and whether some allocated cluster also covers ranges the top
/// leaves unallocated (top-only mode: their content must come from the layers below).
pub(crate) fn classify(
    chain: &Chain,
    top_only: bool,
    cluster_bits: u32,
    dst_size: u64,
    ctl_abort: &dyn Fn() -> bool,
) -> Result<(ClusterMap, bool), IoError> {
    let cs = 1u64 << cluster_bits;
    let mut map = ClusterMap::new(dst_size.div_ceil(cs));
    let depth = if top_only { 1 } else { chain.layers.len() };
    let mut cur = Cursor::new(chain, depth);
    let (mut pos, src_size) = (0, chain.size());
    let mut mixed_unallocated = false;
    while pos < src_size {
        if ctl_abort() {
            return Err(IoError::aborted("planning", &chain.layers[0].path));
        }
        let (k, end) = cur.at(pos)?;
        let s = match k {
            Kind::Data { .. } | Kind::Compressed { .. } => ClusterState::Data,
            Kind::Zero => ClusterState::Zero,
            Kind::Unallocated if top_only => ClusterState::Unallocated,
            Kind::Unallocated => ClusterState::Zero,
        };
        let (c0, c1) = (pos >> cluster_bits, (end - 1) >> cluster_bits);
        for c in c0..=c1 {
            let touched = c == c0 && pos % cs != 0;
            let before = map.get(c);
            map.merge(c, s, touched);
            if touched
                && before != s
                && (before == ClusterState::Unallocated || s == ClusterState::Unallocated)
            {
                mixed_unallocated = true;
            }
        }
        pos = end;
    }
    Ok((map, mixed_unallocated))
}

/// Plans a qcow2 destination from its cluster map: runs of data clusters become windows
/// written to their reserved (guest-ordered, so consecutive) host clusters.
pub(crate) struct Qcow2Plan<'a> {
    cur: Cursor<'a>,
    src_size: u64,
    dst_size: u64,
    map: &'a ClusterMap,
    data_offset: u64,
    cluster_bits: u32,
    /// Clusters per window.
    per_window: u64,
    /// Next guest cluster.
    next: u64,
    /// Data clusters planned so far (the next one's rank).
    rank: u64,
}

impl<'a> Qcow2Plan<'a> {
    pub(crate) fn new(
        chain: &'a Chain,
        map: &'a ClusterMap,
        layout: &Layout,
        dst_size: u64,
        chunk: u64,
    ) -> Qcow2Plan<'a> {
        Qcow2Plan {
            cur: Cursor::new(chain, chain.layers.len()),
            src_size: chain.size(),
            dst_size,
            map,
            data_offset: layout.data_offset,
            cluster_bits: layout.cluster_bits,
            per_window: (chunk >> layout.cluster_bits).max(1),
            next: 0,
            rank: 0,
        }
    }

    pub(crate) fn next(&mut self) -> Result<Option<Step>, IoError> {
        let (i, n, cb) = (self.next, self.map.len(), self.cluster_bits);
        if i >= n {
            return Ok(None);
        }
        let data = self.map.get(i) == ClusterState::Data;
        let mut j = i + 1;
        while j < n && (self.map.get(j) == ClusterState::Data) == data {
            if data && j - i >= self.per_window {
                break;
            }
            j += 1;
        }
        self.next = j;
        let (a, b) = (i << cb, j << cb);
        let progress = b.min(self.dst_size) - a;
        if !data {
            return Ok(Some(Step::Hole {
                guest: a,
                len: progress,
            }));
        }
        let mut pieces = Vec::new();
        gather(&mut self.cur, self.src_size, a, b, &mut pieces)?;
        let dst = self.data_offset + (self.rank << cb);
        self.rank += j - i;
        Ok(Some(Step::Data(Window {
            guest: a,
            len: (b - a) as usize,
            dst,
            progress,
            pieces,
        })))
    }
}
