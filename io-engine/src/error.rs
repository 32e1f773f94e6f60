//! The one error type of the data path.
//!
//! Callers branch on [`IoError::kind`], which is stable and maps one to one onto the agent's wire
//! codes. The rendered message is for humans: it names what was being done, to which path and,
//! where it matters, at which offset, followed by the OS error text.

use std::io;
use std::path::{Path, PathBuf};

/// Stable classification of an [`IoError`]; the agent maps these onto wire codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoErrorKind {
    /// The destination ran out of space (ENOSPC or EDQUOT).
    NoSpace,
    /// The operation was aborted through its [`crate::Control`].
    Aborted,
    /// `verify` found the destination different from the source.
    VerifyMismatch,
    /// The request cannot be carried out as asked (wrong file type, sizes, options).
    InvalidInput,
    /// An image's format metadata is malformed or inconsistent with what the caller said.
    BadImage,
    /// The external converter (qemu-img) failed.
    External,
    /// Any other IO failure.
    Io,
}

/// A failed copy, wipe or checksum.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// A syscall on a range of a file failed.
    #[error("{op} {} at offset {offset} failed: {source}", path.display())]
    At {
        /// What was being done ("read from", "write to", ...).
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// Byte offset of the failed request.
        offset: u64,
        /// The OS error.
        source: io::Error,
    },
    /// A syscall on a whole file failed (open, fdatasync, ...).
    #[error("{op} {} failed: {source}", path.display())]
    Os {
        /// What was being done ("open", "fdatasync of", ...).
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The io_uring instance itself failed (setup, submission).
    #[error("io_uring {op} failed: {source}")]
    Ring {
        /// The ring operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The operation stopped because it was aborted.
    #[error("{op} {} aborted", path.display())]
    Aborted {
        /// The operation ("copy to", "wipe of", "checksum of").
        op: &'static str,
        /// The volume being worked on.
        path: PathBuf,
    },
    /// Read-back after a copy differs from the source.
    #[error("verify of {} failed: content differs from {} in the block at offset {offset}", dst.display(), src.display())]
    VerifyMismatch {
        /// The copy's source.
        src: PathBuf,
        /// The copy's destination.
        dst: PathBuf,
        /// Start of the first differing block.
        offset: u64,
    },
    /// The request was malformed for these files.
    #[error("{op} {}: {reason}", path.display())]
    InvalidInput {
        /// The operation.
        op: &'static str,
        /// The offending path.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// An image's format metadata cannot be used (bad magic, out-of-range tables, ...).
    #[error("image {}: {reason}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `qemu-img` (the fallback converter) exited with an error.
    #[error("qemu-img for {} failed ({status}): {stderr}", path.display())]
    External {
        /// The destination being written.
        path: PathBuf,
        /// Exit status as text.
        status: String,
        /// The tool's error output, trimmed.
        stderr: String,
    },
}

impl IoError {
    /// The stable kind callers match on.
    pub fn kind(&self) -> IoErrorKind {
        match self {
            IoError::At { source, .. }
            | IoError::Os { source, .. }
            | IoError::Ring { source, .. } => kind_of(source),
            IoError::Aborted { .. } => IoErrorKind::Aborted,
            IoError::VerifyMismatch { .. } => IoErrorKind::VerifyMismatch,
            IoError::InvalidInput { .. } => IoErrorKind::InvalidInput,
            IoError::Image { .. } => IoErrorKind::BadImage,
            // qemu-img reports a full destination only as text.
            IoError::External { stderr, .. } if stderr.contains("No space left") => {
                IoErrorKind::NoSpace
            }
            IoError::External { .. } => IoErrorKind::External,
        }
    }

    /// The errno behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            IoError::At { source, .. }
            | IoError::Os { source, .. }
            | IoError::Ring { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn at(op: &'static str, path: &Path, offset: u64, source: io::Error) -> IoError {
        IoError::At {
            op,
            path: path.to_owned(),
            offset,
            source,
        }
    }

    pub(crate) fn os(op: &'static str, path: &Path, source: io::Error) -> IoError {
        IoError::Os {
            op,
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn ring(op: &'static str, source: io::Error) -> IoError {
        IoError::Ring { op, source }
    }

    pub(crate) fn aborted(op: &'static str, path: &Path) -> IoError {
        IoError::Aborted {
            op,
            path: path.to_owned(),
        }
    }

    pub(crate) fn image(path: &Path, reason: impl Into<String>) -> IoError {
        IoError::Image {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, path: &Path, reason: impl Into<String>) -> IoError {
        IoError::InvalidInput {
            op,
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

fn kind_of(e: &io::Error) -> IoErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => IoErrorKind::NoSpace,
        _ => IoErrorKind::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_op_path_offset_and_errno() {
        let e = IoError::at(
            "write to",
            Path::new("/x/y"),
            4096,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            e.to_string(),
            "write to /x/y at offset 4096 failed: No space left on device (os error 28)"
        );
        assert_eq!(e.kind(), IoErrorKind::NoSpace);
    }

    #[test]
    fn edquot_is_no_space() {
        let e = IoError::os(
            "fdatasync of",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EDQUOT),
        );
        assert_eq!(e.kind(), IoErrorKind::NoSpace);
        let e = IoError::os(
            "fdatasync of",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(e.kind(), IoErrorKind::Io);
    }
}
