//! `StorageDomain.getInfo`: an attached domain as VDSM describes it, read from its metadata
//! (`TYPE`, `CLASS`, `DESCRIPTION`, `ROLE`, `POOL_UUID`, `VERSION`, `BLOCK_SIZE`,
//! `ALIGNMENT`) and its kind: file domains add `remotePath` (the directory holding the domain
//! directory, as VDSM reports a local domain's), block domains their volume group's UUID and
//! the device of their metadata (the first physical volume of the metadata's `PV0`..`PVn`
//! entries, the one at map offset 0).

use sdm_proto::StorageDomainInfo;

use super::backend::DomainKind;
use super::domain::Domain;

fn num(v: Option<&str>, default: u64) -> u64 {
    v.and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// The `pv:` name of the metadata entry `PVn=pv:<name>,uuid:...,mapoffset:0,...` at map
/// offset 0.
fn first_pv(md: &super::md::DomainMetadata) -> Option<String> {
    md.keys
        .iter()
        .filter(|(k, _)| k.starts_with("PV") && k[2..].chars().all(|c| c.is_ascii_digit()))
        .find_map(|(_, v)| {
            let fields: Vec<(&str, &str)> =
                v.split(',').filter_map(|f| f.split_once(':')).collect();
            let at_zero = fields
                .iter()
                .any(|(k, v)| *k == "mapoffset" && v.trim() == "0");
            let pv = fields.iter().find(|(k, _)| *k == "pv").map(|(_, v)| *v)?;
            at_zero.then(|| format!("/dev/mapper/{pv}"))
        })
}

/// The domain's `StorageDomain.getInfo`.
pub fn domain_info(dom: &Domain) -> StorageDomainInfo {
    let md = &dom.metadata;
    let get = |k: &str| md.get(k).map(|v| v.trim().to_string());
    let kind = dom.backend.kind();
    let mut info = StorageDomainInfo {
        uuid: dom.sd_id.clone(),
        storage_type: get("TYPE").unwrap_or_default(),
        class: get("CLASS").unwrap_or_else(|| "Data".into()),
        name: dom.description().to_string(),
        role: get("ROLE").unwrap_or_else(|| "Regular".into()),
        pool: md
            .get("POOL_UUID")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        version: get("VERSION").unwrap_or_else(|| "5".into()),
        block_size: num(md.get("BLOCK_SIZE"), super::md::BLOCK_SIZE),
        alignment: num(md.get("ALIGNMENT"), super::md::ALIGNMENT),
        remote_path: None,
        vguuid: None,
        metadata_device: None,
        vg_metadata_device: None,
        kind: kind.as_str().to_string(),
    };
    if kind == DomainKind::File {
        info.remote_path = dom
            .path()
            .parent()
            .map(|p| p.to_string_lossy().into_owned());
    } else {
        info.vguuid = get("VGUUID");
        let dev = first_pv(md);
        info.metadata_device = dev.clone();
        info.vg_metadata_device = dev;
    }
    info
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use sdm_lease::LocalLeases;
    use sdm_proto::Uuid;

    #[test]
    fn a_file_domain_as_vdsm_describes_it() {
        let root = tempfile::tempdir().unwrap();
        let leases = Arc::new(LocalLeases::new(1));
        let sd = Uuid::new_v4();
        let dir = Domain::create(
            DomainKind::File,
            root.path(),
            &sd,
            "my dom",
            leases.as_ref(),
            10,
        )
        .unwrap();
        let d = Domain::open(DomainKind::File, &dir, leases).unwrap();
        let i = domain_info(&d);
        assert_eq!(i.uuid, sd);
        assert_eq!(i.storage_type, "LOCALFS");
        assert_eq!((i.class.as_str(), i.role.as_str()), ("Data", "Regular"));
        assert_eq!(i.name, "my dom");
        assert!(i.pool.is_empty());
        assert_eq!(i.version, "5");
        assert_eq!((i.block_size, i.alignment), (512, 1 << 20));
        assert_eq!(
            i.remote_path.as_deref(),
            Some(dir.parent().unwrap().to_str().unwrap())
        );
        assert!(i.vguuid.is_none());
    }

    #[test]
    fn metadata_device_is_the_pv_at_offset_zero() {
        let mut md = super::super::md::DomainMetadata::default();
        md.set(
            "PV0",
            "pv:36001405a,uuid:x,pestart:0,pecount:10,mapoffset:10",
        );
        md.set(
            "PV1",
            "pv:36001405b,uuid:y,pestart:0,pecount:10,mapoffset:0",
        );
        assert_eq!(first_pv(&md).as_deref(), Some("/dev/mapper/36001405b"));
    }
}
