//! The fixed fields of a qcow2 header, read to decide whether the native path may touch an
//! image at all.
//!
//! imago maps clusters but does not expose the header fields that decide *exactness*
//! (encryption, feature bits, compression type, bitmaps, snapshots), and it would read an
//! encrypted image's clusters as plain data. So every layer's first bytes are decoded here,
//! read-only, and [`Header::native_blocker`] names anything the native path cannot reproduce
//! bit for bit; such images go to qemu-img instead.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::IoError;

const MAGIC: u32 = 0x5146_49fb;
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_MIN_LEN: usize = 104;

/// Header extension types (qcow2 spec).
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// What the converter needs to know about one qcow2 layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) cluster_bits: u32,
    pub(crate) size: u64,
    pub(crate) crypt_method: u32,
    pub(crate) nb_snapshots: u32,
    pub(crate) incompatible: u64,
    /// Autoclear feature bits (bit 0: persistent bitmaps are consistent).
    pub(crate) autoclear: u64,
    /// log2 of the refcount width in bits (4 = 16-bit, the default; v2 is always 4).
    pub(crate) refcount_order: u32,
    /// 0 = zlib (also the only value a v2 image or a short v3 header can have).
    pub(crate) compression_type: u8,
    pub(crate) backing_file: Option<String>,
    pub(crate) backing_format: Option<String>,
    pub(crate) has_crypto_ext: bool,
    pub(crate) has_data_file_ext: bool,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Reads the header of the image at `path`.
    pub(crate) fn read(path: &Path) -> Result<Header, IoError> {
        let f = File::open(path).map_err(|e| IoError::os("open", path, e))?;
        // The header, its extensions and the backing file name all live in the first cluster;
        // 2 MiB is the largest cluster qcow2 allows, but 64 KiB covers every real header.
        let mut buf = vec![0u8; 64 << 10];
        let n = read_full(&f, &mut buf).map_err(|e| IoError::os("read header of", path, e))?;
        buf.truncate(n);
        Header::parse(&buf).map_err(|reason| IoError::image(path, reason))
    }

    /// Decodes a header from the first bytes of an image.
    pub(crate) fn parse(b: &[u8]) -> Result<Header, String> {
        if b.len() < V2_HEADER_LEN || be32(b, 0) != MAGIC {
            return Err("not a qcow2 image (bad magic)".into());
        }
        let mut h = Header {
            version: be32(b, 4),
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            nb_snapshots: be32(b, 60),
            refcount_order: 4,
            ..Header::default()
        };
        if h.version != 2 && h.version != 3 {
            // Nothing past the v2 fields can be trusted; the blocker check reports it.
            return Ok(h);
        }
        let mut ext_start = V2_HEADER_LEN;
        if h.version == 3 {
            if b.len() < V3_HEADER_MIN_LEN {
                return Err("truncated v3 header".into());
            }
            h.incompatible = be64(b, 72);
            h.autoclear = be64(b, 88);
            h.refcount_order = be32(b, 96);
            let header_len = be32(b, 100) as usize;
            if header_len < V3_HEADER_MIN_LEN || header_len > b.len() {
                return Err(format!("invalid header length {header_len}"));
            }
            if header_len > 104 {
                h.compression_type = b[104];
            }
            ext_start = header_len;
        }
        h.parse_extensions(b, ext_start)?;
        let (bf_off, bf_len) = (be64(b, 8), be32(b, 16) as u64);
        if bf_off != 0 && bf_len != 0 {
            let end = bf_off
                .checked_add(bf_len)
                .filter(|&e| e <= b.len() as u64 && bf_len <= 1023)
                .ok_or_else(|| format!("backing file name out of range ({bf_off}+{bf_len})"))?;
            let name = &b[bf_off as usize..end as usize];
            h.backing_file = Some(
                String::from_utf8(name.to_vec())
                    .map_err(|_| "backing file name is not UTF-8".to_string())?,
            );
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, b: &[u8], mut at: usize) -> Result<(), String> {
        loop {
            if at + 8 > b.len() {
                return Err("header extensions run past the first cluster".into());
            }
            let (ty, len) = (be32(b, at), be32(b, at + 4) as usize);
            at += 8;
            if ty == EXT_END {
                return Ok(());
            }
            let data = b
                .get(at..at + len)
                .ok_or_else(|| format!("header extension {ty:#x} runs past the first cluster"))?;
            match ty {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_CRYPTO => self.has_crypto_ext = true,
                EXT_DATA_FILE => self.has_data_file_ext = true,
                _ => {}
            }
            at += len.next_multiple_of(8);
        }
    }

    /// Why the native path cannot convert this image exactly, if it cannot.
    pub(crate) fn native_blocker(&self) -> Option<String> {
        if self.version != 2 && self.version != 3 {
            return Some(format!("qcow2 version {} is unknown", self.version));
        }
        if !(9..=21).contains(&self.cluster_bits) {
            return Some(format!("cluster_bits {} out of range", self.cluster_bits));
        }
        if self.crypt_method != 0 || self.has_crypto_ext {
            return Some(format!("encrypted (crypt_method {})", self.crypt_method));
        }
        let named = [
            (INCOMPAT_DIRTY, "dirty bit set (refcounts need repair)"),
            (INCOMPAT_CORRUPT, "corrupt bit set"),
            (INCOMPAT_DATA_FILE, "external data file"),
            (INCOMPAT_COMPRESSION, "compression type other than zlib"),
            (INCOMPAT_EXTL2, "extended L2 entries (subclusters)"),
        ];
        for (bit, why) in named {
            if self.incompatible & bit != 0 {
                return Some(why.into());
            }
        }
        let known = named.iter().fold(0, |a, (bit, _)| a | bit);
        if self.incompatible & !known != 0 {
            return Some(format!(
                "unknown incompatible feature bits {:#x}",
                self.incompatible & !known
            ));
        }
        if self.has_data_file_ext {
            return Some("external data file".into());
        }
        if self.compression_type != 0 {
            return Some(format!("compression type {}", self.compression_type));
        }
        None
    }

    /// Why the native path may not write into this image in place (a commit into it, a
    /// sparsify of it), if it may not: what `native_blocker` names, and what imago's writer
    /// would change or not handle exactly — it clears autoclear bits when it opens an image
    /// for writing (persistent bitmaps would be lost), shares clusters only through qemu's
    /// internal snapshots, and has no zero clusters in version 2.
    pub(crate) fn writer_blocker(&self) -> Option<String> {
        if let Some(why) = self.native_blocker() {
            return Some(why);
        }
        if self.version != 3 {
            return Some("qcow2 version 2 (compat 0.10) has no zero clusters".into());
        }
        if self.autoclear != 0 {
            return Some(format!(
                "autoclear feature bits {:#x} (persistent bitmaps)",
                self.autoclear
            ));
        }
        if self.nb_snapshots != 0 {
            return Some(format!("{} internal snapshots", self.nb_snapshots));
        }
        None
    }
}

fn read_full(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header with the given features, optionally a backing name and format extension.
    fn v3(incompat: u64, backing: Option<(&str, &str)>) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[72..80].copy_from_slice(&incompat.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        let mut at = 104;
        if let Some((name, fmt)) = backing {
            b[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
            b[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            at += 8 + fmt.len().next_multiple_of(8);
            at += 8; // end marker (zeros)
            b[8..16].copy_from_slice(&(at as u64).to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b[at..at + name.len()].copy_from_slice(name.as_bytes());
        }
        b
    }

    #[test]
    fn plain_v3_is_native() {
        let h = Header::parse(&v3(0, Some(("parent-uuid", "qcow2")))).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.backing_file.as_deref(), Some("parent-uuid"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(h.native_blocker(), None);
    }

    #[test]
    fn blockers_are_named() {
        for (bit, word) in [
            (INCOMPAT_DIRTY, "dirty"),
            (INCOMPAT_CORRUPT, "corrupt"),
            (INCOMPAT_DATA_FILE, "external data file"),
            (INCOMPAT_COMPRESSION, "compression"),
            (INCOMPAT_EXTL2, "extended L2"),
            (1 << 9, "unknown incompatible"),
        ] {
            let why = Header::parse(&v3(bit, None))
                .unwrap()
                .native_blocker()
                .unwrap();
            assert!(why.contains(word), "{why}");
        }
        let mut enc = v3(0, None);
        enc[32..36].copy_from_slice(&2u32.to_be_bytes());
        let why = Header::parse(&enc).unwrap().native_blocker().unwrap();
        assert!(why.contains("encrypted"), "{why}");
        let mut v4 = v3(0, None);
        v4[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert!(Header::parse(&v4).unwrap().native_blocker().is_some());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(Header::parse(&[0u8; 512]).is_err());
        assert!(Header::parse(&MAGIC.to_be_bytes()).is_err());
        let mut bad_ext = v3(0, None);
        bad_ext[104..108].copy_from_slice(&0x2385_2875u32.to_be_bytes());
        bad_ext[108..112].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(Header::parse(&bad_ext).is_err());
    }
}
