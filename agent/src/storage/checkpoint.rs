//! A copy's checkpoint: how far the destination is durably written, and what it was copied
//! from, persisted on the destination's domain so any host can resume the copy or report it.
//!
//! The record is JSON, followed by a line `sha256=<hex of the JSON bytes>`; a record whose
//! seal does not match (torn, edited, half written by a dying host) is ignored with a log
//! line, and the copy starts over. Backends store the bytes (file domains: `<vol>.checkpoint`
//! beside the metadata, replaced durably); this module owns the format.
//!
//! The digest ties the record to the source's bytes, not only to its identity: SHA-256 of the
//! last MiB before the durable offset (the boundary a resume continues from) and of
//! [`SAMPLES`] 64 KiB blocks spread over the prefix. A resume recomputes them on the source and
//! on the destination. The volume generation stays the contract: an engine that changes a
//! few source blocks without bumping it is caught only where the boundary or a sample lands.

use std::io;
use std::path::Path;

use sdm_proto::{Uuid, VolumeFormat};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::uncached::Reader;

/// The record's format version.
pub const VERSION: u32 = 1;
/// Bytes before the durable offset the boundary digest covers.
pub const BOUNDARY: u64 = 1 << 20;
/// Sample blocks spread over the prefix.
pub const SAMPLES: u64 = 8;
/// Bytes per sample block.
pub const SAMPLE: u64 = 64 << 10;
/// The seal line's prefix.
const SEAL: &str = "\nsha256=";
/// Bytes a recorded error takes in the record's JSON at most, so that every record fits a block
/// domain's 4 KiB checkpoint region (the test `every_record_fits_4_kib` holds the bound).
pub const MAX_ERROR_JSON: usize = 1024;

/// Why a stored checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The seal is missing or does not match the content (torn or corrupt).
    #[error("checkpoint seal broken: {0}")]
    Seal(String),
    /// Sealed, but not a record this agent understands.
    #[error("checkpoint not understood: {0}")]
    Format(String),
    /// Reading the volumes for the digest failed.
    #[error("reading {path} for the checkpoint digest failed")]
    Read {
        /// The volume.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What was being copied: the source as it was when the copy started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceId {
    /// Domain.
    pub sd: Uuid,
    /// Image.
    pub img: Uuid,
    /// Volume.
    pub vol: Uuid,
    /// Its generation.
    pub generation: u16,
    /// Its capacity.
    pub capacity: u64,
    /// Its format.
    pub format: VolumeFormat,
}

/// SHA-256 digests of parts of the copied prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixDigest {
    /// Hex SHA-256 of `[durable - BOUNDARY, durable)` (from 0 when shorter).
    pub boundary: String,
    /// (offset, hex SHA-256) of `SAMPLE`-byte blocks spread over the prefix.
    pub samples: Vec<(u64, String)>,
}

/// One checkpoint record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`VERSION`].
    pub version: u32,
    /// The source.
    pub source: SourceId,
    /// The destination volume.
    pub dst_vol: Uuid,
    /// The destination's generation when it was marked ILLEGAL for this copy.
    pub dst_generation: u16,
    /// Every destination byte below this is the source's, durably.
    pub durable: u64,
    /// Bytes the copy writes in all.
    pub total: u64,
    /// Digest of the prefix, from the source.
    pub digest: PrefixDigest,
    /// Host id of the agent that wrote it.
    pub host_id: u64,
    /// The job.
    pub job_id: Uuid,
    /// (k, n): the k-th of n volume copies of an `Image.move`; (1, 1) for `SDM.copy_data`.
    pub stage: (u32, u32),
    /// The job's error, when it failed (best effort).
    pub last_error: Option<String>,
    /// When written, seconds since the epoch.
    pub written_at: u64,
}

impl Checkpoint {
    /// The stored bytes: JSON, then the seal line.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_string(self).expect("a checkpoint always serializes");
        format!(
            "{body}{SEAL}{}\n",
            hex::encode(Sha256::digest(body.as_bytes()))
        )
        .into_bytes()
    }

    /// Parses stored bytes, seal first.
    pub fn decode(raw: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let text =
            std::str::from_utf8(raw).map_err(|_| CheckpointError::Seal("not UTF-8".into()))?;
        let (body, seal) = text
            .rsplit_once(SEAL)
            .ok_or_else(|| CheckpointError::Seal("no seal line".into()))?;
        let want = hex::encode(Sha256::digest(body.as_bytes()));
        if seal.trim_end() != want {
            return Err(CheckpointError::Seal(format!(
                "stored {}, computed {want}",
                seal.trim_end()
            )));
        }
        let c: Checkpoint =
            serde_json::from_str(body).map_err(|e| CheckpointError::Format(e.to_string()))?;
        if c.version != VERSION {
            return Err(CheckpointError::Format(format!("version {}", c.version)));
        }
        if c.durable > c.total {
            return Err(CheckpointError::Format(format!(
                "durable offset {} past the end {}",
                c.durable, c.total
            )));
        }
        Ok(c)
    }

    /// Records a job's error, cut to [`MAX_ERROR_JSON`] bytes of JSON (escapes counted) at a
    /// character boundary, marked with `…` when cut.
    pub fn set_error(&mut self, error: &str) {
        let json_len = |c: char| serde_json::to_string(&c).map_or(6, |s| s.len() - 2);
        let mut used = 2;
        let mut cut = None;
        for (i, c) in error.char_indices() {
            // Room for the `…` marker (3 bytes) whenever a cut may still come.
            if used + json_len(c) + 3 > MAX_ERROR_JSON {
                cut = Some(i);
                break;
            }
            used += json_len(c);
        }
        self.last_error = Some(match cut {
            Some(i) if used + error[i..].chars().map(json_len).sum::<usize>() > MAX_ERROR_JSON => {
                format!("{}…", &error[..i])
            }
            _ => error.to_string(),
        });
    }

    /// Percent of the copy that is durable (0 to 100).
    pub fn percent(&self) -> u8 {
        match self.total {
            0 => 100,
            t => (self.durable.saturating_mul(100) / t).min(100) as u8,
        }
    }
}

/// Where the sample blocks of a prefix of `durable` bytes lie: spread evenly, aligned to
/// their size, each wholly inside the prefix.
pub fn sample_offsets(durable: u64) -> Vec<u64> {
    if durable < SAMPLE {
        return Vec::new();
    }
    let mut out: Vec<u64> = (0..SAMPLES)
        .map(|i| {
            let at = durable / (2 * SAMPLES) * (2 * i + 1);
            (at / SAMPLE * SAMPLE).min((durable - SAMPLE) / SAMPLE * SAMPLE)
        })
        .collect();
    out.dedup();
    out
}

/// Computes the digest of `path`'s first `durable` bytes as they are on storage: on shared
/// storage another host may have written them since this host cached them, and a resume
/// decided on cached bytes could keep a prefix that is no longer there (or refuse a good one).
/// Memory: one buffer of [`BOUNDARY`] plus two pages, whatever the volume's size.
pub fn digest_of(path: &Path, durable: u64) -> Result<PrefixDigest, CheckpointError> {
    let read_err = |source| CheckpointError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut r = Reader::open(path, BOUNDARY as usize).map_err(read_err)?;
    digest_by(durable, |off, len| {
        Ok(hex::encode(Sha256::digest(r.read(off, len as usize)?)))
    })
    .map_err(read_err)
}

/// The digest of `prefix` held in memory (what [`digest_of`] gives for a volume whose first
/// bytes are these).
pub fn digest_of_prefix(prefix: &[u8]) -> PrefixDigest {
    let hash = |off: u64, len: u64| {
        let range = off as usize..(off + len) as usize;
        Ok(hex::encode(Sha256::digest(&prefix[range])))
    };
    digest_by(prefix.len() as u64, hash).expect("hashing memory does not fail")
}

/// The digest of a prefix of `durable` bytes, `hash(offset, length)` hashing each range.
fn digest_by(
    durable: u64,
    mut hash: impl FnMut(u64, u64) -> io::Result<String>,
) -> io::Result<PrefixDigest> {
    let from = durable.saturating_sub(BOUNDARY);
    let boundary = hash(from, durable - from)?;
    let mut samples = Vec::new();
    for off in sample_offsets(durable) {
        samples.push((off, hash(off, SAMPLE)?));
    }
    Ok(PrefixDigest { boundary, samples })
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Checkpoint {
        Checkpoint {
            version: VERSION,
            source: SourceId {
                sd: Uuid::new_v4(),
                img: Uuid::new_v4(),
                vol: Uuid::new_v4(),
                generation: 3,
                capacity: 1 << 30,
                format: VolumeFormat::Raw,
            },
            dst_vol: Uuid::new_v4(),
            dst_generation: 7,
            durable: 256 << 20,
            total: 1 << 30,
            digest: PrefixDigest {
                boundary: "ab".into(),
                samples: vec![(0, "cd".into())],
            },
            host_id: 2,
            job_id: Uuid::new_v4(),
            stage: (1, 1),
            last_error: None,
            written_at: 1,
        }
    }

    #[test]
    fn round_trip_and_percent() {
        let c = record();
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        assert_eq!(c.percent(), 25);
    }

    #[test]
    fn torn_or_edited_records_are_refused() {
        let raw = record().encode();
        for cut in [0, 10, raw.len() / 2, raw.len() - 3] {
            assert!(matches!(
                Checkpoint::decode(&raw[..cut]),
                Err(CheckpointError::Seal(_))
            ));
        }
        let edited = String::from_utf8(raw)
            .unwrap()
            .replace("\"durable\":268435456", "\"durable\":268435457");
        assert!(matches!(
            Checkpoint::decode(edited.as_bytes()),
            Err(CheckpointError::Seal(_))
        ));
    }

    #[test]
    fn every_record_fits_4_kib() {
        // The largest record: every number at its widest, every sample, the longest error
        // (control characters escape to six bytes each).
        let mut c = record();
        c.source.generation = u16::MAX;
        c.source.capacity = u64::MAX;
        (c.dst_generation, c.durable, c.total) = (u16::MAX, u64::MAX, u64::MAX);
        (c.host_id, c.written_at, c.stage) = (u64::MAX, u64::MAX, (u32::MAX, u32::MAX));
        c.digest = PrefixDigest {
            boundary: "f".repeat(64),
            samples: (0..SAMPLES).map(|_| (u64::MAX, "f".repeat(64))).collect(),
        };
        for error in ["\u{1}".repeat(5000), "é".repeat(5000), "x".repeat(5000)] {
            c.set_error(&error);
            let kept = c.last_error.as_deref().unwrap();
            assert!(kept.ends_with('…') && kept.len() < error.len());
            assert!(serde_json::to_string(kept).unwrap().len() <= MAX_ERROR_JSON);
            assert!(c.encode().len() <= 4096, "{} bytes", c.encode().len());
            assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        }
        c.set_error("write to /dev/x failed");
        assert_eq!(c.last_error.as_deref(), Some("write to /dev/x failed"));
        let exact = "y".repeat(MAX_ERROR_JSON - 2);
        c.set_error(&exact);
        assert_eq!(
            c.last_error.as_deref(),
            Some(exact.as_str()),
            "fits as it is"
        );
    }

    #[test]
    fn samples_lie_inside_the_prefix() {
        assert!(sample_offsets(SAMPLE - 1).is_empty());
        for durable in [SAMPLE, 3 * SAMPLE + 5, 1 << 30, (1 << 30) + 12345] {
            let s = sample_offsets(durable);
            assert!(!s.is_empty());
            assert!(s.iter().all(|&o| o + SAMPLE <= durable && o % SAMPLE == 0));
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        }
        assert_eq!(sample_offsets(1 << 30).len(), SAMPLES as usize);
    }
}
