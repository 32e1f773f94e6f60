//! The journal file's line format: eight lowercase hex digits of the CRC-32 (IEEE) of the JSON
//! text of an [`Entry`], a space, the JSON text, `\n`; and reading a file of such lines back,
//! telling a torn last append from damage in the middle.

use std::path::Path;

use super::error::JournalError;
use super::record::{Entry, JOURNAL_VERSION};

/// What reading a journal found besides its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ReadReport {
    /// Bytes of valid records from the start (the length the file is cut back to).
    pub(super) valid_len: u64,
    /// The file has a torn tail after `valid_len`.
    pub(super) torn_tail: bool,
    /// Damaged lines followed by valid records (skipped).
    pub(super) damaged: usize,
}

/// An entry with the exact bytes of its line (compaction copies lines, it does not re-encode).
pub(super) type Line = (Entry, Vec<u8>);

/// Parses journal bytes into entries with each one's line, and what was wrong.
pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<Line>, ReadReport), JournalError> {
    let mut entries = Vec::new();
    let mut report = ReadReport::default();
    let mut pos = 0usize;
    let mut bad_since: Option<usize> = None;
    while pos < bytes.len() {
        let (line, next) = match bytes[pos..].iter().position(|b| *b == b'\n') {
            Some(n) => (&bytes[pos..pos + n], pos + n + 1),
            // No newline: a torn last append.
            None => (&bytes[pos..], bytes.len() + 1),
        };
        let complete = next <= bytes.len();
        match complete.then(|| decode_line(line)).flatten() {
            Some(entry) => {
                if entry.v > JOURNAL_VERSION {
                    return Err(JournalError::Version {
                        path: path.into(),
                        version: entry.v,
                    });
                }
                if bad_since.take().is_some() {
                    report.damaged += 1;
                }
                entries.push((entry, bytes[pos..next].to_vec()));
                report.valid_len = next as u64;
            }
            None => {
                bad_since.get_or_insert(pos);
            }
        }
        pos = next;
    }
    report.torn_tail = bad_since.is_some();
    Ok((entries, report))
}

fn decode_line(line: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(line).ok()?;
    let (crc, json) = text.split_once(' ')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

pub(super) fn encode_line(entry: &Entry) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_string(entry).map_err(JournalError::Encode)?;
    let mut line = format!("{:08x} ", crc32(json.as_bytes())).into_bytes();
    line.extend_from_slice(json.as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for b in data {
        crc = TABLE[((crc ^ *b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{sample_begin, Record};
    use sdm_proto::Uuid;

    fn line(rec: Record) -> Vec<u8> {
        encode_line(&Entry {
            v: 1,
            at_ms: 1,
            rec,
        })
        .unwrap()
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn lines_round_trip_and_a_changed_byte_is_refused() {
        let a = Uuid::new_v4();
        let l = line(sample_begin(&a));
        assert_eq!(l.last(), Some(&b'\n'));
        let e = decode_line(&l[..l.len() - 1]).unwrap();
        assert_eq!(e.rec.op(), &a);
        let mut bad = l.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        assert!(decode_line(&bad[..bad.len() - 1]).is_none());
    }

    #[test]
    fn a_torn_tail_and_damage_in_the_middle_are_told_apart() {
        let a = Uuid::new_v4();
        let (l1, l2) = (
            line(sample_begin(&a)),
            line(Record::Cloned { op: a.clone() }),
        );
        let p = Path::new("j");

        let mut torn = l1.clone();
        torn.extend_from_slice(&l2[..l2.len() - 3]);
        let (lines, r) = parse(&torn, p).unwrap();
        assert_eq!(lines.len(), 1);
        assert!(r.torn_tail && r.damaged == 0);
        assert_eq!(r.valid_len, l1.len() as u64);

        let mut damaged = l1.clone();
        damaged.extend_from_slice(b"ffffffff garbage\n");
        damaged.extend_from_slice(&l2);
        let (lines, r) = parse(&damaged, p).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(!r.torn_tail && r.damaged == 1);
        assert_eq!(lines[1].1, l2, "lines keep their exact bytes");
        assert_eq!(r.valid_len, damaged.len() as u64);
    }

    #[test]
    fn a_newer_version_is_refused() {
        let newer = encode_line(&Entry {
            v: JOURNAL_VERSION + 1,
            at_ms: 1,
            rec: Record::Cloned { op: Uuid::new_v4() },
        })
        .unwrap();
        assert!(matches!(
            parse(&newer, Path::new("j")),
            Err(JournalError::Version { version, .. }) if version == JOURNAL_VERSION + 1
        ));
    }
}
