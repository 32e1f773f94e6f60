//! The qcow2 image the converter writes: every cluster's place decided before the first write.
//!
//! The set of guest clusters to allocate is known from the source mapping, so the file is laid
//! out once, in this order, with nothing ever moved or reallocated:
//!
//! ```text
//!   header | L1 table | refcount table | refcount blocks | L2 tables | data clusters (guest order)
//! ```
//!
//! Guest-consecutive data clusters are host-consecutive, so a run of them is one write. A data
//! cluster that turns out to hold only zeros is not written: its L2 entry says zero (or
//! unallocated) and its reserved host cluster keeps refcount 0 (a hole in a file). The
//! metadata is written after the data, the header last. Refcounts are 16 bits (qemu's default).

use std::os::fd::RawFd;

use super::ClusterState;
use crate::sys;

const MAGIC: u32 = 0x5146_49fb;
const REFCOUNT_ORDER: u32 = 4;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const L2_COPIED: u64 = 1 << 63;
const L2_ZERO: u64 = 1;

/// The guest clusters' states, two bits each.
#[derive(Clone)]
pub(crate) struct ClusterMap {
    bits: Vec<u64>,
    len: u64,
}

impl ClusterMap {
    pub(crate) fn new(len: u64) -> ClusterMap {
        ClusterMap {
            bits: vec![0; len.div_ceil(32) as usize],
            len,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn get(&self, i: u64) -> ClusterState {
        let w = self.bits[(i / 32) as usize] >> ((i % 32) * 2);
        ClusterState::from_bits(w & 3)
    }

    pub(crate) fn set(&mut self, i: u64, s: ClusterState) {
        let (w, sh) = ((i / 32) as usize, (i % 32) * 2);
        self.bits[w] = (self.bits[w] & !(3 << sh)) | ((s as u64) << sh);
    }

    /// Merges `s` into cluster `i`, which other extents may already have touched.
    pub(crate) fn merge(&mut self, i: u64, s: ClusterState, touched: bool) {
        let merged = if !touched { s } else { self.get(i).merge(s) };
        self.set(i, merged);
    }
}

/// Where everything of the destination image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) cluster_bits: u32,
    pub(crate) version: u32,
    pub(crate) size: u64,
    pub(crate) l1_entries: u64,
    pub(crate) l1_offset: u64,
    pub(crate) rt_offset: u64,
    pub(crate) rt_clusters: u64,
    pub(crate) rb_offset: u64,
    pub(crate) rb_count: u64,
    pub(crate) l2_offset: u64,
    pub(crate) l2_count: u64,
    pub(crate) data_offset: u64,
    pub(crate) data_clusters: u64,
}

impl Layout {
    /// Lays out an image of `size` bytes with `l2_count` L2 tables and `data_clusters` data
    /// clusters.
    pub(crate) fn new(
        cluster_bits: u32,
        version: u32,
        size: u64,
        l2_count: u64,
        data_clusters: u64,
    ) -> Layout {
        let cs = 1u64 << cluster_bits;
        let guest_clusters = size.div_ceil(cs);
        let l1_entries = guest_clusters.div_ceil(cs / 8);
        // An empty image has no L1 table (qemu-img check would call a reserved one leaked).
        let l1_clusters = (l1_entries * 8).div_ceil(cs);
        let rb_entries = cs * 8 / (1 << REFCOUNT_ORDER);
        // The refcount structures count themselves: grow them until they cover everything.
        let fixed = 1 + l1_clusters + l2_count + data_clusters;
        let (mut rt_clusters, mut rb_count) = (1u64, 1u64);
        loop {
            let total = fixed + rt_clusters + rb_count;
            let rb = total.div_ceil(rb_entries);
            let rt = (rb * 8).div_ceil(cs);
            if rb <= rb_count && rt <= rt_clusters {
                break;
            }
            rb_count = rb.max(rb_count);
            rt_clusters = rt.max(rt_clusters);
        }
        let l1_offset = cs;
        let rt_offset = l1_offset + l1_clusters * cs;
        let rb_offset = rt_offset + rt_clusters * cs;
        let l2_offset = rb_offset + rb_count * cs;
        let data_offset = l2_offset + l2_count * cs;
        Layout {
            cluster_bits,
            version,
            size,
            l1_entries,
            l1_offset,
            rt_offset,
            rt_clusters,
            rb_offset,
            rb_count,
            l2_offset,
            l2_count,
            data_offset,
            data_clusters,
        }
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes the image needs: where its last cluster ends.
    pub(crate) fn end(&self) -> u64 {
        self.data_offset + self.data_clusters * self.cluster_size()
    }

    /// Guest clusters one L2 table covers.
    pub(crate) fn l2_span(&self) -> u64 {
        self.cluster_size() / 8
    }
}

/// The header cluster: v2 or v3 fields, a backing format extension, the backing file name.
pub(crate) fn header(l: &Layout, backing: Option<(&str, &str)>) -> Result<Vec<u8>, String> {
    let cs = l.cluster_size() as usize;
    let mut h = vec![0u8; cs];
    let put32 = |h: &mut [u8], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |h: &mut [u8], at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
    put32(&mut h, 0, MAGIC);
    put32(&mut h, 4, l.version);
    put32(&mut h, 20, l.cluster_bits);
    put64(&mut h, 24, l.size);
    put32(&mut h, 36, l.l1_entries as u32);
    put64(&mut h, 40, l.l1_offset);
    put64(&mut h, 48, l.rt_offset);
    put32(&mut h, 56, l.rt_clusters as u32);
    let mut at = 72;
    if l.version == 3 {
        // No feature bits: nothing dirty, no lazy refcounts, zlib, standard L2 entries.
        put32(&mut h, 96, REFCOUNT_ORDER);
        put32(&mut h, 100, 104);
        at = 104;
    }
    if let Some((name, fmt)) = backing {
        let need = at + 8 + fmt.len().next_multiple_of(8) + 8 + name.len();
        if need > cs || name.len() > 1023 {
            return Err(format!(
                "backing file name does not fit the {cs}-byte header cluster"
            ));
        }
        put32(&mut h, at, EXT_BACKING_FORMAT);
        put32(&mut h, at + 4, fmt.len() as u32);
        h[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
        at += 8 + fmt.len().next_multiple_of(8);
        at += 8; // end of extensions (type 0, length 0)
        put64(&mut h, 8, at as u64);
        put32(&mut h, 16, name.len() as u32);
        h[at..at + name.len()].copy_from_slice(name.as_bytes());
    }
    Ok(h)
}

/// The L2 entry of a guest cluster in state `s`, `host` being its reserved data cluster.
fn l2_entry(s: ClusterState, host: u64, backing: bool) -> u64 {
    match s {
        ClusterState::Unallocated => 0,
        ClusterState::Data => host | L2_COPIED,
        // Zero clusters exist from v3 on; the planner turns them into data for v2 images
        // with a backing file, and without one unallocated already reads zeros.
        ClusterState::Zero | ClusterState::Skipped if backing => L2_ZERO,
        ClusterState::Zero | ClusterState::Skipped => 0,
    }
}

/// Writes L2 tables, refcount blocks, refcount table, L1 table and finally the header.
pub(crate) fn write_metadata(
    fd: RawFd,
    l: &Layout,
    map: &ClusterMap,
    backing: Option<(&str, &str)>,
) -> std::io::Result<()> {
    let cs = l.cluster_size();
    let span = l.l2_span();
    let has_backing = backing.is_some();
    let mut l1 = vec![0u8; ((l.l1_entries * 8).div_ceil(cs) * cs) as usize];
    // Refcount 1 for every metadata cluster and every data cluster actually written.
    let rb_entries = cs * 8 / (1 << REFCOUNT_ORDER);
    let meta_clusters = l.data_offset / cs;
    let mut refs = RefcountWriter::new(fd, l, rb_entries);
    for c in 0..meta_clusters {
        refs.set(c)?;
    }
    let (mut next_l2, mut rank) = (0u64, 0u64);
    let mut table = vec![0u8; cs as usize];
    for l1i in 0..l.l1_entries {
        let first = l1i * span;
        let last = (first + span).min(map.len());
        let mut used = false;
        for i in first..last {
            let s = map.get(i);
            let host = l.data_offset + rank * cs;
            if matches!(s, ClusterState::Data | ClusterState::Skipped) {
                if s == ClusterState::Data {
                    refs.set(host / cs)?;
                }
                rank += 1;
            }
            let e = l2_entry(s, host, has_backing);
            // Exactly the tables the layout counted: those with any cluster not unallocated.
            used |= s != ClusterState::Unallocated;
            let at = ((i - first) * 8) as usize;
            table[at..at + 8].copy_from_slice(&e.to_be_bytes());
        }
        if !used {
            table.fill(0);
            continue;
        }
        let off = l.l2_offset + next_l2 * cs;
        debug_assert!(next_l2 < l.l2_count, "more L2 tables than laid out");
        next_l2 += 1;
        write_all(fd, &table, off)?;
        table.fill(0);
        let at = (l1i * 8) as usize;
        l1[at..at + 8].copy_from_slice(&(off | L2_COPIED).to_be_bytes());
    }
    refs.finish()?;
    let mut rt = vec![0u8; (l.rt_clusters * cs) as usize];
    for b in 0..l.rb_count {
        let at = (b * 8) as usize;
        rt[at..at + 8].copy_from_slice(&(l.rb_offset + b * cs).to_be_bytes());
    }
    write_all(fd, &rt, l.rt_offset)?;
    write_all(fd, &l1, l.l1_offset)?;
    let h = header(l, backing).map_err(std::io::Error::other)?;
    write_all(fd, &h, 0)
}

/// Fills refcount blocks in host cluster order, writing each once it is complete.
struct RefcountWriter<'a> {
    fd: RawFd,
    l: &'a Layout,
    entries: u64,
    block: Vec<u8>,
    /// Index of the block in `block`.
    current: u64,
}

impl<'a> RefcountWriter<'a> {
    fn new(fd: RawFd, l: &'a Layout, entries: u64) -> RefcountWriter<'a> {
        RefcountWriter {
            fd,
            l,
            entries,
            block: vec![0u8; l.cluster_size() as usize],
            current: 0,
        }
    }

    /// Sets refcount 1 for host cluster `c`; clusters must come in ascending order.
    fn set(&mut self, c: u64) -> std::io::Result<()> {
        let b = c / self.entries;
        while b > self.current {
            self.flush()?;
        }
        let at = ((c % self.entries) * 2) as usize;
        self.block[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let off = self.l.rb_offset + self.current * self.l.cluster_size();
        write_all(self.fd, &self.block, off)?;
        self.block.fill(0);
        self.current += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        while self.current < self.l.rb_count {
            self.flush()?;
        }
        Ok(())
    }
}

fn write_all(fd: RawFd, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = sys::pwrite(fd, buf, off)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_contiguous_and_counts_itself() {
        // 1 GiB, 64 KiB clusters: one L1 cluster, 16384 guest clusters.
        let l = Layout::new(16, 3, 1 << 30, 2, 1000);
        assert_eq!(l.l1_entries, 2);
        assert_eq!(l.l1_offset, 65536);
        assert_eq!(l.rt_offset, 2 * 65536);
        assert_eq!((l.rt_clusters, l.rb_count), (1, 1));
        assert_eq!(l.l2_offset, 4 * 65536);
        assert_eq!(l.data_offset, 6 * 65536);
        assert_eq!(l.end(), (6 + 1000) * 65536);
        // 512-byte clusters: a refcount block covers 256 clusters, so it needs many.
        let l = Layout::new(9, 3, 1 << 20, 8, 2048);
        let total = l.end() / 512;
        assert!(l.rb_count * 256 >= total, "{l:?}");
        assert!(l.rt_clusters * 64 >= l.rb_count, "{l:?}");
    }

    #[test]
    fn cluster_map_keeps_two_bits_each() {
        let mut m = ClusterMap::new(100);
        m.set(0, ClusterState::Data);
        m.set(31, ClusterState::Zero);
        m.set(32, ClusterState::Skipped);
        m.merge(33, ClusterState::Zero, false);
        m.merge(33, ClusterState::Unallocated, true);
        assert_eq!(m.get(0), ClusterState::Data);
        assert_eq!(m.get(1), ClusterState::Unallocated);
        assert_eq!(m.get(31), ClusterState::Zero);
        assert_eq!(m.get(32), ClusterState::Skipped);
        assert_eq!(
            m.get(33),
            ClusterState::Data,
            "mixed clusters are allocated"
        );
    }

    #[test]
    fn header_names_the_backing_file() {
        let l = Layout::new(16, 3, 1 << 20, 0, 0);
        let h = header(&l, Some(("0b1f-uuid", "qcow2"))).unwrap();
        let parsed = super::super::header::Header::parse(&h).unwrap();
        assert_eq!(parsed.backing_file.as_deref(), Some("0b1f-uuid"));
        assert_eq!(parsed.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(parsed.native_blocker(), None);
        let l = Layout::new(9, 2, 1 << 20, 0, 0);
        assert!(header(&l, Some((&"x".repeat(600), "raw"))).is_err());
    }
}
