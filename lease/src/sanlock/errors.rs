//! sanlock return codes to [`LeaseErrorKind`]s, and the name and path checks done before any
//! call.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::api::Api;
use super::ffi;
use crate::{LeaseError, LeaseErrorKind};

/// Return codes that mean the daemon connection itself is gone.
pub(crate) fn is_connection_error(rc: i32) -> bool {
    [
        libc::EPIPE,
        libc::ECONNRESET,
        libc::ENOTCONN,
        libc::ECONNREFUSED,
        libc::EBADF,
    ]
    .iter()
    .any(|e| rc == -e)
}

/// The class of a libsanlock failure; `socket` is the daemon socket, to tell "no daemon"
/// from "no lease" when both come back as -ENOENT.
pub(crate) fn kind_of(socket: &Path, rc: i32) -> LeaseErrorKind {
    use LeaseErrorKind::*;
    match rc {
        _ if is_connection_error(rc) => Daemon,
        _ if rc == -libc::ENOSYS => Daemon,
        // libsanlock reports a missing socket as -ENOENT too.
        _ if rc == -libc::ENOENT && !socket.exists() => Daemon,
        _ if rc == -libc::ENOENT => NotFound,
        _ if rc == -libc::EEXIST || rc == -libc::EBUSY || rc == -libc::EAGAIN => Busy,
        ffi::SANLK_ACQUIRE_IDLIVE
        | ffi::SANLK_ACQUIRE_OWNED
        | ffi::SANLK_ACQUIRE_OTHER
        | ffi::SANLK_ACQUIRE_SHRETRY
        | ffi::SANLK_ACQUIRE_OWNED_RETRY
        | ffi::SANLK_ACQUIRE_LVER
        | ffi::SANLK_HOSTID_BUSY => Busy,
        ffi::SANLK_LEADER_MAGIC | ffi::SANLK_ACQUIRE_LOCKSPACE => NotFound,
        ffi::SANLK_AIO_TIMEOUT => Io,
        // acquire in a lockspace this host has not joined
        _ if rc == -libc::ENOSPC => NotFound,
        ffi::SANLK_LEADER_LOCKSPACE
        | ffi::SANLK_LEADER_RESOURCE
        | ffi::SANLK_ADDLS_INVALID_HOSTID => Invalid,
        _ if rc == -libc::EINVAL || rc == -libc::ENAMETOOLONG => Invalid,
        // -EIO, -ETIMEDOUT, DBLOCK/LEADER read/write/checksum errors, and anything new: the
        // storage did not answer as expected.
        _ => Io,
    }
}

/// `what: <sanlock's text> (<rc>)`, with the socket path for daemon failures.
pub(crate) fn map_rc(api: &Api, socket: &Path, what: &str, rc: i32) -> LeaseError {
    let kind = kind_of(socket, rc);
    let mut msg = format!("{what}: {} ({rc})", api.strerror(rc));
    if kind == LeaseErrorKind::Daemon {
        msg.push_str(&format!(" [daemon socket {}]", socket.display()));
    }
    if rc == -libc::ENOSPC {
        // sanlock's word for "no such lockspace", which its text does not say.
        msg.push_str(
            " [the lockspace is not joined on this host: never joined, or the daemon dropped \
             it after failing to renew it; detach and attach the domain to join it again]",
        );
    }
    LeaseError::with_code(kind, msg, rc)
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), LeaseError> {
    if name.is_empty() || name.len() > ffi::SANLK_NAME_LEN || name.contains('\0') {
        return Err(LeaseError::new(
            LeaseErrorKind::Invalid,
            format!(
                "{what} {name:?} must be 1..={} bytes without NUL",
                ffi::SANLK_NAME_LEN
            ),
        ));
    }
    Ok(())
}

/// The path bytes sanlock gets: absolute (the daemon has its own cwd), no NUL, and short
/// enough that sanlock's escaped form (':' '\\' ' ' doubled) still fits its 1024-byte field.
pub(crate) fn check_path(path: &Path) -> Result<Vec<u8>, LeaseError> {
    let abs = std::path::absolute(path).map_err(|e| LeaseError::io("resolve", path, e))?;
    let bytes = abs.as_os_str().as_bytes().to_vec();
    let escaped = bytes.len()
        + bytes
            .iter()
            .filter(|b| matches!(b, b':' | b'\\' | b' '))
            .count();
    if bytes.contains(&0) || escaped >= ffi::SANLK_PATH_LEN {
        return Err(LeaseError::new(
            LeaseErrorKind::Invalid,
            format!("path {} is too long for sanlock", path.display()),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("lockspace", &"a".repeat(48)).is_ok());
        assert_eq!(
            check_name("x", &"a".repeat(49)).unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
        assert_eq!(
            check_name("x", "").unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
        assert_eq!(
            check_name("x", "a\0b").unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
        let rel = check_path(Path::new("rel/x.lease")).unwrap();
        assert_eq!(rel[0], b'/');
        let long = format!("/{}", ":".repeat(600));
        assert_eq!(
            check_path(Path::new(&long)).unwrap_err().kind(),
            LeaseErrorKind::Invalid
        );
    }

    #[test]
    fn return_codes_map_to_kinds() {
        let k = |rc| kind_of(Path::new("/nonexistent-run-dir/sanlock.sock"), rc);
        assert_eq!(k(-libc::EEXIST), LeaseErrorKind::Busy);
        assert_eq!(k(ffi::SANLK_ACQUIRE_IDLIVE), LeaseErrorKind::Busy);
        assert_eq!(k(ffi::SANLK_ACQUIRE_OWNED_RETRY), LeaseErrorKind::Busy);
        assert_eq!(k(ffi::SANLK_LEADER_MAGIC), LeaseErrorKind::NotFound);
        assert_eq!(k(ffi::SANLK_AIO_TIMEOUT), LeaseErrorKind::Io);
        assert_eq!(k(-libc::EPIPE), LeaseErrorKind::Daemon);
        assert_eq!(k(-libc::ECONNREFUSED), LeaseErrorKind::Daemon);
        // -ENOENT with no socket means "no daemon", not "no lease".
        assert_eq!(k(-libc::ENOENT), LeaseErrorKind::Daemon);
        assert_eq!(k(ffi::SANLK_LEADER_LOCKSPACE), LeaseErrorKind::Invalid);
    }
}
