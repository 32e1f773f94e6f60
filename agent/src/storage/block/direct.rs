//! O_DIRECT reads and writes at byte offsets of an activated LV: volume metadata slots, the
//! xleases index and the areas zeroed when a domain is made. Direct IO bypasses this host's
//! page cache, so what another host wrote is what we read.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::storage::StorageError;
use crate::uncached::Aligned;

const SECTOR: u64 = 512;
const CHUNK: usize = 1 << 20;

fn open(dev: &Path, write: bool) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| StorageError::io("open (O_DIRECT)", dev, e))
}

fn check_aligned(dev: &Path, offset: u64, len: usize) -> Result<(), StorageError> {
    if !offset.is_multiple_of(SECTOR) || !(len as u64).is_multiple_of(SECTOR) {
        return Err(StorageError::Invalid(format!(
            "direct IO on {} at {offset}+{len} is not sector aligned",
            dev.display()
        )));
    }
    Ok(())
}

/// Reads `len` bytes at `offset`.
pub fn read_at(dev: &Path, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
    check_aligned(dev, offset, len)?;
    let f = open(dev, false)?;
    let mut buf = Aligned::zeroed(len);
    f.read_exact_at(buf.bytes_mut(), offset)
        .map_err(|e| StorageError::io("read (O_DIRECT)", dev, e))?;
    Ok(buf.bytes().to_vec())
}

/// Writes `data` at `offset`, NUL-padded to a whole number of sectors, and makes it durable.
pub fn write_at(dev: &Path, offset: u64, data: &[u8]) -> Result<(), StorageError> {
    let len = (data.len() as u64).next_multiple_of(SECTOR) as usize;
    check_aligned(dev, offset, len)?;
    let mut buf = Aligned::zeroed(len);
    buf.bytes_mut()[..data.len()].copy_from_slice(data);
    let f = open(dev, true)?;
    f.write_all_at(buf.bytes(), offset)
        .map_err(|e| StorageError::io("write (O_DIRECT)", dev, e))?;
    f.sync_data()
        .map_err(|e| StorageError::io("fdatasync", dev, e))
}

/// Writes zeros over `[offset, offset + len)` and makes them durable.
pub fn zero(dev: &Path, offset: u64, len: u64) -> Result<(), StorageError> {
    check_aligned(dev, offset, len as usize)?;
    let f = open(dev, true)?;
    let buf = Aligned::zeroed(CHUNK);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        f.write_all_at(&buf.bytes()[..n], offset + done)
            .map_err(|e| StorageError::io("zero (O_DIRECT)", dev, e))?;
        done += n as u64;
    }
    f.sync_data()
        .map_err(|e| StorageError::io("fdatasync", dev, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_requests_are_refused() {
        let p = Path::new("/nonexistent");
        assert!(matches!(
            read_at(p, 100, 512),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(zero(p, 0, 100), Err(StorageError::Invalid(_))));
    }

    #[test]
    fn round_trip_on_a_file() {
        // Where the test's file system refuses O_DIRECT (tmpfs), there is nothing to check.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dev");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        if open(&p, true).is_err() {
            eprintln!("skipping: O_DIRECT unsupported here");
            return;
        }
        write_at(&p, 8192, b"KEY=VALUE\nEOF\n").unwrap();
        let back = read_at(&p, 8192, 512).unwrap();
        assert!(back.starts_with(b"KEY=VALUE\nEOF\n"));
        assert!(back[14..].iter().all(|b| *b == 0));
        zero(&p, 0, 4096).unwrap();
        assert!(read_at(&p, 0, 4096).unwrap().iter().all(|b| *b == 0));
        assert_eq!(read_at(&p, 4096, 512).unwrap(), vec![7u8; 512]);
    }
}
