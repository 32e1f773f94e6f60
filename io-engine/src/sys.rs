//! Small safe wrappers around the syscalls and ioctls of the data path.
//!
//! Every `unsafe` of the crate outside the ring lives here. The blocking wrappers retry EINTR
//! and EAGAIN themselves; short transfers are returned to the caller, which owns the retry.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

// Block-layer ioctls missing from libc (linux/fs.h): _IO(0x12, n) and _IOR(0x12, 114, u64).
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN))
}

/// Runs `f` until it fails with something other than EINTR/EAGAIN.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if retryable(&e) => continue,
            r => return r,
        }
    }
}

pub(crate) fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    retry(|| {
        // SAFETY: the kernel writes at most buf.len() bytes into the exclusively borrowed buf.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

pub(crate) fn pwrite(fd: RawFd, buf: &[u8], off: u64) -> io::Result<usize> {
    retry(|| {
        // SAFETY: the kernel reads at most buf.len() bytes from the borrowed buf.
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as libc::off_t) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

pub(crate) fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    retry(|| {
        // SAFETY: fallocate takes no pointers.
        cvt(unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) })
    })
    .map(drop)
}

pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    // An fsync error is final: after a failed writeback the page state is undefined, so a
    // retry could report success for data that never reached the disk. Only EINTR, which
    // means nothing happened, is retried.
    loop {
        // SAFETY: fdatasync takes no pointers.
        match cvt(unsafe { libc::fdatasync(fd) }) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

fn lseek(fd: RawFd, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek takes no pointers.
    let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Start of the first data at or after `off`, None when only a hole follows.
pub(crate) fn seek_data(fd: RawFd, off: u64) -> io::Result<Option<u64>> {
    lseek(fd, off, libc::SEEK_DATA)
}

/// Start of the first hole at or after `off` (EOF counts as a hole).
pub(crate) fn seek_hole(fd: RawFd, off: u64) -> io::Result<Option<u64>> {
    lseek(fd, off, libc::SEEK_HOLE)
}

pub(crate) fn blk_size(fd: RawFd) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for that.
    cvt(unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) })?;
    Ok(size)
}

pub(crate) fn blk_logical_block_size(fd: RawFd) -> io::Result<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid for that.
    cvt(unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size as *mut libc::c_int) })?;
    Ok(size as u64)
}

fn blk_range_ioctl(fd: RawFd, req: libc::c_ulong, off: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [off, len];
    retry(|| {
        // SAFETY: these ioctls read two u64 (start, length) through the pointer.
        cvt(unsafe { libc::ioctl(fd, req, range.as_ptr()) })
    })
    .map(drop)
}

/// BLKZEROOUT: the device reads back zeros over the range afterwards.
pub(crate) fn blk_zeroout(fd: RawFd, off: u64, len: u64) -> io::Result<()> {
    blk_range_ioctl(fd, BLKZEROOUT, off, len)
}

pub(crate) fn blk_discard(fd: RawFd, off: u64, len: u64) -> io::Result<()> {
    blk_range_ioctl(fd, BLKDISCARD, off, len)
}

/// O_DIRECT alignment (memory, offset) from STATX_DIOALIGN. None when the kernel or the
/// filesystem does not report it; Some((0, 0)) means the file does not support O_DIRECT.
pub(crate) fn dio_align(fd: RawFd) -> io::Result<Option<(u32, u32)>> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated literal and stx is valid for writes of its size.
    cvt(unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    })?;
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
}

/// Whether the file lives on tmpfs or ramfs.
pub(crate) fn is_memory_fs(fd: RawFd) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: statfs is plain old data; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes of its size.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// Drops clean cached pages of the file, so that a read-back really reads the medium.
pub(crate) fn fadvise_dontneed(fd: RawFd) {
    // SAFETY: posix_fadvise takes no pointers. Failure only costs a cached read-back.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Page-aligned anonymous memory, zero-filled when made and returned to the system when
/// dropped: the engine's IO buffers, public for tools that must do IO the same way (the
/// bench).
///
/// Page alignment satisfies every O_DIRECT memory alignment seen in practice (512 or 4096).
/// Large buffers are also 2 MiB aligned and asked to be backed by transparent huge pages:
/// each chunk is then physically contiguous, so a 1 MiB request reaches the device as one
/// DMA segment instead of 256 (virtio-blk allows 254 per request, so 4 KiB pages split
/// every 1 MiB request in two).
///
/// Whoever hands [`as_ptr`](Self::as_ptr) to the kernel for asynchronous IO must keep the
/// buffer alive until that IO is reaped.
pub struct PageBuf {
    /// The whole mapping (including alignment slack), unmapped on drop.
    map: NonNull<u8>,
    map_len: usize,
    ptr: NonNull<u8>,
    len: usize,
}

const HUGE: usize = 2 << 20;

impl PageBuf {
    /// `len` bytes (at least one). The size arithmetic is checked, so the mapping always
    /// covers `len` bytes.
    pub fn new(len: usize) -> io::Result<PageBuf> {
        let len = len.max(1);
        let huge = len >= HUGE;
        let map_len = if huge {
            len.checked_add(HUGE)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?
        } else {
            len
        };
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        let mut ptr = map;
        if huge {
            let skip = (HUGE - map.as_ptr() as usize % HUGE) % HUGE;
            ptr = NonNull::new(map.as_ptr().wrapping_add(skip)).unwrap_or(map);
            // SAFETY: the range lies inside our own mapping. Without huge pages (THP off)
            // the advice fails harmlessly and 4 KiB pages are used.
            unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        }
        Ok(PageBuf {
            map,
            map_len,
            ptr,
            len,
        })
    }

    /// Start of the buffer, for IO requests.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a buffer has at least one byte); here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised (zero-filled by mmap) bytes, mapped until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: map/map_len describe the mapping made in new(), unmapped only here.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// Makes a child started by `cmd` get SIGKILL when the thread that spawns it dies, so a
/// helper process never outlives the operation (or the agent) that started it.
pub(crate) fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
    // getppid and _exit, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_buf_is_aligned_zeroed_and_bounded() {
        let mut b = PageBuf::new(3 << 20).unwrap();
        assert_eq!(b.len(), 3 << 20);
        assert_eq!(b.as_ptr() as usize % HUGE, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[(3 << 20) - 1] = 7;
        assert_eq!(b.as_slice()[(3 << 20) - 1], 7);
        let small = PageBuf::new(0).unwrap();
        assert_eq!((small.len(), small.as_ptr() as usize % 4096), (1, 0));
        assert!(PageBuf::new(usize::MAX - 1).is_err());
    }
}
