//! The error table of the wire contract, and its one conversion to and from JSON-RPC errors.
//!
//! Every failure an engine can see carries a stable numeric code (VDSM's, so existing engines
//! can keep their handling) and a stable name in `data.name`. Agent modules keep their own
//! error enums; each maps itself to an [`ErrorCode`] and nothing else decides codes.

use std::fmt;

use jsonrpsee::types::{ErrorObject, ErrorObjectOwned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal ),* $(,)?) => {
        /// A stable error kind of the wire API. The numeric value is the JSON-RPC error code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[non_exhaustive]
        #[allow(non_camel_case_types)] // VDSM's name for 227 is lower camel case; the wire keeps it.
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order (used by the docs generator and tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The JSON-RPC error code.
            pub const fn code(self) -> i32 {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The stable name sent in `data.name`.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => stringify!($variant),)* }
            }

            /// The meaning of the code, for generated documentation.
            pub fn doc(self) -> &'static str {
                match self { $(ErrorCode::$variant => concat!($($doc),*).trim_ascii(),)* }
            }

            /// Reverse lookup of a numeric code.
            pub fn from_code(code: i32) -> Option<ErrorCode> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// The job id is not known to this agent.
    NoSuchJob = 66,
    /// `Job.delete` of a job that is still pending or running.
    JobNotDone = 68,
    /// A job with this id is already registered.
    JobExists = 69,
    /// `Job.abort` of a job that has already finished.
    JobNotActive = 84,
    /// Anything unexpected, including IO errors (the message says what and carries the errno text).
    GeneralException = 100,
    /// `Task.*` of an id that is not a job of this agent.
    UnknownTask = 401,
    /// `Task.clear` of a job that has not finished.
    TaskStateError = 410,
    /// The volume does not exist.
    VolumeDoesNotExist = 201,
    /// Volume metadata could not be written or made durable.
    VolumeMetadataWriteError = 208,
    /// A volume with this id already exists.
    VolumeAlreadyExists = 212,
    /// The volume is shared (a template) and cannot be deleted.
    CannotDeleteSharedVolume = 223,
    /// The source volume is ILLEGAL and cannot be read from.
    prepareIllegalVolumeError = 227,
    /// `SDM.update_volume` that changes nothing or is not allowed.
    InvalidVolumeUpdate = 235,
    /// The image does not exist in the storage domain.
    ImageDoesNotExistInSD = 268,
    /// The storage domain is not attached, or the path is not a storage domain.
    StorageDomainDoesNotExist = 358,
    /// A storage domain with this id is already attached or exists at the path.
    StorageDomainAlreadyExists = 365,
    /// The domain's type does not allow this use: a lease backend other than the one the
    /// domain was formatted with, or local leases on a network file system (without force).
    StorageDomainTypeError = 372,
    /// Wiping (zeroing) a volume failed; its data is still there.
    VolumesZeroingError = 374,
    /// The storage domain ran out of space (ENOSPC).
    NoSpaceLeftOnDomain = 397,
    /// The job was aborted.
    ActionStopped = 443,
    /// The copy's destination does not read back equal to its source.
    ImageVerificationError = 484,
    /// The volume lease is held by another job or host.
    AcquireLockFailure = 651,
    /// The requested generation is not the volume's generation.
    GenerationMismatch = 911,
    /// A malformed or out-of-range parameter (bad UUID, size, enum, missing or mistyped field).
    InvalidParameterException = 1000,
    /// The operation is not supported (for example Image.move with operation MOVE, or format conversion).
    UnsupportedOperation = 2009,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// An error as the wire carries it: a stable code and a human message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The stable kind.
    pub code: ErrorCode,
    /// What went wrong, for a person; never parsed by programs.
    pub message: String,
}

impl ApiError {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorCode::InvalidParameterException`].
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidParameterException, message)
    }

    /// Rebuilds an error received on the wire. Codes outside the table (JSON-RPC's own, such as
    /// -32601 for an unknown method) come back as [`ErrorCode::GeneralException`] with the
    /// original code kept in the message.
    pub fn from_error_object(err: &ErrorObject<'_>) -> ApiError {
        match ErrorCode::from_code(err.code()) {
            Some(code) => ApiError::new(code, err.message()),
            None => ApiError::new(
                ErrorCode::GeneralException,
                format!("JSON-RPC error {}: {}", err.code(), err.message()),
            ),
        }
    }
}

/// The `data` member of every sdm error object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct ErrorData {
    /// The stable error name (the [`ErrorCode`] variant).
    pub name: String,
}

/// The one place where sdm errors become JSON-RPC error objects.
impl From<ApiError> for ErrorObjectOwned {
    fn from(err: ApiError) -> ErrorObjectOwned {
        ErrorObject::owned(
            err.code.code(),
            err.message,
            Some(ErrorData {
                name: err.code.name().to_string(),
            }),
        )
    }
}

/// The error member of a finished job's info (`JobInfo.error`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct JobError {
    /// Numeric code from the error table.
    pub code: i32,
    /// Human message.
    pub message: String,
    /// Stable name of the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl From<&ApiError> for JobError {
    fn from(err: &ApiError) -> JobError {
        JobError {
            code: err.code.code(),
            message: err.message.clone(),
            name: Some(err.code.name().to_string()),
        }
    }
}

impl JobError {
    /// The error as an [`ApiError`] (unknown codes become GeneralException).
    pub fn to_api_error(&self) -> ApiError {
        match ErrorCode::from_code(self.code) {
            Some(code) => ApiError::new(code, self.message.clone()),
            None => ApiError::new(ErrorCode::GeneralException, self.message.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate code {}", code.code());
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
            assert!(!code.doc().is_empty());
        }
        assert_eq!(ErrorCode::GenerationMismatch.code(), 911);
        assert_eq!(
            ErrorCode::prepareIllegalVolumeError.name(),
            "prepareIllegalVolumeError"
        );
    }

    #[test]
    fn api_error_becomes_error_object_with_name() {
        let obj: ErrorObjectOwned = ApiError::new(ErrorCode::JobExists, "job x exists").into();
        assert_eq!(obj.code(), 69);
        assert_eq!(obj.message(), "job x exists");
        let data: ErrorData = serde_json::from_str(obj.data().unwrap().get()).unwrap();
        assert_eq!(data.name, "JobExists");
        assert_eq!(ApiError::from_error_object(&obj).code, ErrorCode::JobExists);
    }
}
