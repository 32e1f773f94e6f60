//! A source chain as the converter sees it: each guest range resolved to where its bytes are.
//!
//! qcow2 layers are mapped through imago, each opened on its own with no backing image, so
//! that the engine — not the header — decides how far down the chain reading goes: a range
//! imago reports unallocated falls through to the next layer the caller gave, and below the
//! last one it reads as zeros. RAW layers are mapped with SEEK_DATA/SEEK_HOLE (a hole reads as
//! zeros; a block device is all data).

use std::fs::File;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, ShallowMapping};

use super::ImageFormat;
use crate::target::Target;
use crate::{sys, IoError};

/// Largest range one lookup asks for; imago stops at L2 table boundaries anyway.
const MAX_LOOKUP: u64 = 1 << 30;

/// Where a guest range's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Plain bytes at `host` in layer `layer`'s file.
    Data { layer: usize, host: u64 },
    /// A compressed cluster of layer `layer`, decoded through imago.
    Compressed { layer: usize },
    /// Reads as zeros, and says so itself (zero cluster, RAW hole, past a backing's end).
    Zero,
    /// Not allocated in any layer looked at: the backing below shows through (zeros if none).
    Unallocated,
}

impl Kind {
    fn at_offset(self, delta: u64) -> Kind {
        match self {
            Kind::Data { layer, host } => Kind::Data {
                layer,
                host: host + delta,
            },
            k => k,
        }
    }

    /// Whether the range has bytes that must be read (or decoded).
    pub(crate) fn is_data(self) -> bool {
        matches!(self, Kind::Data { .. } | Kind::Compressed { .. })
    }
}

pub(crate) struct OpenLayer {
    pub(crate) path: PathBuf,
    /// Virtual size in bytes.
    pub(crate) size: u64,
    /// The layer's file for data reads (O_DIRECT where possible).
    pub(crate) target: Target,
    /// The same file without O_DIRECT, for pieces that break the alignment.
    pub(crate) buffered_fd: std::os::fd::RawFd,
    /// imago's view of a qcow2 layer: the L1/L2 mapping and compressed cluster decoding.
    pub(crate) qcow2: Option<FormatAccess<ImagoFile>>,
}

impl OpenLayer {
    /// Opens a layer; `Err(reason)` when imago refuses a qcow2 image (then qemu-img decides).
    pub(crate) fn open(
        path: &Path,
        format: ImageFormat,
    ) -> Result<Result<OpenLayer, String>, IoError> {
        let mut target = Target::open(path, false)?;
        let buffered_fd = target.buffered_fd()?;
        let (size, qcow2) = match format {
            ImageFormat::Raw => (target.size, None),
            ImageFormat::Qcow2 => {
                let f = File::open(path).map_err(|e| IoError::os("open", path, e))?;
                let opened = ImagoFile::try_from(f).and_then(|f| {
                    Qcow2::<ImagoFile>::builder(f)
                        .write(false)
                        .backing(None)
                        .open(DenyImplicitOpenGate::default())
                });
                match opened {
                    Ok(q) => {
                        let q = FormatAccess::new(q);
                        (q.size(), Some(q))
                    }
                    Err(e) => return Ok(Err(format!("imago cannot open {}: {e}", path.display()))),
                }
            }
        };
        Ok(Ok(OpenLayer {
            path: path.to_owned(),
            size,
            target,
            buffered_fd,
            qcow2,
        }))
    }

    /// This layer's own mapping at `pos` (< size): the kind and how far it holds.
    fn map(&self, idx: usize, pos: u64, max: u64) -> Result<(Kind, u64), IoError> {
        let max = max.min(self.size - pos);
        let Some(q) = &self.qcow2 else {
            return self.map_raw(idx, pos, max);
        };
        let (m, len) = q
            .get_shallow_mapping(pos, max)
            .map_err(|e| IoError::image(&self.path, format!("mapping offset {pos}: {e}")))?;
        let kind = match m {
            ShallowMapping::Raw { offset, .. } => Kind::Data {
                layer: idx,
                host: offset,
            },
            ShallowMapping::Zero { explicit: true, .. } => Kind::Zero,
            ShallowMapping::Zero { .. } | ShallowMapping::Indirect { .. } => Kind::Unallocated,
            ShallowMapping::Special { .. } => Kind::Compressed { layer: idx },
            ShallowMapping::Eof { .. } => return Ok((Kind::Zero, max)),
            other => {
                return Err(IoError::image(
                    &self.path,
                    format!("unknown mapping {other:?} at {pos}"),
                ))
            }
        };
        if len == 0 {
            return Err(IoError::image(
                &self.path,
                format!("empty mapping at {pos}"),
            ));
        }
        Ok((kind, len.min(max)))
    }

    fn map_raw(&self, idx: usize, pos: u64, max: u64) -> Result<(Kind, u64), IoError> {
        let data = Kind::Data {
            layer: idx,
            host: pos,
        };
        if self.target.is_block() {
            return Ok((data, max));
        }
        let fd = self.target.fd();
        let seek = |e| IoError::at("SEEK_DATA on", &self.path, pos, e);
        match sys::seek_data(fd, pos).map_err(seek)? {
            None => Ok((Kind::Zero, max)),
            Some(d) if d > pos => Ok((Kind::Zero, (d - pos).min(max))),
            Some(_) => {
                let hole = sys::seek_hole(fd, pos).map_err(seek)?.unwrap_or(self.size);
                Ok((data, (hole - pos).clamp(1, max)))
            }
        }
    }
}

/// The layers the caller gave, top first.
pub(crate) struct Chain {
    pub(crate) layers: Vec<OpenLayer>,
}

impl Chain {
    pub(crate) fn size(&self) -> u64 {
        self.layers[0].size
    }

    /// Resolves `pos` (< top size) through the first `depth` layers: the kind and its end.
    ///
    /// A range past a lower layer's end reads zeros, as qemu reads a short backing file.
    /// `Unallocated` is returned only when all `depth` layers leave the range unallocated.
    pub(crate) fn resolve(&self, pos: u64, depth: usize) -> Result<(Kind, u64), IoError> {
        let mut max = MAX_LOOKUP.min(self.size() - pos);
        for (i, l) in self.layers.iter().take(depth).enumerate() {
            if pos >= l.size {
                return Ok((Kind::Zero, pos + max));
            }
            let (k, len) = l.map(i, pos, max)?;
            max = len;
            if k != Kind::Unallocated {
                return Ok((k, pos + max));
            }
        }
        Ok((Kind::Unallocated, pos + max))
    }
}

/// Walks a chain in guest order, remembering the last extent found.
pub(crate) struct Cursor<'a> {
    chain: &'a Chain,
    depth: usize,
    cached: (u64, u64, Kind),
}

impl<'a> Cursor<'a> {
    /// A cursor that looks `depth` layers deep (1: the top alone).
    pub(crate) fn new(chain: &'a Chain, depth: usize) -> Cursor<'a> {
        Cursor {
            chain,
            depth,
            cached: (0, 0, Kind::Zero),
        }
    }

    /// The kind at `pos` (< chain size) and where that extent ends.
    pub(crate) fn at(&mut self, pos: u64) -> Result<(Kind, u64), IoError> {
        let (s, e, k) = self.cached;
        if s <= pos && pos < e {
            return Ok((k.at_offset(pos - s), e));
        }
        let (k, e) = self.chain.resolve(pos, self.depth)?;
        self.cached = (pos, e, k);
        Ok((k, e))
    }
}
