//! Looking at one image on its own: its allocation map, and the ranges that read as zeros
//! (what a sparsify may give back).

use super::chain::{Chain, Cursor, Kind, OpenLayer};
use super::header::Header;
use super::{ImageFormat, Layer};
use crate::extents::is_zero;
use crate::{sys, Control, Engine, IoError};

/// How a guest range of one image is stored in that image itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Stored as plain bytes at `host_offset`.
    Data,
    /// Stored in compressed clusters.
    Compressed,
    /// Reads as zeros by the image's own metadata (zero cluster, RAW hole).
    Zero,
    /// Not stored: the backing image shows through (zeros without one).
    Unallocated,
}

/// One extent of [`Engine::allocation_map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapExtent {
    /// Guest offset.
    pub offset: u64,
    /// Guest bytes.
    pub length: u64,
    /// How the range is stored.
    pub allocation: Allocation,
    /// Where a `Data` range starts in the image file.
    pub host_offset: Option<u64>,
}

/// Zero scanning granularity: what a file system can punch out.
const ZERO_BLOCK: u64 = 4096;

fn open_one(image: &Layer) -> Result<(Chain, bool), IoError> {
    let backed = match image.format {
        ImageFormat::Raw => false,
        ImageFormat::Qcow2 => Header::read(&image.path)?.backing_file.is_some(),
    };
    let layer = OpenLayer::open(&image.path, image.format)?
        .map_err(|why| IoError::image(&image.path, why))?;
    Ok((
        Chain {
            layers: vec![layer],
        },
        backed,
    ))
}

fn push(out: &mut Vec<MapExtent>, e: MapExtent) {
    if let Some(last) = out.last_mut() {
        let contiguous = match (last.host_offset, e.host_offset) {
            (Some(a), Some(b)) => a + last.length == b,
            (None, None) => true,
            _ => false,
        };
        if last.allocation == e.allocation && contiguous && last.offset + last.length == e.offset {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

impl Engine {
    /// The allocation of `image` alone (its backing file not looked at), in guest order.
    pub fn allocation_map(&self, image: &Layer) -> Result<Vec<MapExtent>, IoError> {
        let (chain, _) = open_one(image)?;
        let mut cur = Cursor::new(&chain, 1);
        let (mut pos, size, mut out) = (0, chain.size(), Vec::new());
        while pos < size {
            let (k, end) = cur.at(pos)?;
            let (allocation, host_offset) = match k {
                Kind::Data { host, .. } => (Allocation::Data, Some(host)),
                Kind::Compressed { .. } => (Allocation::Compressed, None),
                Kind::Zero => (Allocation::Zero, None),
                Kind::Unallocated => (Allocation::Unallocated, None),
            };
            push(
                &mut out,
                MapExtent {
                    offset: pos,
                    length: end - pos,
                    allocation,
                    host_offset,
                },
            );
            pos = end;
        }
        Ok(out)
    }

    /// Guest ranges of `image` that read as zeros through the image alone: zero clusters and
    /// holes, unallocated ranges when it has no backing file, and stored data whose 4 KiB
    /// blocks are all zeros (read to find out). Ranges are merged and in guest order.
    pub fn zero_ranges(&self, image: &Layer, ctl: &Control) -> Result<Vec<(u64, u64)>, IoError> {
        let (chain, backed) = open_one(image)?;
        let layer = &chain.layers[0];
        let size = chain.size();
        ctl.start(size);
        let chunk = self.chunk_size() as u64;
        let buf =
            sys::PageBuf::new(chunk as usize).map_err(|e| IoError::ring("buffer allocation", e))?;
        let mut cur = Cursor::new(&chain, 1);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut add = |off: u64, len: u64| match out.last_mut() {
            Some(l) if l.0 + l.1 == off => l.1 += len,
            _ => out.push((off, len)),
        };
        let mut pos = 0;
        while pos < size {
            if ctl.is_aborted() {
                return Err(IoError::aborted("zero scan of", &image.path));
            }
            let (k, end) = cur.at(pos)?;
            let end = if k.is_data() {
                end.min(pos + chunk)
            } else {
                end
            };
            let len = end - pos;
            match k {
                Kind::Zero => add(pos, len),
                Kind::Unallocated if !backed => add(pos, len),
                Kind::Unallocated => {}
                Kind::Data { .. } | Kind::Compressed { .. } => {
                    // SAFETY: buf is a live private mapping of buf.len() >= len bytes, used
                    // only here.
                    let b = unsafe { std::slice::from_raw_parts_mut(buf.as_ptr(), len as usize) };
                    if let Kind::Data { host, .. } = k {
                        read_exact(layer, b, host)?;
                    } else {
                        let q = layer.qcow2.as_ref().expect("compressed data is qcow2");
                        q.read(&mut *b, pos).map_err(|e| {
                            IoError::image(&image.path, format!("decoding {pos}: {e}"))
                        })?;
                    }
                    // Whole blocks only (or the image's last, short one): a partial block of
                    // zeros next to data cannot be given back on its own.
                    let mut at = pos.next_multiple_of(ZERO_BLOCK);
                    while at < end {
                        let n = ZERO_BLOCK.min(end - at);
                        let i = (at - pos) as usize;
                        if (n == ZERO_BLOCK || at + n == size) && is_zero(&b[i..i + n as usize]) {
                            add(at, n);
                        }
                        at += n;
                    }
                }
            }
            ctl.add_done(len);
            pos = end;
        }
        Ok(out)
    }
}

/// Reads `b.len()` bytes at `off` of the layer's file (zeros past its end).
fn read_exact(l: &OpenLayer, b: &mut [u8], off: u64) -> Result<(), IoError> {
    let a = if l.target.direct { l.target.align } else { 1 };
    let aligned = off.is_multiple_of(a) && (b.len() as u64).is_multiple_of(a);
    let fd = if aligned {
        l.target.fd()
    } else {
        l.buffered_fd
    };
    let mut done = 0;
    while done < b.len() {
        let n = sys::pread(fd, &mut b[done..], off + done as u64)
            .map_err(|e| IoError::at("read from", &l.path, off + done as u64, e))?;
        if n == 0 {
            b[done..].fill(0);
            break;
        }
        done += n;
        if aligned && !(done as u64).is_multiple_of(a) {
            // A short direct read ended unaligned: only EOF does that.
            b[done..].fill(0);
            break;
        }
    }
    Ok(())
}
