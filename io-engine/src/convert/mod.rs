//! Format conversion: a chain of RAW/qcow2 layers into a RAW or qcow2 destination.
//!
//! # What is written
//!
//! The mode follows from the destination. Without a backing file the whole chain the caller
//! gave is *collapsed*: every guest range that reads non-zero through it is written. With a
//! backing file (a qcow2 destination naming its parent) only what the *top* layer allocates is
//! written, zero clusters staying zero clusters (`qemu-img convert -B`). The engine reads a
//! layer's backing only as far as the caller's list goes; below the last layer is zeros.
//!
//! Holes and zero ranges are never read or written as data: qcow2 sources are mapped through
//! their L2 tables (imago), RAW sources with SEEK_DATA/SEEK_HOLE; data read is checked for
//! zeros again before it is written. The bulk data moves through the engine's [`crate::io::Io`]
//! (io_uring or the sync backend). A qcow2 destination is laid out whole before the first
//! write (see `layout`), data first, metadata after it, the header last.
//!
//! # When qemu-img converts instead
//!
//! Every qcow2 layer's header is inspected first. An image the native path cannot reproduce
//! exactly — encrypted, external data file, unknown or incompatible feature bits, a
//! compression type other than zlib, a dirty or corrupt image, or bitmaps to copy — is
//! converted by `qemu-img convert` with VDSM's flags; [`ConvertReport::converter`] says why.

mod chain;
mod commit;
mod decode;
mod header;
mod layout;
mod mover;
mod pipeline;
mod plan;
mod qemu_img;
mod run;
mod scan;
mod sparsify;

use std::path::PathBuf;

pub use commit::{CommitOptions, CommitReport};
pub use scan::{Allocation, MapExtent};
pub use sparsify::SparsifyReport;

use crate::BackendKind;

/// qemu's default cluster size, and ours.
pub const DEFAULT_CLUSTER_SIZE: u32 = 64 << 10;

/// An image format the converter reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Plain bytes: guest offset = file offset.
    Raw,
    /// qcow2, version 2 (compat 0.10) or 3 (compat 1.1).
    Qcow2,
}

impl ImageFormat {
    /// qemu's name for the format ("raw", "qcow2").
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// One layer of a source chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The layer's file or block device.
    pub path: PathBuf,
    /// Its format, as the volume metadata says (never probed).
    pub format: ImageFormat,
}

/// The qcow2 version written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Qcow2Compat {
    /// Version 2: no zero clusters, no feature bits.
    V0_10,
    /// Version 3, what V5 domains create.
    #[default]
    V1_1,
}

impl Qcow2Compat {
    /// qemu's name ("0.10", "1.1").
    pub fn as_str(self) -> &'static str {
        match self {
            Qcow2Compat::V0_10 => "0.10",
            Qcow2Compat::V1_1 => "1.1",
        }
    }
}

/// The backing file a qcow2 destination names (oVirt: the bare parent volume UUID, resolved
/// next to the image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingFile {
    /// Written into the header as is.
    pub name: String,
    /// The backing image's format.
    pub format: ImageFormat,
}

/// How a qcow2 destination is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Options {
    /// Version written.
    pub compat: Qcow2Compat,
    /// Bytes per cluster: a power of two from 512 B to 2 MiB.
    pub cluster_size: u32,
    /// With a backing file only the top layer's allocations are written.
    pub backing: Option<BackingFile>,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            compat: Qcow2Compat::V1_1,
            cluster_size: DEFAULT_CLUSTER_SIZE,
            backing: None,
        }
    }
}

/// Format of the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestFormat {
    /// Plain bytes.
    Raw,
    /// qcow2, made as the options say.
    Qcow2(Qcow2Options),
}

impl DestFormat {
    fn backing(&self) -> Option<&BackingFile> {
        match self {
            DestFormat::Raw => None,
            DestFormat::Qcow2(q) => q.backing.as_ref(),
        }
    }
}

/// Where and how a conversion writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertDest {
    /// An existing regular file or block device.
    pub path: PathBuf,
    /// Its format.
    pub format: DestFormat,
    /// Virtual size in bytes; None: the source's. Smaller than the source is an error.
    pub size: Option<u64>,
    /// The destination may be made anew (VDSM's `requires_create`: a sparse RAW volume, a
    /// qcow2 volume without parent). A regular file is then truncated first; without it a
    /// preallocated RAW file keeps its allocation. For qemu-img it decides `-n`.
    pub create: bool,
    /// Ranges not written read as zeros already (VDSM's `zero_initialized`: file volumes).
    pub reads_zero: bool,
}

/// Options of [`crate::Engine::convert`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Copy persistent bitmaps (qcow2 to qcow2 only); done by qemu-img.
    pub copy_bitmaps: bool,
    /// Convert with qemu-img even where the native path could (benchmarks, diagnosis).
    pub force_qemu_img: bool,
}

/// Which converter did the work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Converter {
    /// The engine's own path.
    Native,
    /// `qemu-img convert`, and why.
    QemuImg {
        /// Why the native path was not used.
        reason: String,
    },
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Native or qemu-img (with the reason).
    pub converter: Converter,
    /// Whether only the top layer's allocations were written (destination with backing).
    pub top_only: bool,
    /// The destination's virtual size.
    pub virtual_size: u64,
    /// Bytes read from the source files (native; compressed clusters counted decoded).
    pub bytes_read: u64,
    /// Bytes written as data (native).
    pub bytes_written: u64,
    /// Guest bytes not written as data: holes, zero ranges, zero clusters (native).
    pub bytes_zeroed_or_skipped: u64,
    /// qcow2 destination: where the image ends (bytes the file or device must hold).
    pub image_end: Option<u64>,
    /// Backend of the native path.
    pub backend: BackendKind,
    /// The qemu-img arguments, when it ran.
    pub qemu_img_args: Option<Vec<String>>,
}

/// Space a conversion needs in the destination, as `qemu-img measure` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// Bytes the destination needs for this source (RAW: the virtual size).
    pub required: u64,
    /// Bytes it would need with every cluster allocated.
    pub fully_allocated: u64,
}

/// State of one destination cluster (two bits in `layout::ClusterMap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ClusterState {
    Unallocated = 0,
    Zero = 1,
    Data = 2,
    /// Reserved for data, found all zeros, not written.
    Skipped = 3,
}

impl ClusterState {
    fn from_bits(b: u64) -> ClusterState {
        match b {
            0 => ClusterState::Unallocated,
            1 => ClusterState::Zero,
            2 => ClusterState::Data,
            _ => ClusterState::Skipped,
        }
    }

    /// Two extents sharing a cluster: equal states stay, anything else must be allocated
    /// (zeros over part of it, the rest from below).
    fn merge(self, other: ClusterState) -> ClusterState {
        if self == other {
            self
        } else {
            ClusterState::Data
        }
    }
}
