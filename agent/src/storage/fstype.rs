//! Is a directory on a file system other hosts may share? Asked before a domain is formatted
//! or attached with local leases: an OFD lock says nothing to another host, so a `local`
//! domain on NFS, SMB, GlusterFS (FUSE), Ceph and the like could be written by two hosts at
//! once. Decided by `statfs(2)`'s `f_type`, which names the file system the kernel really
//! serves the directory from (a bind mount or a symlinked path cannot hide it).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::StorageError;

/// `f_type` values of file systems that can be shared between hosts, with their names.
/// FUSE counts as shared: GlusterFS, CephFS-fuse, sshfs and s3 file systems are FUSE, and its
/// `f_type` does not tell them from local ones.
const SHARED: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE (GlusterFS, CephFS-fuse, sshfs, ...)"),
    (0x00C3_6400, "Ceph"),
    (0x0116_1970, "GFS2"),
    (0x7461_636F, "OCFS2"),
    (0x0102_1997, "9P"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "AFS"),
    (0x7375_7245, "Coda"),
    (0x564C, "NCP"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
    (0x1983_0326, "BeeGFS"),
    (0x2003_0528, "OrangeFS"),
];

/// The name of the shared file system `path` is on, or None for a local one.
pub fn shared_fs(path: &Path) -> Result<Option<&'static str>, StorageError> {
    let f_type = statfs_type(path)?;
    Ok(classify(f_type))
}

fn classify(f_type: i64) -> Option<&'static str> {
    // f_type is a signed word on some ABIs: compare the low 32 bits, as the magics are.
    let t = f_type & 0xFFFF_FFFF;
    SHARED.iter().find(|(m, _)| *m == t).map(|(_, n)| *n)
}

fn statfs_type(path: &Path) -> Result<i64, StorageError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StorageError::Invalid(format!("{} contains a NUL", path.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statfs only writes into it.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(StorageError::io(
            "statfs",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: statfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64, other widths elsewhere
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_magics_are_shared_local_ones_are_not() {
        assert_eq!(classify(0x6969), Some("NFS"));
        assert!(classify(0x6573_5546).is_some_and(|n| n.starts_with("FUSE")));
        // Sign-extended as a 32-bit signed f_type would be.
        assert_eq!(classify(0xFF53_4D42_u32 as i32 as i64), Some("CIFS"));
        for local in [0xEF53, 0x0102_1994, 0x5846_5342, 0x9123_683E] {
            assert_eq!(classify(local), None, "{local:#x}"); // ext4, tmpfs, xfs, btrfs
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(shared_fs(dir.path()).is_ok());
        assert!(shared_fs(&dir.path().join("missing")).is_err());
    }
}
