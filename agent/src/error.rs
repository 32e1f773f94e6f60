//! Where module errors become wire errors — the only place.
//!
//! Each module has its own `thiserror` enum. Verbs and jobs return [`AgentError`], which any of
//! them converts into with `?`; [`From<AgentError> for ApiError`](AgentError) then picks the
//! stable [`ErrorCode`] from the table below and renders the message from the whole `source()`
//! chain, so an engine sees the errno text ("No space left on device") without any module
//! interpolating its source into its own message.

use jsonrpsee::types::ErrorObjectOwned;
use sdm_lease::{LeaseError, LeaseErrorKind};
use sdm_proto::{ApiError, ErrorCode};

use crate::durable::DurableError;
use crate::jobs::JobsError;
use crate::locks::LockError;
use crate::storage::StorageError;

/// A failure of a verb or a job on its way to the wire: a module's error, or a wire error the
/// verb decided itself (a rule of the contract, such as GenerationMismatch).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Domains, volumes, metadata, leases.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data path.
    #[error(transparent)]
    Io(#[from] sdm_io::IoError),
    /// The job registry.
    #[error(transparent)]
    Jobs(#[from] JobsError),
    /// In-process locks.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Already a wire error.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<LeaseError> for AgentError {
    fn from(e: LeaseError) -> AgentError {
        AgentError::Storage(StorageError::Lease(e))
    }
}

impl From<DurableError> for AgentError {
    fn from(e: DurableError) -> AgentError {
        AgentError::Storage(StorageError::Durable(e))
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> ApiError {
        match e {
            AgentError::Api(e) => e,
            e => ApiError::new(code(&e), chain_message(&e)),
        }
    }
}

impl From<AgentError> for ErrorObjectOwned {
    fn from(e: AgentError) -> ErrorObjectOwned {
        ApiError::from(e).into()
    }
}

/// The table: the stable code of every module error.
fn code(e: &AgentError) -> ErrorCode {
    match e {
        AgentError::Storage(e) => storage_code(e),
        AgentError::Io(e) => io_code(e),
        AgentError::Jobs(e) => match e {
            JobsError::NoSuchJob(_) => ErrorCode::NoSuchJob,
            JobsError::Exists(_) => ErrorCode::JobExists,
            JobsError::NotDone(_) => ErrorCode::JobNotDone,
            JobsError::NotActive(_) => ErrorCode::JobNotActive,
            JobsError::TooMany(_) | JobsError::ShuttingDown => ErrorCode::GeneralException,
        },
        AgentError::Lock(e) => match e {
            LockError::Stopped(_) => ErrorCode::ActionStopped,
            LockError::Timeout(_) => ErrorCode::AcquireLockFailure,
            LockError::Conflict(_) => ErrorCode::GeneralException,
        },
        AgentError::Api(e) => e.code,
    }
}

fn storage_code(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::DomainNotAttached(_) | StorageError::NotADomain { .. } => {
            ErrorCode::StorageDomainDoesNotExist
        }
        StorageError::DomainExists(_) => ErrorCode::StorageDomainAlreadyExists,
        StorageError::ImageNotFound { .. } => ErrorCode::ImageDoesNotExistInSD,
        StorageError::VolumeNotFound { .. } => ErrorCode::VolumeDoesNotExist,
        StorageError::VolumeExists(_) => ErrorCode::VolumeAlreadyExists,
        StorageError::SharedVolume(_) => ErrorCode::CannotDeleteSharedVolume,
        StorageError::Invalid(_) => ErrorCode::InvalidParameterException,
        StorageError::Unsupported(_) => ErrorCode::UnsupportedOperation,
        StorageError::DomainType(_) => ErrorCode::StorageDomainTypeError,
        StorageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            ErrorCode::NoSpaceLeftOnDomain
        }
        StorageError::Durable(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            ErrorCode::NoSpaceLeftOnDomain
        }
        StorageError::Durable(_) => ErrorCode::VolumeMetadataWriteError,
        StorageError::Lease(e) => lease_code(e),
        StorageError::SealBroken { .. }
        | StorageError::BadMetadata(_)
        | StorageError::Busy(_)
        | StorageError::Io { .. }
        | StorageError::QemuImg(_) => ErrorCode::GeneralException,
    }
}

/// A lease held elsewhere, or lost to another holder, is AcquireLockFailure; anything else
/// unexpected.
fn lease_code(e: &LeaseError) -> ErrorCode {
    match e.kind() {
        LeaseErrorKind::Busy | LeaseErrorKind::Lost => ErrorCode::AcquireLockFailure,
        _ => ErrorCode::GeneralException,
    }
}

fn io_code(e: &sdm_io::IoError) -> ErrorCode {
    match e.kind() {
        sdm_io::IoErrorKind::NoSpace => ErrorCode::NoSpaceLeftOnDomain,
        sdm_io::IoErrorKind::Aborted => ErrorCode::ActionStopped,
        sdm_io::IoErrorKind::VerifyMismatch => ErrorCode::ImageVerificationError,
        sdm_io::IoErrorKind::InvalidInput => ErrorCode::InvalidParameterException,
        _ => ErrorCode::GeneralException,
    }
}

/// The message of an error and all its sources, joined with ": ".
pub fn chain_message(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        // Some sources repeat their own source's text; don't print it twice.
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_busy_leases_are_651_unavailable_is_general() {
        for (kind, want) in [
            (LeaseErrorKind::Busy, ErrorCode::AcquireLockFailure),
            (LeaseErrorKind::Lost, ErrorCode::AcquireLockFailure),
            (LeaseErrorKind::Unavailable, ErrorCode::GeneralException),
            (LeaseErrorKind::Daemon, ErrorCode::GeneralException),
            (LeaseErrorKind::Io, ErrorCode::GeneralException),
        ] {
            let e = AgentError::from(LeaseError::new(kind, "install the sanlock package"));
            let api = ApiError::from(e);
            assert_eq!(api.code, want, "{kind}");
            assert!(api.message.contains("install the sanlock package"));
        }
        let e = AgentError::from(StorageError::DomainType("x".into()));
        assert_eq!(ApiError::from(e).code, ErrorCode::StorageDomainTypeError);
    }

    #[test]
    fn message_carries_the_errno_text_once() {
        let e = AgentError::from(StorageError::io(
            "write",
            "/x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ));
        let api = ApiError::from(e);
        assert_eq!(api.code, ErrorCode::NoSpaceLeftOnDomain);
        assert!(
            api.message
                .starts_with("write /x failed: No space left on device"),
            "{}",
            api.message
        );
    }
}
