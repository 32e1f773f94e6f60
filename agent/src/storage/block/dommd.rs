//! A block domain's metadata: one VG tag `MDT_<KEY=VALUE>` per line, escaped as VDSM escapes
//! tags (`&<code point>&`), sealed with the same `_SHA_CKSUM` as a file domain's
//! `dom_md/metadata` (computed over the decoded lines by [`DomainMetadata`]).

use sdm_lvm::{decode_tag, encode_tag, PvInfo};
use sdm_proto::Uuid;

use super::layout::MDT_PREFIX;
use crate::storage::md::{DomainMetadata, SDM_LEASES_KEY};
use crate::storage::StorageError;

/// The VG tags holding `md`, its seal included.
pub fn to_tags(md: &DomainMetadata) -> Vec<String> {
    md.lines()
        .iter()
        .map(|l| format!("{MDT_PREFIX}{}", encode_tag(l)))
        .collect()
}

/// Domain metadata from a VG's tags (other tags are ignored); a present seal must match.
pub fn from_tags(tags: &[String]) -> Result<DomainMetadata, StorageError> {
    let mut lines = Vec::new();
    for t in tags {
        if let Some(enc) = t.strip_prefix(MDT_PREFIX) {
            lines.push(
                decode_tag(enc)
                    .map_err(|e| StorageError::BadMetadata(format!("VG tag {t:?}: {e}")))?,
            );
        }
    }
    DomainMetadata::from_lines(lines.iter().map(String::as_str))
}

/// A new block domain's metadata: the keys every V5 data domain has, `TYPE`, `VGUUID` and one
/// `PV<n>` per PV (`pv:<name>,uuid:<uuid>,pestart:0,pecount:<n>,mapoffset:<extents before>`),
/// in the order the PVs were given (PV0 holds the metadata LV). TYPE is ISCSI whatever the lease
/// backend, as VDSM writes it; a domain formatted for local leases (`local_leases`, one host
/// only) adds `SDM_LEASES=local`, which only sdm reads (`DomainMetadata::lease_backend`).
pub fn new_metadata(
    sd_id: &Uuid,
    description: &str,
    vg_uuid: &str,
    pvs: &[PvInfo],
    local_leases: bool,
) -> DomainMetadata {
    let mut md = DomainMetadata::formatted(sd_id, description);
    md.set("TYPE", "ISCSI");
    if local_leases {
        md.set(SDM_LEASES_KEY, "local");
    }
    md.set("VGUUID", vg_uuid);
    let mut mapoffset = 0;
    for (n, pv) in pvs.iter().enumerate() {
        let guid = pv
            .name
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        md.set(
            &format!("PV{n}"),
            format!(
                "pv:{guid},uuid:{},pestart:0,pecount:{},mapoffset:{mapoffset}",
                pv.uuid, pv.pe_count
            ),
        );
        mapoffset += pv.pe_count;
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example VG tags of the reference (block-domain-layout.md §1), with the checksum VDSM's
    /// functions computed for them.
    fn reference_tags() -> Vec<String> {
        [
            "RHAT_storage_domain",
            "MDT_ALIGNMENT=1048576",
            "MDT_BLOCK_SIZE=512",
            "MDT_CLASS=Data",
            "MDT_DESCRIPTION=my&32&domain",
            "MDT_IOOPTIMEOUTSEC=10",
            "MDT_LEASERETRIES=3",
            "MDT_LEASETIMESEC=60",
            "MDT_LOCKPOLICY=",
            "MDT_LOCKRENEWALINTERVALSEC=5",
            "MDT_POOL_UUID=",
            "MDT_ROLE=Regular",
            "MDT_TYPE=ISCSI",
            "MDT_VERSION=5",
            "MDT_SDUUID=6e2d1b2a-0c6f-4b8e-9f3a-2d7c5e1f0a9b",
            "MDT_VGUUID=AbCdEf-1234-5678-9abc-defg-hijk-lmnopr",
            "MDT_PV0=pv:36001405a1b2c3d4e5f60718293a4b5c6&44&uuid:AbCdEf-1234-5678-9abc-defg-hijk-lmnopq&44&pestart:0&44&pecount:77&44&mapoffset:0",
            "MDT__SHA_CKSUM=a8c7bd3efa89609e13d5ca5acf059d8ce2d5cedd",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn vdsm_tags_verify_and_round_trip() {
        let md = from_tags(&reference_tags()).unwrap();
        assert_eq!(md.get("DESCRIPTION"), Some("my domain"));
        assert_eq!(
            md.get("PV0"),
            Some("pv:36001405a1b2c3d4e5f60718293a4b5c6,uuid:AbCdEf-1234-5678-9abc-defg-hijk-lmnopq,pestart:0,pecount:77,mapoffset:0")
        );
        let mut back = to_tags(&md);
        back.push("RHAT_storage_domain".into());
        back.sort();
        let mut want = reference_tags();
        want.sort();
        assert_eq!(back, want);
    }

    #[test]
    fn a_changed_tag_breaks_the_seal() {
        let tags: Vec<String> = reference_tags()
            .into_iter()
            .map(|t| t.replace("MDT_ROLE=Regular", "MDT_ROLE=Master"))
            .collect();
        assert!(matches!(
            from_tags(&tags),
            Err(StorageError::SealBroken { .. })
        ));
    }

    #[test]
    fn non_ascii_descriptions_survive() {
        let sd = Uuid::new_v4();
        let md = new_metadata(&sd, "דיסק, & more", "vg-uuid", &[], false);
        let tags = to_tags(&md);
        assert!(tags.iter().any(|t| t.contains("&1497&")), "{tags:?}");
        assert_eq!(from_tags(&tags).unwrap(), md);
    }

    #[test]
    fn local_leases_are_a_sealed_tag_only_sdm_reads() {
        use crate::config::LeaseBackendKind;
        let sd = Uuid::new_v4();
        let shared = new_metadata(&sd, "d", "vg-uuid", &[], false);
        assert_eq!(shared.lease_backend().unwrap(), LeaseBackendKind::Sanlock);
        assert!(!to_tags(&shared).iter().any(|t| t.contains("SDM_LEASES")));
        let local = new_metadata(&sd, "d", "vg-uuid", &[], true);
        assert_eq!(local.get("TYPE"), Some("ISCSI"));
        let tags = to_tags(&local);
        assert!(
            tags.contains(&"MDT_SDM_LEASES=local".to_string()),
            "{tags:?}"
        );
        let back = from_tags(&tags).unwrap();
        assert_eq!(back.lease_backend().unwrap(), LeaseBackendKind::Local);
        // The tag is sealed like every MDT_ tag: dropping it (sanlock by TYPE) breaks the seal.
        let dropped: Vec<String> = tags
            .into_iter()
            .filter(|t| t != "MDT_SDM_LEASES=local")
            .collect();
        assert!(matches!(
            from_tags(&dropped),
            Err(StorageError::SealBroken { .. })
        ));
    }
}
