//! Where module errors become wire errors — the only place.
//!
//! Each module has its own `thiserror` enum and says, through [`WireError::code`], which stable
//! [`ErrorCode`] each of its variants is. [`to_api_error`] then renders the message from the whole
//! `source()` chain, so an engine sees the errno text ("No space left on device") without any
//! module interpolating its source into its own message.

use sdm_proto::{ApiError, ErrorCode};

/// An error that knows its stable wire code.
pub trait WireError: std::error::Error {
    /// The stable code of this error.
    fn code(&self) -> ErrorCode;
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

/// Converts a module error into the wire error.
pub fn to_api_error<E: WireError>(err: &E) -> ApiError {
    ApiError::new(err.code(), chain_message(err))
}

/// Wire code of a lease failure: held elsewhere, or lost to another holder, is
/// AcquireLockFailure; anything else unexpected.
pub fn lease_code(err: &sdm_lease::LeaseError) -> ErrorCode {
    match err.kind() {
        sdm_lease::LeaseErrorKind::Busy | sdm_lease::LeaseErrorKind::Lost => {
            ErrorCode::AcquireLockFailure
        }
        _ => ErrorCode::GeneralException,
    }
}

/// Wire code of a data-path failure.
pub fn io_code(err: &sdm_io::IoError) -> ErrorCode {
    match err.kind() {
        sdm_io::IoErrorKind::NoSpace => ErrorCode::NoSpaceLeftOnDomain,
        sdm_io::IoErrorKind::Aborted => ErrorCode::ActionStopped,
        sdm_io::IoErrorKind::VerifyMismatch => ErrorCode::ImageVerificationError,
        sdm_io::IoErrorKind::InvalidInput => ErrorCode::InvalidParameterException,
        _ => ErrorCode::GeneralException,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("write /x failed")]
    struct Outer(#[source] std::io::Error);

    impl WireError for Outer {
        fn code(&self) -> ErrorCode {
            ErrorCode::GeneralException
        }
    }

    #[test]
    fn message_carries_the_errno_text_once() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let api = to_api_error(&e);
        assert_eq!(api.code, ErrorCode::GeneralException);
        assert!(
            api.message
                .starts_with("write /x failed: No space left on device"),
            "{}",
            api.message
        );
    }
}
