//! Errors of the frame codec. Every variant has a stable [`StompError::kind`] string so that
//! servers can count and log protocol violations without matching on messages.

/// A frame could not be decoded (or a limit was crossed). After any of these the byte stream
/// is out of step with frame boundaries, so the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StompError {
    /// A command or header line is longer than [`crate::Limits::max_line_bytes`].
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// A frame has more headers than [`crate::Limits::max_headers`].
    #[error("more than {limit} headers")]
    TooManyHeaders {
        /// The limit in force.
        limit: usize,
    },
    /// A body is (or is announced by `content-length` to be) larger than
    /// [`crate::Limits::max_body_bytes`].
    #[error("body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// Command line, headers and body together exceed [`crate::Limits::max_frame_bytes`].
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The command line is not a STOMP 1.2 command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A header line has no `:`.
    #[error("header line without ':'")]
    HeaderWithoutColon,
    /// A header line starts with `:`.
    #[error("header with an empty name")]
    EmptyHeaderName,
    /// A header value holds a raw `:` (it must be escaped as `\c`).
    #[error("header value with a raw ':'")]
    RawColon,
    /// A backslash not followed by one of `\`, `n`, `r`, `c`.
    #[error("invalid escape sequence in a header")]
    InvalidEscape,
    /// A command or header is not UTF-8.
    #[error("header is not UTF-8")]
    InvalidUtf8,
    /// `content-length` is not a decimal number of bytes.
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    /// The byte after a `content-length` body is not NUL.
    #[error("frame body is not followed by NUL")]
    MissingNul,
}

impl StompError {
    /// A stable snake_case name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            StompError::LineTooLong { .. } => "line_too_long",
            StompError::TooManyHeaders { .. } => "too_many_headers",
            StompError::BodyTooLarge { .. } => "body_too_large",
            StompError::FrameTooLarge { .. } => "frame_too_large",
            StompError::UnknownCommand(_) => "unknown_command",
            StompError::HeaderWithoutColon => "header_without_colon",
            StompError::EmptyHeaderName => "empty_header_name",
            StompError::RawColon => "raw_colon",
            StompError::InvalidEscape => "invalid_escape",
            StompError::InvalidUtf8 => "invalid_utf8",
            StompError::BadContentLength(_) => "bad_content_length",
            StompError::MissingNul => "missing_nul",
        }
    }

    /// True when the input crossed a configured limit (as opposed to being malformed).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            StompError::LineTooLong { .. }
                | StompError::TooManyHeaders { .. }
                | StompError::BodyTooLarge { .. }
                | StompError::FrameTooLarge { .. }
        )
    }
}

/// Longest piece of hostile input quoted back in an error.
pub(crate) const QUOTE_MAX: usize = 64;

/// The start of `bytes`, lossily as text, for error messages.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let end = bytes.len().min(QUOTE_MAX);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
