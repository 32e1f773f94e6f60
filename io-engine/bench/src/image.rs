//! Test images: random data where asked, holes elsewhere, written with O_DIRECT from the
//! engine's page buffers; and loop devices for the block-device cases.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sdm_io::PageBuf;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Writes a `len`-byte image at `path`, MiB by MiB: random data where `data(offset)` says
/// so, holes elsewhere. `seed` makes the content reproducible (and each image different).
pub fn make_image(path: &Path, len: u64, seed: u64, data: impl Fn(u64) -> bool) -> Result<()> {
    let ctx = || path.display().to_string();
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(ctx)?;
    f.set_len(len).with_context(ctx)?;
    // A small, fast generator: image creation should be disk-bound.
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = PageBuf::new(MIB as usize).context("image buffer")?;
    let mut off = 0;
    while off < len {
        if data(off) {
            rng.fill_bytes(buf.as_mut_slice());
            f.write_all_at(buf.as_slice(), off).with_context(ctx)?;
        }
        off = off.checked_add(MIB).context("image size overflows")?;
    }
    f.sync_all().with_context(ctx)
}

/// Bytes of a file or a block device.
pub fn size_of(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .with_context(|| path.display().to_string())
}

/// Writes a `len`-byte image of data that zlib compresses to about half: random bytes with
/// four bits of entropy each. qemu-img stores its clusters compressed (`convert -c`).
pub fn make_compressible(path: &Path, len: u64, seed: u64) -> Result<()> {
    let ctx = || path.display().to_string();
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(ctx)?;
    f.set_len(len).with_context(ctx)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = PageBuf::new(MIB as usize).context("image buffer")?;
    let mut off = 0;
    while off < len {
        rng.fill_bytes(buf.as_mut_slice());
        for b in buf.as_mut_slice() {
            *b &= 0x0f;
        }
        f.write_all_at(buf.as_slice(), off).with_context(ctx)?;
        off = off.checked_add(MIB).context("image size overflows")?;
    }
    f.sync_all().with_context(ctx)
}

/// A loop device (direct IO), detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Result<Loop> {
        let out = Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(file)
            .output()
            .context("losetup")?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn images_have_data_where_asked_and_holes_elsewhere() {
        let dir = std::env::temp_dir().join(format!("sdm-bench-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("img.raw");
        // O_DIRECT may be refused (tmpfs): then there is nothing to check here.
        if let Err(e) = make_image(&p, 4 * MIB, 1, |off| off == MIB) {
            eprintln!("skip: {e:#}");
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        let mut v = Vec::new();
        std::fs::File::open(&p)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        assert_eq!(v.len() as u64, 4 * MIB);
        let mib = MIB as usize;
        assert!(v[..mib].iter().all(|&b| b == 0));
        assert!(v[mib..2 * mib].iter().filter(|&&b| b != 0).count() > mib / 2);
        assert!(v[2 * mib..].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
