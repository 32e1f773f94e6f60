//! libsanlock, loaded at run time with `dlopen` instead of linked.
//!
//! One binary then serves hosts with and without sanlock: the local backend never touches the
//! library, and the sanlock backend reports a clear `Unavailable` error naming the missing
//! library and its package instead of the whole program failing to start. The prototypes are
//! copied by hand from `sanlock_resource.h`, `sanlock_admin.h` and `sanlock_direct.h` (3.8);
//! the structs they take are in `ffi.rs`, layout-tested. Every call is wrapped in a small safe
//! method, so the rest of the crate never touches raw pointers.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use super::ffi::{SanlkHost, SanlkLockspace, SanlkResource, SanlkResource1};

/// The run-time name (SONAME) of libsanlock, shipped by Debian's `libsanlock1` package (a
/// dependency of `sanlock`) and by the `sanlock-lib` RPM.
pub const LIBRARY: &str = "libsanlock.so.1";

type RegisterFn = unsafe extern "C" fn() -> c_int;
type AcquireFn = unsafe extern "C" fn(
    sock: c_int,
    pid: c_int,
    flags: u32,
    res_count: c_int,
    res_args: *mut *mut SanlkResource,
    opt_in: *mut c_void,
) -> c_int;
type ReleaseFn = unsafe extern "C" fn(
    sock: c_int,
    pid: c_int,
    flags: u32,
    res_count: c_int,
    res_args: *mut *mut SanlkResource,
) -> c_int;
type AddLockspaceFn =
    unsafe extern "C" fn(ls: *mut SanlkLockspace, flags: u32, io_timeout: u32) -> c_int;
type LockspaceFn = unsafe extern "C" fn(ls: *mut SanlkLockspace, flags: u32) -> c_int;
type GetHostsFn = unsafe extern "C" fn(
    ls_name: *const c_char,
    host_id: u64,
    hss: *mut *mut SanlkHost,
    hss_count: *mut c_int,
    flags: u32,
) -> c_int;
type WriteLockspaceFn = unsafe extern "C" fn(
    ls: *mut SanlkLockspace,
    max_hosts: c_int,
    flags: u32,
    io_timeout: u32,
) -> c_int;
type WriteResourceFn = unsafe extern "C" fn(
    res: *mut SanlkResource,
    max_hosts: c_int,
    num_hosts: c_int,
    flags: u32,
) -> c_int;
type ReadOwnersFn = unsafe extern "C" fn(
    res: *mut SanlkResource,
    flags: u32,
    hss: *mut *mut SanlkHost,
    hss_count: *mut c_int,
) -> c_int;
type StrerrorFn = unsafe extern "C" fn(rv: c_int) -> *const c_char;

/// The loaded library and the entry points sdm uses.
pub struct Api {
    register: RegisterFn,
    acquire: AcquireFn,
    release: ReleaseFn,
    add_lockspace_timeout: AddLockspaceFn,
    inq_lockspace: LockspaceFn,
    rem_lockspace: LockspaceFn,
    get_hosts: GetHostsFn,
    write_lockspace: WriteLockspaceFn,
    write_resource: WriteResourceFn,
    read_resource_owners: ReadOwnersFn,
    strerror: StrerrorFn,
    /// Keeps the code the pointers above point into mapped; declared last so it is dropped
    /// after them (only test-loaded copies are ever dropped).
    _lib: Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// libsanlock, loaded on first use and kept for the life of the process; the error says
/// which library or symbol is missing.
pub fn get() -> Result<&'static Api, &'static str> {
    API.get_or_init(|| Api::load(LIBRARY))
        .as_ref()
        .map_err(String::as_str)
}

/// Looks up `name` and copies the function pointer out of the symbol.
///
/// # Safety
/// `T` must be the function's true C prototype.
unsafe fn sym<T: Copy>(lib: &Library, file: &str, name: &str) -> Result<T, String> {
    // SAFETY: the caller guarantees that T matches the symbol's prototype.
    let s = unsafe { lib.get::<T>(name.as_bytes()) }
        .map_err(|e| format!("{file} has no {name} ({e}); sdm needs sanlock 3.8 or later"))?;
    Ok(*s)
}

impl Api {
    /// Loads `file` (normally [`LIBRARY`]) and resolves every symbol at once, so a library
    /// too old or not libsanlock at all fails here and not halfway through an operation.
    pub fn load(file: &str) -> Result<Api, String> {
        // SAFETY: loading runs the library's initialisers. libsanlock's only set up its own
        // static state; RTLD_LOCAL keeps its symbols out of the global namespace.
        let lib = unsafe { Library::open(Some(file), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| format!("cannot load {file}: {e}"))?;
        // SAFETY: each `sym` call names a function whose prototype is the type of the field
        // it fills, copied from sanlock's headers.
        unsafe {
            Ok(Api {
                register: sym(&lib, file, "sanlock_register")?,
                acquire: sym(&lib, file, "sanlock_acquire")?,
                release: sym(&lib, file, "sanlock_release")?,
                add_lockspace_timeout: sym(&lib, file, "sanlock_add_lockspace_timeout")?,
                inq_lockspace: sym(&lib, file, "sanlock_inq_lockspace")?,
                rem_lockspace: sym(&lib, file, "sanlock_rem_lockspace")?,
                get_hosts: sym(&lib, file, "sanlock_get_hosts")?,
                write_lockspace: sym(&lib, file, "sanlock_write_lockspace")?,
                write_resource: sym(&lib, file, "sanlock_write_resource")?,
                read_resource_owners: sym(&lib, file, "sanlock_read_resource_owners")?,
                strerror: sym(&lib, file, "sanlock_strerror")?,
                _lib: lib,
            })
        }
    }

    /// `sanlock_register()`: opens a registration connection to the daemon. The daemon
    /// releases every lease acquired through it when the connection closes.
    pub fn register(&self) -> Result<OwnedFd, i32> {
        // SAFETY: no arguments; libsanlock returns a fresh socket fd or a negative error.
        let rc = unsafe { (self.register)() };
        if rc < 0 {
            return Err(rc);
        }
        // SAFETY: rc is a newly created socket that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(rc) })
    }

    /// `sanlock_acquire(sock, -1, flags, 1, [res], NULL)` on a registration connection.
    pub fn acquire(&self, sock: BorrowedFd<'_>, res: &mut SanlkResource1, flags: u32) -> i32 {
        let mut args = [res.as_mut_ptr()];
        // SAFETY: `args` holds one pointer to a live, properly laid out resource with exactly
        // `num_disks == 1` disk following it; the pid is ignored when a registered socket is
        // given (-1). libsanlock does not keep the pointers after returning.
        unsafe {
            (self.acquire)(
                sock.as_raw_fd(),
                -1,
                flags,
                1,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    }

    /// `sanlock_release(sock, -1, 0, 1, [res])` on the connection that acquired it.
    pub fn release(&self, sock: BorrowedFd<'_>, res: &mut SanlkResource1) -> i32 {
        let mut args = [res.as_mut_ptr()];
        // SAFETY: as in `acquire`: one valid one-disk resource, not retained by the library.
        unsafe { (self.release)(sock.as_raw_fd(), -1, 0, 1, args.as_mut_ptr()) }
    }

    /// `sanlock_add_lockspace_timeout`: blocks until the host id lease is held (or fails).
    pub fn add_lockspace(&self, ls: &mut SanlkLockspace, io_timeout: u32) -> i32 {
        // SAFETY: `ls` is a valid, exclusively borrowed lockspace struct for the whole call.
        unsafe { (self.add_lockspace_timeout)(ls, 0, io_timeout) }
    }

    /// `sanlock_inq_lockspace`
    pub fn inq_lockspace(&self, ls: &mut SanlkLockspace, flags: u32) -> i32 {
        // SAFETY: `ls` is a valid, exclusively borrowed lockspace struct for the whole call.
        unsafe { (self.inq_lockspace)(ls, flags) }
    }

    /// `sanlock_rem_lockspace`
    pub fn rem_lockspace(&self, ls: &mut SanlkLockspace, flags: u32) -> i32 {
        // SAFETY: `ls` is a valid, exclusively borrowed lockspace struct for the whole call.
        unsafe { (self.rem_lockspace)(ls, flags) }
    }

    /// `sanlock_write_lockspace(ls, 0, 0, io_timeout)`: formats the delta-lease area.
    pub fn write_lockspace(&self, ls: &mut SanlkLockspace, io_timeout: u32) -> i32 {
        // SAFETY: `ls` is a valid, exclusively borrowed lockspace struct for the whole call.
        unsafe { (self.write_lockspace)(ls, 0, 0, io_timeout) }
    }

    /// `sanlock_write_resource(res, 0, 0, 0)`: formats a paxos lease area.
    pub fn write_resource(&self, res: &mut SanlkResource1) -> i32 {
        // SAFETY: a valid one-disk resource, exclusively borrowed for the whole call.
        unsafe { (self.write_resource)(res.as_mut_ptr(), 0, 0, 0) }
    }

    /// `sanlock_read_resource_owners`: fills `res.res.lver` and returns the owner records
    /// (host id and the generation of that host's lockspace membership when it acquired).
    pub fn read_resource_owners(&self, res: &mut SanlkResource1) -> Result<Vec<SanlkHost>, i32> {
        let mut hss: *mut SanlkHost = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: valid resource and out-pointers, all live for the call; on success the
        // library stores a malloc'ed array (or NULL) in `hss`, which `take_hosts` frees.
        let rc = unsafe { (self.read_resource_owners)(res.as_mut_ptr(), 0, &mut hss, &mut count) };
        let hosts = take_hosts(hss, count);
        if rc < 0 {
            return Err(rc);
        }
        Ok(hosts)
    }

    /// `sanlock_get_hosts(ls_name, 0, ...)`: every host this daemon has seen in the lockspace.
    pub fn get_hosts(&self, ls_name: &CStr) -> Result<Vec<SanlkHost>, i32> {
        let mut hss: *mut SanlkHost = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: NUL-terminated name and valid out-pointers; the returned array is freed by
        // `take_hosts`.
        let rc = unsafe { (self.get_hosts)(ls_name.as_ptr(), 0, &mut hss, &mut count, 0) };
        let hosts = take_hosts(hss, count);
        if rc < 0 {
            return Err(rc);
        }
        Ok(hosts)
    }

    /// Text for a libsanlock return code: sanlock's own table for `SANLK_*` codes, the OS text
    /// for `-errno`.
    pub fn strerror(&self, rc: i32) -> String {
        if rc > -200 {
            return std::io::Error::from_raw_os_error(-rc).to_string();
        }
        // SAFETY: sanlock_strerror returns a pointer to a static string (or NULL).
        let p = unsafe { (self.strerror)(rc) };
        if p.is_null() {
            return format!("sanlock error {rc}");
        }
        // SAFETY: non-NULL pointers from sanlock_strerror are static NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Takes ownership of a `malloc`ed `sanlk_host` array returned by libsanlock.
fn take_hosts(hss: *mut SanlkHost, count: c_int) -> Vec<SanlkHost> {
    if hss.is_null() {
        return Vec::new();
    }
    let out = match usize::try_from(count) {
        Ok(n) if n > 0 => {
            // SAFETY: libsanlock allocated `count` contiguous, initialised sanlk_host records.
            unsafe { std::slice::from_raw_parts(hss, n) }.to_vec()
        }
        _ => Vec::new(),
    };
    // SAFETY: the array came from libsanlock's malloc (the same libc) and is freed exactly
    // once, here.
    unsafe { libc::free(hss.cast()) };
    out
}

/// A NUL-terminated copy of a lockspace name for the calls that take `const char *`.
pub fn c_name(name: &str) -> CString {
    // Names are validated (no NUL) before they get here.
    CString::new(name).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named() {
        let e = Api::load("libsanlock-sdm-test-missing.so.1")
            .err()
            .expect("no such library");
        assert!(
            e.contains("cannot load libsanlock-sdm-test-missing.so.1"),
            "{e}"
        );
    }

    #[test]
    fn a_library_without_the_symbols_is_refused() {
        // libc is always there and has none of sanlock's symbols.
        let e = Api::load("libc.so.6")
            .err()
            .expect("libc is not libsanlock");
        assert!(e.contains("has no sanlock_register"), "{e}");
    }

    #[test]
    fn strerror_texts_when_installed() {
        let Ok(api) = get() else {
            eprintln!("skip: {LIBRARY} is not installed");
            return;
        };
        assert!(api.strerror(-libc::EEXIST).contains("exists"));
        assert!(!api
            .strerror(super::super::ffi::SANLK_ACQUIRE_IDLIVE)
            .is_empty());
    }
}
