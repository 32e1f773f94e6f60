//! The two key=value formats of an oVirt file domain: `dom_md/metadata` (sealed with a SHA-1
//! checksum) and a volume's `<vol>.meta` (V5 written, V4 and V5 read).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::path::Path;

use sdm_proto::{
    Legality, Preallocation, Uuid, VolumeFormat, VolumeRole, BLANK_UUID, MAX_DESCRIPTION_CHARS,
};
use sha1::{Digest, Sha1};

use super::StorageError;
use crate::config::LeaseBackendKind;

/// Key of the checksum line in domain metadata.
pub const CHECKSUM_KEY: &str = "_SHA_CKSUM";
/// Largest `.meta` file (oVirt's METADATA_SIZE).
pub const VOLUME_METADATA_MAX: usize = 512;
/// Granularity capacities are rounded up to, as oVirt does.
pub const CAPACITY_ALIGN: u64 = 4096;
/// Lease area alignment for 512-byte sectors (oVirt's ALIGNMENT).
pub const ALIGNMENT: u64 = 1 << 20;
/// Sector size written in new domains.
pub const BLOCK_SIZE: u64 = 512;
/// Domain format version sdm writes and requires.
pub const DOMAIN_VERSION: u32 = 5;
/// Longest domain description (oVirt's API limit).
pub const MAX_DOMAIN_DESCRIPTION: usize = 50;

// ---------------------------------------------------------------------------------------------
// Domain metadata

/// Parsed `dom_md/metadata`. Unknown keys are kept (and sealed) so that a domain written by a
/// newer oVirt survives our rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainMetadata {
    /// All keys but the checksum, sorted.
    pub keys: BTreeMap<String, String>,
}

/// Checksum of domain metadata: SHA-1 over `KEY=VALUE` of every key but the checksum, in key
/// order, concatenated without separators; characters outside ASCII enter as XML character
/// references (`&#233;`), as oVirt computes it.
pub fn domain_checksum(keys: &BTreeMap<String, String>) -> String {
    let mut h = Sha1::new();
    for (k, v) in keys.iter().filter(|(k, _)| k.as_str() != CHECKSUM_KEY) {
        let mut line = String::with_capacity(k.len() + v.len() + 1);
        for c in k.chars().chain(std::iter::once('=')).chain(v.chars()) {
            if c.is_ascii() {
                line.push(c);
            } else {
                let _ = write!(line, "&#{};", c as u32);
            }
        }
        h.update(line.as_bytes());
    }
    hex::encode(h.finalize())
}

impl DomainMetadata {
    /// Parses metadata; a present checksum must match (a broken seal is an error, never
    /// trusted). Metadata without a checksum is accepted, as oVirt does.
    pub fn parse(data: &[u8]) -> Result<DomainMetadata, StorageError> {
        let text = String::from_utf8_lossy(data);
        let mut keys = BTreeMap::new();
        let mut sealed = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let k = k.trim();
            if k == CHECKSUM_KEY {
                sealed = Some(v.trim().to_string());
            } else {
                keys.insert(k.to_string(), v.to_string());
            }
        }
        if let Some(sealed) = sealed {
            let computed = domain_checksum(&keys);
            if !sealed.eq_ignore_ascii_case(&computed) {
                return Err(StorageError::SealBroken {
                    stored: sealed,
                    computed,
                });
            }
        }
        Ok(DomainMetadata { keys })
    }

    /// Serializes with keys sorted and the checksum last.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::new();
        for (k, v) in &self.keys {
            let _ = writeln!(s, "{k}={v}");
        }
        let _ = writeln!(s, "{CHECKSUM_KEY}={}", domain_checksum(&self.keys));
        s.into_bytes()
    }

    /// A key's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Sets a key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.keys.insert(key.to_string(), value.into());
    }

    /// The keys of every V5 data domain sdm formats, whatever its kind (which adds TYPE and
    /// its own keys).
    pub fn formatted(sd_id: &Uuid, description: &str) -> DomainMetadata {
        let mut md = DomainMetadata::default();
        md.set("ALIGNMENT", ALIGNMENT.to_string());
        md.set("BLOCK_SIZE", BLOCK_SIZE.to_string());
        md.set("CLASS", "Data");
        md.set("DESCRIPTION", description);
        md.set("IOOPTIMEOUTSEC", "10");
        md.set("LEASERETRIES", "3");
        md.set("LEASETIMESEC", "60");
        md.set("LOCKPOLICY", "");
        md.set("LOCKRENEWALINTERVALSEC", "5");
        md.set("POOL_UUID", "");
        md.set("ROLE", "Regular");
        md.set("SDUUID", sd_id.as_str());
        md.set("VERSION", DOMAIN_VERSION.to_string());
        md
    }

    /// The lease backend the domain was formatted for, from its TYPE, as VDSM decides it
    /// (`localFsSD`: LOCALFS domains take local locks; every shared type, file or block, takes
    /// sanlock). sdm writes LOCALFS for local domains and POSIXFS for sanlock ones.
    pub fn lease_backend(&self) -> Result<LeaseBackendKind, StorageError> {
        match self.get("TYPE").map(str::trim) {
            Some("LOCALFS") => Ok(LeaseBackendKind::Local),
            Some("NFS" | "POSIXFS" | "GLUSTERFS" | "CIFS" | "SHAREDFS" | "FCP" | "ISCSI") => {
                Ok(LeaseBackendKind::Sanlock)
            }
            other => Err(StorageError::DomainType(format!(
                "domain {} has TYPE {:?}, from which sdm cannot tell its lease backend",
                self.get("SDUUID").unwrap_or(""),
                other.unwrap_or("")
            ))),
        }
    }

    /// Checks that this is the metadata of data domain `name` (found at `path`) in the format
    /// sdm handles.
    pub fn check_opens(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        if self.get("SDUUID") != Some(name) {
            return Err(StorageError::NotADomain {
                path: path.to_path_buf(),
                why: format!(
                    "SDUUID {:?} does not match the directory name",
                    self.get("SDUUID").unwrap_or("")
                ),
            });
        }
        match self.get("VERSION").map(str::trim) {
            Some("5") => {}
            Some(v) => {
                return Err(StorageError::Unsupported(format!(
                    "domain {name} has format version {v}; sdm handles version 5 (upgrade the domain with oVirt first)"
                )))
            }
            None => {
                return Err(StorageError::NotADomain {
                    path: path.to_path_buf(),
                    why: "metadata has no VERSION".into(),
                })
            }
        }
        if self.get("CLASS").map(str::trim) != Some("Data") {
            return Err(StorageError::Unsupported(format!(
                "domain {name} is of class {:?}; sdm handles Data domains",
                self.get("CLASS").unwrap_or("")
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Volume metadata

/// A volume's `.meta`, as V5 defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMetadata {
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Creation time (epoch seconds).
    pub ctime: u64,
    /// Description (at most 210 characters are kept).
    pub description: String,
    /// DATA, ...
    pub disktype: String,
    /// Domain id.
    pub domain: String,
    /// Image id the volume belongs to.
    pub image: String,
    /// RAW or COW.
    pub format: VolumeFormat,
    /// 0..999.
    pub generation: u16,
    /// LEGAL, ILLEGAL, FAKE.
    pub legality: Legality,
    /// Parent volume or BLANK.
    pub parent: String,
    /// The volume's place in its chain (SEQ): set at creation, kept by every later write.
    pub sequence: u64,
    /// SPARSE or PREALLOCATED.
    pub allocation: Preallocation,
    /// LEAF, INTERNAL, SHARED.
    pub role: VolumeRole,
}

impl VolumeMetadata {
    /// Parses V5 or V4 (SIZE in sectors, no CAP/SEQ, possibly no GEN) metadata.
    pub fn parse(data: &[u8]) -> Result<VolumeMetadata, StorageError> {
        let text = String::from_utf8_lossy(data);
        let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with("EOF") {
                break;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            kv.insert(k.trim(), v.trim());
        }
        if kv.contains_key("NONE") {
            return Err(StorageError::BadMetadata(
                "metadata was cleared (NONE key)".into(),
            ));
        }
        let need = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| StorageError::BadMetadata(format!("key {k} is missing")))
        };
        let num = |k: &str, v: &str| {
            v.parse::<u64>().map_err(|_| {
                StorageError::BadMetadata(format!("key {k} has a non-numeric value {v:?}"))
            })
        };
        let capacity = match kv.get("CAP") {
            Some(v) => num("CAP", v)?,
            None => num("SIZE", need("SIZE")?)?
                .checked_mul(512)
                .ok_or_else(|| StorageError::BadMetadata("SIZE overflows".into()))?,
        };
        let parse_enum = |k: &str| -> Result<String, StorageError> { Ok(need(k)?.to_string()) };
        let format: VolumeFormat = parse_enum("FORMAT")?
            .parse()
            .map_err(StorageError::BadMetadata)?;
        let legality: Legality = parse_enum("LEGALITY")?
            .parse()
            .map_err(StorageError::BadMetadata)?;
        let allocation: Preallocation = parse_enum("TYPE")?
            .parse()
            .map_err(StorageError::BadMetadata)?;
        let role: VolumeRole = parse_enum("VOLTYPE")?
            .parse()
            .map_err(StorageError::BadMetadata)?;
        let generation = match kv.get("GEN") {
            Some(v) => {
                let g = num("GEN", v)?;
                if g > 999 {
                    return Err(StorageError::BadMetadata(format!(
                        "GEN {g} is outside 0-999"
                    )));
                }
                g as u16
            }
            None => 0,
        };
        Ok(VolumeMetadata {
            capacity,
            ctime: kv
                .get("CTIME")
                .map(|v| num("CTIME", v))
                .transpose()?
                .unwrap_or(0),
            description: kv.get("DESCRIPTION").copied().unwrap_or("").to_string(),
            disktype: kv.get("DISKTYPE").copied().unwrap_or("DATA").to_string(),
            domain: need("DOMAIN")?.to_string(),
            image: need("IMAGE")?.to_string(),
            format,
            generation,
            legality,
            parent: kv.get("PUUID").copied().unwrap_or(BLANK_UUID).to_string(),
            sequence: kv
                .get("SEQ")
                .map(|v| num("SEQ", v))
                .transpose()?
                .unwrap_or(0),
            allocation,
            role,
        })
    }

    /// Serializes as V5: sorted keys, `EOF` last. The description is cut to 210 characters, and
    /// further (at a character boundary) if the whole would not fit in 512 bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        let mut desc: String = self
            .description
            .chars()
            .take(MAX_DESCRIPTION_CHARS)
            .collect();
        loop {
            let s = self.render(&desc);
            if s.len() <= VOLUME_METADATA_MAX {
                return Ok(s.into_bytes());
            }
            if desc.is_empty() {
                return Err(StorageError::BadMetadata(format!(
                    "volume metadata is {} bytes, more than {VOLUME_METADATA_MAX}",
                    s.len()
                )));
            }
            let excess = s.len() - VOLUME_METADATA_MAX;
            let mut cut = desc.len().saturating_sub(excess);
            while !desc.is_char_boundary(cut) {
                cut -= 1;
            }
            desc.truncate(cut);
        }
    }

    fn render(&self, desc: &str) -> String {
        let mut s = String::with_capacity(VOLUME_METADATA_MAX);
        // Keys in sorted order, as oVirt writes them.
        let _ = writeln!(s, "CAP={}", self.capacity);
        let _ = writeln!(s, "CTIME={}", self.ctime);
        let _ = writeln!(s, "DESCRIPTION={desc}");
        let _ = writeln!(s, "DISKTYPE={}", self.disktype);
        let _ = writeln!(s, "DOMAIN={}", self.domain);
        let _ = writeln!(s, "FORMAT={}", self.format);
        let _ = writeln!(s, "GEN={}", self.generation);
        let _ = writeln!(s, "IMAGE={}", self.image);
        let _ = writeln!(s, "LEGALITY={}", self.legality);
        let _ = writeln!(s, "PUUID={}", self.parent);
        let _ = writeln!(s, "SEQ={}", self.sequence);
        let _ = writeln!(s, "TYPE={}", self.allocation);
        let _ = writeln!(s, "VOLTYPE={}", self.role);
        s.push_str("EOF\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A domain metadata file as oVirt writes it, with the checksum oVirt computed for it.
    const OVIRT_DOMAIN_MD: &str = "ALIGNMENT=1048576\nBLOCK_SIZE=512\nCLASS=Data\nDESCRIPTION=storage domain\nIOOPTIMEOUTSEC=10\nLEASERETRIES=3\nLEASETIMESEC=60\nLOCKPOLICY=\nLOCKRENEWALINTERVALSEC=5\nPOOL_UUID=\nREMOTE_PATH=server:/path\nROLE=Regular\nSDUUID=275766cb-c7d8-43d6-a663-4e52160de620\nTYPE=LOCALFS\nVERSION=5\n_SHA_CKSUM=9336f77705ff9e3d5faf65c4d0dc818a29de458d\n";

    #[test]
    fn ovirt_domain_metadata_verifies_and_round_trips() {
        let md = DomainMetadata::parse(OVIRT_DOMAIN_MD.as_bytes()).unwrap();
        assert_eq!(
            md.get("SDUUID"),
            Some("275766cb-c7d8-43d6-a663-4e52160de620")
        );
        assert_eq!(md.get("LOCKPOLICY"), Some(""));
        assert_eq!(String::from_utf8(md.to_bytes()).unwrap(), OVIRT_DOMAIN_MD);
    }

    #[test]
    fn broken_seal_is_refused() {
        let tampered = OVIRT_DOMAIN_MD.replace("ROLE=Regular", "ROLE=Master");
        match DomainMetadata::parse(tampered.as_bytes()) {
            Err(StorageError::SealBroken { .. }) => {}
            other => panic!("expected SealBroken, got {other:?}"),
        }
    }

    #[test]
    fn non_ascii_is_hashed_as_character_references() {
        let mut a = BTreeMap::new();
        a.insert("DESCRIPTION".to_string(), "caf\u{e9}".to_string());
        let mut b = BTreeMap::new();
        b.insert("DESCRIPTION".to_string(), "caf&#233;".to_string());
        assert_eq!(domain_checksum(&a), domain_checksum(&b));
    }

    fn sample() -> VolumeMetadata {
        VolumeMetadata {
            capacity: 10 << 30,
            ctime: 1_700_000_000,
            description: "{\"DiskAlias\":\"d1\",\"DiskDescription\":\"\"}".into(),
            disktype: "DATA".into(),
            domain: "275766cb-c7d8-43d6-a663-4e52160de620".into(),
            image: "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60".into(),
            format: VolumeFormat::Cow,
            generation: 0,
            legality: Legality::Legal,
            parent: BLANK_UUID.into(),
            sequence: 0,
            allocation: Preallocation::Sparse,
            role: VolumeRole::Leaf,
        }
    }

    #[test]
    fn v5_layout_is_exact() {
        let text = String::from_utf8(sample().to_bytes().unwrap()).unwrap();
        let keys: Vec<&str> = text.lines().map(|l| l.split('=').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "CAP",
                "CTIME",
                "DESCRIPTION",
                "DISKTYPE",
                "DOMAIN",
                "FORMAT",
                "GEN",
                "IMAGE",
                "LEGALITY",
                "PUUID",
                "SEQ",
                "TYPE",
                "VOLTYPE",
                "EOF"
            ]
        );
        assert_eq!(VolumeMetadata::parse(text.as_bytes()).unwrap(), sample());
    }

    #[test]
    fn long_descriptions_are_cut_to_fit() {
        let mut md = sample();
        md.description = "x".repeat(1000);
        let out = md.to_bytes().unwrap();
        let back = VolumeMetadata::parse(&out).unwrap();
        assert_eq!(back.description.len(), 210);
        md.description = "\u{1F600}".repeat(300);
        let out = md.to_bytes().unwrap();
        assert!(out.len() <= VOLUME_METADATA_MAX);
        assert!(String::from_utf8(out).is_ok());
    }

    #[test]
    fn v4_metadata_is_read() {
        let v4 = "CTIME=1500000000\nDESCRIPTION=\nDISKTYPE=2\nDOMAIN=275766cb-c7d8-43d6-a663-4e52160de620\nFORMAT=RAW\nIMAGE=5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60\nLEGALITY=LEGAL\nMTIME=0\nPOOL_UUID=\nPUUID=00000000-0000-0000-0000-000000000000\nSIZE=2097152\nTYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n";
        let md = VolumeMetadata::parse(v4.as_bytes()).unwrap();
        assert_eq!(md.capacity, 1 << 30);
        assert_eq!(md.generation, 0);
        assert_eq!(md.sequence, 0);
        assert_eq!(md.disktype, "2");
    }

    #[test]
    fn cleared_metadata_is_invalid() {
        assert!(VolumeMetadata::parse(b"NONE=######\nEOF\n").is_err());
    }
}
