//! Failpoints at the IO boundary (feature `failpoints`): injected errnos and short transfers.

use std::io;

/// A fault injected at the IO boundary by a failpoint.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(super) enum Inject {
    Errno(i32),
    /// Transfer only part of the request, as a real short read/write would.
    Short,
}

#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub(super) fn inject(point: &str) -> Option<Inject> {
    fail::fail_point!(point, |arg: Option<String>| Some(parse_inject(
        arg.as_deref()
    )));
    None
}

/// The `sdm_io::fsync` failpoint: an injected fdatasync failure.
#[cfg_attr(not(feature = "failpoints"), allow(clippy::unnecessary_wraps))]
pub(crate) fn inject_fsync() -> io::Result<()> {
    match inject("sdm_io::fsync") {
        Some(Inject::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        Some(Inject::Short) => Err(io::Error::from_raw_os_error(libc::EIO)),
        None => Ok(()),
    }
}

#[cfg(feature = "failpoints")]
fn parse_inject(arg: Option<&str>) -> Inject {
    let errno = match arg.map(str::trim).unwrap_or("EIO") {
        "short" => return Inject::Short,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "EINTR" => libc::EINTR,
        "EAGAIN" => libc::EAGAIN,
        "EINVAL" => libc::EINVAL,
        "EOPNOTSUPP" => libc::EOPNOTSUPP,
        "EROFS" => libc::EROFS,
        "EPERM" => libc::EPERM,
        other => other.parse().unwrap_or(libc::EIO),
    };
    Inject::Errno(errno)
}
