//! The external-leases (`xleases`) volume's index, as oVirt formats it on every V4+ shared domain:
//! the same bytes in a file domain's `dom_md/xleases` and a block domain's `xleases` LV.
//!
//! Slot 0 (1 MiB) is unused, the index lives at 1 MiB: a 512-byte header (big-endian magic
//! 0x12152016, version `0001`, the lockspace, an mtime, a `-` flag), then 3960 empty 64-byte
//! records. Leases themselves would follow from 3 MiB on; sdm creates none.

use sdm_proto::Uuid;

use super::md::ALIGNMENT;

/// Where the index starts.
pub const INDEX_OFFSET: u64 = ALIGNMENT;
/// Bytes of the index (62 pages).
pub const INDEX_SIZE: usize = 62 * 4096;
const MAGIC: i32 = 0x1215_2016;
const MAX_RECORDS: usize = 3960;

/// The formatted, empty index of domain `sd_id`, to be written at [`INDEX_OFFSET`].
pub fn empty_index(sd_id: &Uuid) -> Vec<u8> {
    let mut index = vec![0u8; INDEX_SIZE];
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&MAGIC.to_be_bytes());
    h.push(0);
    h.extend_from_slice(b"0001");
    h.push(0);
    let mut ls = [0u8; 48];
    ls[..36].copy_from_slice(sd_id.as_str().as_bytes());
    h.extend_from_slice(&ls);
    h.push(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    h.extend_from_slice(format!("{now:010}").as_bytes());
    h.push(0);
    h.push(b'-');
    h.extend_from_slice(&[0u8; 440]);
    h.push(b'\n');
    debug_assert_eq!(h.len(), 512);
    index[..512].copy_from_slice(&h);
    for i in 0..MAX_RECORDS {
        let rec = &mut index[512 + i * 64..512 + (i + 1) * 64];
        rec[49..60].copy_from_slice(b"00000000000");
        rec[61] = b'-';
        rec[62] = b'-';
        rec[63] = b'\n';
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_header_and_records() {
        let sd = Uuid::new_v4();
        let i = empty_index(&sd);
        assert_eq!(i.len(), 253_952);
        assert_eq!(&i[..4], &[0x12, 0x15, 0x20, 0x16]);
        assert_eq!(&i[5..9], b"0001");
        assert_eq!(&i[10..46], sd.as_str().as_bytes());
        assert_eq!(i[511], b'\n');
        assert_eq!(&i[512 + 49..512 + 64], b"00000000000\0--\n");
    }
}
