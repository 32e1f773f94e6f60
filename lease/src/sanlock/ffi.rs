//! Hand-written declarations of the libsanlock (3.8) structs and constants that sdm uses.
//!
//! The structs mirror `sanlock.h` field for field; `tests::layout_*` pin their sizes and
//! offsets, and `tests::layout_matches_c_headers` compares them with a C compiler when one is
//! installed. The functions are loaded at run time (`api.rs`).
//!
//! Return-code convention (libsanlock's): `0` or a positive count is success, a negative value
//! is either `-errno` or one of the `SANLK_*` codes from `sanlock_rv.h` (-201 and below).

use std::ffi::c_char;

pub const SANLK_NAME_LEN: usize = 48;
pub const SANLK_PATH_LEN: usize = 1024;

// sanlk_resource.flags / sanlk_lockspace.flags
pub const SANLK_RES_ALIGN1M: u32 = 0x10;
pub const SANLK_RES_SECTOR512: u32 = 0x100;
pub const SANLK_LSF_ALIGN1M: u32 = 0x10;
pub const SANLK_LSF_SECTOR512: u32 = 0x100;

// sanlock_acquire flags
pub const SANLK_ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
// sanlock_rem_lockspace flags
pub const SANLK_REM_UNUSED: u32 = 0x2;
// sanlock_inq_lockspace flags
pub const SANLK_INQ_WAIT: u32 = 0x1;

// sanlk_host.flags & SANLK_HOST_MASK (UNKNOWN, LIVE and FAIL only appear in tests: any state
// other than FREE/DEAD counts as holding a lease).
#[cfg_attr(not(test), allow(dead_code))]
pub const SANLK_HOST_UNKNOWN: u32 = 1;
pub const SANLK_HOST_FREE: u32 = 2;
#[cfg_attr(not(test), allow(dead_code))]
pub const SANLK_HOST_LIVE: u32 = 3;
#[cfg_attr(not(test), allow(dead_code))]
pub const SANLK_HOST_FAIL: u32 = 4;
pub const SANLK_HOST_DEAD: u32 = 5;
pub const SANLK_HOST_MASK: u32 = 0xf;

// sanlock_rv.h codes that the error mapping distinguishes.
pub const SANLK_AIO_TIMEOUT: i32 = -202;
pub const SANLK_LEADER_MAGIC: i32 = -223;
pub const SANLK_LEADER_LOCKSPACE: i32 = -226;
pub const SANLK_LEADER_RESOURCE: i32 = -227;
pub const SANLK_ADDLS_INVALID_HOSTID: i32 = -231;
pub const SANLK_ACQUIRE_LVER: i32 = -240;
pub const SANLK_ACQUIRE_LOCKSPACE: i32 = -241;
pub const SANLK_ACQUIRE_IDLIVE: i32 = -243;
pub const SANLK_ACQUIRE_OWNED: i32 = -244;
pub const SANLK_ACQUIRE_OTHER: i32 = -245;
pub const SANLK_ACQUIRE_SHRETRY: i32 = -246;
pub const SANLK_ACQUIRE_OWNED_RETRY: i32 = -247;
pub const SANLK_HOSTID_BUSY: i32 = -262;

/// `struct sanlk_disk`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkDisk {
    pub path: [c_char; SANLK_PATH_LEN],
    pub offset: u64,
    pub pad1: u32,
    pub pad2: u32,
}

/// `struct sanlk_resource` (without the trailing flexible `disks[]` array).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkResource {
    pub lockspace_name: [c_char; SANLK_NAME_LEN],
    pub name: [c_char; SANLK_NAME_LEN],
    pub lver: u64,
    pub data64: u64,
    pub data32: u32,
    pub unused: u32,
    pub flags: u32,
    pub num_disks: u32,
}

/// A `struct sanlk_resource` followed by exactly one `struct sanlk_disk`, which is how C
/// callers lay out a one-disk resource (`disks[0]` starts right after `num_disks`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkResource1 {
    pub res: SanlkResource,
    pub disk: SanlkDisk,
}

/// `struct sanlk_lockspace`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkLockspace {
    pub name: [c_char; SANLK_NAME_LEN],
    pub host_id: u64,
    pub flags: u32,
    pub host_id_disk: SanlkDisk,
}

/// `struct sanlk_host`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SanlkHost {
    pub host_id: u64,
    pub generation: u64,
    pub timestamp: u64,
    pub io_timeout: u32,
    pub flags: u32,
}

/// Copies `s` into a fixed C char array. Callers validate lengths first (names may fill the
/// whole array without a NUL, as `sanlock.h` allows; paths must leave room for one).
fn fill(dst: &mut [c_char], s: &[u8]) {
    debug_assert!(s.len() <= dst.len());
    for (d, b) in dst.iter_mut().zip(s) {
        *d = *b as c_char;
    }
}

impl SanlkDisk {
    pub fn new(path: &[u8], offset: u64) -> Self {
        debug_assert!(path.len() < SANLK_PATH_LEN);
        let mut d = SanlkDisk {
            path: [0; SANLK_PATH_LEN],
            offset,
            pad1: 0,
            pad2: 0,
        };
        fill(&mut d.path, path);
        d
    }
}

impl SanlkResource1 {
    pub fn new(lockspace: &str, name: &str, path: &[u8], offset: u64, flags: u32) -> Self {
        let mut res = SanlkResource {
            lockspace_name: [0; SANLK_NAME_LEN],
            name: [0; SANLK_NAME_LEN],
            lver: 0,
            data64: 0,
            data32: 0,
            unused: 0,
            flags,
            num_disks: 1,
        };
        fill(&mut res.lockspace_name, lockspace.as_bytes());
        fill(&mut res.name, name.as_bytes());
        SanlkResource1 {
            res,
            disk: SanlkDisk::new(path, offset),
        }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut SanlkResource {
        (self as *mut SanlkResource1).cast()
    }
}

impl SanlkLockspace {
    pub fn new(name: &str, host_id: u64, path: &[u8], offset: u64, flags: u32) -> Self {
        let mut ls = SanlkLockspace {
            name: [0; SANLK_NAME_LEN],
            host_id,
            flags,
            host_id_disk: SanlkDisk::new(path, offset),
        };
        fill(&mut ls.name, name.as_bytes());
        ls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layout_sanlk_disk() {
        assert_eq!(size_of::<SanlkDisk>(), 1040);
        assert_eq!(align_of::<SanlkDisk>(), 8);
        assert_eq!(offset_of!(SanlkDisk, offset), 1024);
        assert_eq!(offset_of!(SanlkDisk, pad1), 1032);
        assert_eq!(offset_of!(SanlkDisk, pad2), 1036);
    }

    #[test]
    fn layout_sanlk_resource() {
        assert_eq!(size_of::<SanlkResource>(), 128);
        assert_eq!(offset_of!(SanlkResource, name), 48);
        assert_eq!(offset_of!(SanlkResource, lver), 96);
        assert_eq!(offset_of!(SanlkResource, data64), 104);
        assert_eq!(offset_of!(SanlkResource, data32), 112);
        assert_eq!(offset_of!(SanlkResource, unused), 116);
        assert_eq!(offset_of!(SanlkResource, flags), 120);
        assert_eq!(offset_of!(SanlkResource, num_disks), 124);
        // disks[0] follows immediately, as in C.
        assert_eq!(offset_of!(SanlkResource1, disk), 128);
        assert_eq!(size_of::<SanlkResource1>(), 128 + 1040);
    }

    #[test]
    fn layout_sanlk_lockspace_and_host() {
        assert_eq!(size_of::<SanlkLockspace>(), 1104);
        assert_eq!(offset_of!(SanlkLockspace, host_id), 48);
        assert_eq!(offset_of!(SanlkLockspace, flags), 56);
        assert_eq!(offset_of!(SanlkLockspace, host_id_disk), 64);
        assert_eq!(size_of::<SanlkHost>(), 32);
        assert_eq!(offset_of!(SanlkHost, generation), 8);
        assert_eq!(offset_of!(SanlkHost, timestamp), 16);
        assert_eq!(offset_of!(SanlkHost, io_timeout), 24);
        assert_eq!(offset_of!(SanlkHost, flags), 28);
    }

    /// Compiles a probe against the installed headers and compares every size and offset.
    /// Skipped (with a message) when there is no C compiler or no sanlock.h.
    #[test]
    fn layout_matches_c_headers() {
        if !std::path::Path::new("/usr/include/sanlock.h").exists() {
            eprintln!("skip: /usr/include/sanlock.h not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("probe.c");
        let exe = dir.path().join("probe");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
#include <sanlock.h>
#define P(e) printf("%zu\n", (size_t)(e))
int main(void) {
  P(sizeof(struct sanlk_disk)); P(offsetof(struct sanlk_disk, offset));
  P(offsetof(struct sanlk_disk, pad2));
  P(sizeof(struct sanlk_resource)); P(offsetof(struct sanlk_resource, lver));
  P(offsetof(struct sanlk_resource, flags)); P(offsetof(struct sanlk_resource, num_disks));
  P(offsetof(struct sanlk_resource, disks));
  P(sizeof(struct sanlk_lockspace)); P(offsetof(struct sanlk_lockspace, host_id));
  P(offsetof(struct sanlk_lockspace, flags)); P(offsetof(struct sanlk_lockspace, host_id_disk));
  P(sizeof(struct sanlk_host)); P(offsetof(struct sanlk_host, io_timeout));
  P(offsetof(struct sanlk_host, flags));
  return 0;
}
"#,
        )
        .unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = std::process::Command::new(&cc)
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("skip: cannot compile the layout probe with {cc}: {other:?}");
                return;
            }
        }
        let out = std::process::Command::new(&exe).output().unwrap();
        let got: Vec<usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let want = vec![
            size_of::<SanlkDisk>(),
            offset_of!(SanlkDisk, offset),
            offset_of!(SanlkDisk, pad2),
            size_of::<SanlkResource>(),
            offset_of!(SanlkResource, lver),
            offset_of!(SanlkResource, flags),
            offset_of!(SanlkResource, num_disks),
            offset_of!(SanlkResource1, disk),
            size_of::<SanlkLockspace>(),
            offset_of!(SanlkLockspace, host_id),
            offset_of!(SanlkLockspace, flags),
            offset_of!(SanlkLockspace, host_id_disk),
            size_of::<SanlkHost>(),
            offset_of!(SanlkHost, io_timeout),
            offset_of!(SanlkHost, flags),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn constructors_fill_names_and_paths() {
        let r = SanlkResource1::new("ls", "vol", b"/a/b", 4096, SANLK_RES_ALIGN1M);
        assert_eq!(
            r.res.lockspace_name[..3],
            [b'l' as c_char, b's' as c_char, 0]
        );
        assert_eq!(r.res.num_disks, 1);
        assert_eq!(r.disk.offset, 4096);
        assert_eq!(r.disk.path[4], 0);
        // A 48-byte name fills the array without a terminator, which sanlock accepts.
        let long = "x".repeat(SANLK_NAME_LEN);
        let r = SanlkResource1::new(&long, &long, b"/p", 0, 0);
        assert!(r.res.name.iter().all(|&c| c == b'x' as c_char));
    }
}
