//! Reads that bypass this host's page cache. On shared storage (an LV on a shared LUN, a file
//! on NFS) another host may have rewritten bytes this host read and cached earlier; whatever
//! decides something from those bytes must see what is on storage now.
//!
//! O_DIRECT where the file system allows it; where it refuses (EINVAL: tmpfs before Linux 6.6,
//! some FUSE file systems) a buffered read after `POSIX_FADV_DONTNEED` on the range, which
//! drops the clean cached pages so the read goes to the file system (on NFS, to the server).
//! Those file systems are local or revalidate on open, so the fallback loses nothing there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of buffers, offsets and lengths of direct IO: the page, which covers devices of
/// 512 and 4096-byte logical blocks alike.
pub const ALIGN: usize = 4096;

/// A buffer of `len` bytes at a page-aligned address, carved out of a larger vector (no unsafe).
pub struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// `len` zero bytes, page aligned.
    pub fn zeroed(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Aligned { raw, start, len }
    }

    /// The buffer's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The buffer's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// How a [`Reader`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// O_DIRECT.
    Direct,
    /// Buffered, after dropping the range from the page cache (O_DIRECT refused).
    Buffered,
}

/// Reads ranges of one file or device bypassing the page cache, through one buffer sized at
/// open (memory stays bounded whatever the file's size).
pub struct Reader {
    path: PathBuf,
    file: File,
    mode: Mode,
    buf: Aligned,
    max_len: usize,
}

/// Whether `path` opens with O_DIRECT (for tools such as qemu-img, whose `cache=none` fails
/// outright where the file system refuses it).
pub fn takes_direct_io(path: &Path) -> bool {
    open_direct(path).is_ok()
}

/// `path` opened for reading with O_DIRECT.
pub(crate) fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Whether an error means "O_DIRECT is not supported here" rather than a failed read.
pub(crate) fn direct_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

impl Reader {
    /// Opens `path` for reads of at most `max_len` bytes each.
    pub fn open(path: &Path, max_len: usize) -> io::Result<Reader> {
        match open_direct(path) {
            Ok(file) => Ok(Reader::with(path, file, Mode::Direct, max_len)),
            Err(e) if direct_refused(&e) => Reader::open_buffered(path, max_len),
            Err(e) => Err(e),
        }
    }

    /// The fallback where O_DIRECT is refused.
    pub fn open_buffered(path: &Path, max_len: usize) -> io::Result<Reader> {
        let file = File::open(path)?;
        Ok(Reader::with(path, file, Mode::Buffered, max_len))
    }

    fn with(path: &Path, file: File, mode: Mode, max_len: usize) -> Reader {
        // Room for a range that starts and ends inside a page: one page more on each side.
        let buf = Aligned::zeroed(max_len + 2 * ALIGN);
        Reader {
            path: path.to_path_buf(),
            file,
            mode,
            buf,
            max_len,
        }
    }

    /// How this reader reads.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The `len` bytes at `off` as they are on storage; UnexpectedEof when the file ends
    /// before them.
    pub fn read(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        if len > self.max_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a read of {len} bytes exceeds this reader's {}",
                    self.max_len
                ),
            ));
        }
        if self.mode == Mode::Direct {
            match self.read_direct(off, len) {
                Ok(skip) => return Ok(&self.buf.bytes()[skip..skip + len]),
                // Open accepted O_DIRECT but the read refused it (alignment the file system
                // wants larger than a page, or no direct IO behind a FUSE open): fall back.
                Err(e) if direct_refused(&e) => {
                    self.file = File::open(&self.path)?;
                    self.mode = Mode::Buffered;
                }
                Err(e) => return Err(e),
            }
        }
        self.read_buffered(off, len)?;
        Ok(&self.buf.bytes()[..len])
    }

    /// Reads the page-aligned window around the range; returns where the range starts in the
    /// buffer. The window may run past the end of the file (a size not a multiple of the
    /// page): the read then comes back short, which is fine once the range is covered.
    fn read_direct(&mut self, off: u64, len: usize) -> io::Result<usize> {
        let start = off / ALIGN as u64 * ALIGN as u64;
        let skip = (off - start) as usize;
        let need = skip + len;
        let window = need.next_multiple_of(ALIGN);
        let buf = &mut self.buf.bytes_mut()[..window];
        let mut got = 0;
        while got < need {
            // After a short read the offset is no longer aligned: a further O_DIRECT read there
            // would be refused, and a short read only happens at the end of the file anyway.
            if got % ALIGN != 0 {
                return Err(eof(off, len));
            }
            match self.file.read_at(&mut buf[got..], start + got as u64) {
                Ok(0) => return Err(eof(off, len)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(skip)
    }

    fn read_buffered(&mut self, off: u64, len: usize) -> io::Result<()> {
        // SAFETY: posix_fadvise only takes an open descriptor and plain integers; it changes no
        // memory of ours. Advice is best effort: a failure only leaves the pages cached.
        let rc = unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                off as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            tracing::debug!(path = %self.path.display(), errno = rc, "posix_fadvise(DONTNEED) failed");
        }
        self.file
            .read_exact_at(&mut self.buf.bytes_mut()[..len], off)
    }
}

fn eof(off: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the file ends before {len} bytes at offset {off}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes whose every offset is distinguishable.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [512, 4096, 1 << 20] {
            let mut b = Aligned::zeroed(len);
            assert_eq!(b.bytes().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.bytes_mut().len(), len);
        }
    }

    /// Unaligned ranges, ranges ending at a file end that is not page aligned, and past it,
    /// in both modes: the bytes are the file's.
    fn check_ranges(r: &mut Reader, data: &[u8]) {
        let size = data.len() as u64;
        for (off, len) in [
            (0, 4096),
            (1, 10),
            (4095, 2),
            (8192, 65536),
            (size - 1000, 1000),
            (size - 5000, 5000),
            (size - 1, 1),
            (100, 70_000),
        ] {
            let got = r.read(off, len).unwrap();
            assert_eq!(got, &data[off as usize..off as usize + len], "{off}+{len}");
        }
        for (off, len) in [(size - 10, 11), (size, 1), (size + 4096, 4096)] {
            let e = r.read(off, len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{off}+{len}: {e}");
        }
        let e = r.read(0, 70_000 + 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn direct_reads_of_unaligned_ranges_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol");
        let data = pattern(300_000 + 123);
        std::fs::write(&p, &data).unwrap();
        let mut r = Reader::open(&p, 70_000).unwrap();
        if r.mode() != Mode::Direct {
            eprintln!("O_DIRECT refused by the test's file system; checking the fallback only");
        }
        check_ranges(&mut r, &data);
    }

    /// The fallback tmpfs used to need (tmpfs takes O_DIRECT since Linux 6.6, so the test
    /// opens the fallback itself): same bytes, also after they change behind an open reader.
    #[test]
    fn buffered_fallback_reads_the_same_bytes() {
        let dir = tempfile::Builder::new()
            .tempdir_in(if Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            })
            .unwrap();
        let p = dir.path().join("vol");
        let data = pattern(200_000 + 7);
        std::fs::write(&p, &data).unwrap();
        let mut r = Reader::open_buffered(&p, 70_000).unwrap();
        assert_eq!(r.mode(), Mode::Buffered);
        check_ranges(&mut r, &data);
        let mut changed = data.clone();
        changed[5000..9000].fill(0xee);
        std::fs::write(&p, &changed).unwrap();
        assert_eq!(r.read(4000, 6000).unwrap(), &changed[4000..10_000]);
    }

    #[test]
    fn only_einval_means_direct_io_is_refused() {
        assert!(direct_refused(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(!direct_refused(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!direct_refused(&io::Error::from_raw_os_error(libc::ENOENT)));
    }
}
