//! The one error type of `sdm-client`.

use sdm_proto::{ApiError, ErrorCode, Uuid};

use crate::journal::JournalError;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent answered with an error.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The agent could not be reached or the connection broke; the request may or may not
    /// have been carried out.
    #[error("transport error talking to {url}: {message}")]
    Transport {
        /// Agent URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// A bad URL or option on our side.
    #[error("{0}")]
    Usage(String),
    /// No healthy host sees the storage domains an operation needs.
    #[error("no healthy host sees {0}")]
    NoHost(String),
    /// The engine journal could not record a phase, so the operation did not go on.
    #[error("engine journal failed")]
    Journal(#[from] JournalError),
    /// A destination volume does not read back equal to its source.
    #[error("volume {vol}: destination checksum {dst} differs from the source's {src}")]
    Verification {
        /// The volume.
        vol: Uuid,
        /// Source digest.
        src: String,
        /// Destination digest.
        dst: String,
    },
    /// Another operation on the same image is unfinished and owned by another engine (a
    /// shared journal refused the new one).
    #[error("image {image} is already in progress by engine {owner} (operation {op})")]
    InProgress {
        /// The image.
        image: Uuid,
        /// The operation in progress.
        op: Uuid,
        /// The engine that owns it.
        owner: String,
    },
    /// A disk operation ended without success; the message says how and why.
    #[error("{0}")]
    Operation(String),
}

impl Error {
    /// The agent's error code, if the agent answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api(e) => Some(e.code),
            Error::Verification { .. } => Some(ErrorCode::ImageVerificationError),
            _ => None,
        }
    }

    /// True when the request may not have reached the agent (safe to retry idempotent calls).
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }
}
