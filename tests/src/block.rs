//! Block-domain test support: loop-device disks (`sdm_lvm::test_support::TestDisks`, cleaned up
//! by name even when a test panics), agents configured to use them, and looks at what the agent
//! made with the real tools (`lvs`, `dd`, `losetup`), never through the agent itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use sdm_lvm::test_support::TestDisks;
use sdm_lvm::{ActivationMode, Devices, LvInfo, Lvm, VgInfo};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{Description, DomainKindName, LeaseBackendName, Uuid};

/// Size of a test disk: sparse, so only what is written costs space; VDSM's 10 GiB minimum
/// with room for volumes.
pub const DISK: u64 = 14 << 30;

/// Why block-domain tests cannot run here, if they cannot.
pub fn block_skip_reason() -> Option<String> {
    if let Err(why) = sdm_lvm::test_support::lvm2_available() {
        return Some(why);
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        return Some("qemu-img missing (apt-get install qemu-utils)".into());
    }
    None
}

/// Skips the calling test (returns from it) with the reason, when block tests cannot run.
#[macro_export]
macro_rules! require_block {
    () => {
        if let Some(why) = $crate::block::block_skip_reason() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// The agent config text for block domains on `devices` (plus `extra` TOML at the top level,
/// before any table).
pub fn block_config(devices: &[PathBuf], extra: &str, block_extra: &str) -> String {
    let list: Vec<String> = devices
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    format!(
        "{extra}\n[block]\ndevices = [{}]\n{block_extra}\n",
        list.join(", ")
    )
}

/// An LVM runner for looking at the test disks.
pub fn test_lvm(disks: &TestDisks) -> Lvm {
    disks.lvm(ActivationMode::probe())
}

/// `StorageDomain.create` of a block domain (with the agent's default lease backend).
pub async fn try_create_block_domain(
    c: &AgentClient,
    sd: &Uuid,
    devices: &[PathBuf],
) -> Result<bool, sdm_client::Error> {
    try_create_block_domain_with(c, sd, devices, None).await
}

/// `StorageDomain.create` of a block domain formatted for `lease_backend`.
pub async fn try_create_block_domain_with(
    c: &AgentClient,
    sd: &Uuid,
    devices: &[PathBuf],
    lease_backend: Option<LeaseBackendName>,
) -> Result<bool, sdm_client::Error> {
    let c = c.with_timeout(Duration::from_secs(300)).unwrap();
    c.api()
        .create_domain(
            sd.clone(),
            None,
            Some(Description::parse("block test").unwrap()),
            lease_backend,
            None,
            Some(DomainKindName::Block),
            Some(devices.iter().map(|d| d.display().to_string()).collect()),
        )
        .await
        .via(&c)
}

/// `StorageDomain.create` of a block domain that must succeed.
pub async fn create_block_domain(c: &AgentClient, sd: &Uuid, devices: &[PathBuf]) {
    try_create_block_domain(c, sd, devices)
        .await
        .expect("create block domain");
}

/// `StorageDomain.attach` of block domain `sd`.
pub async fn try_attach_block_domain(c: &AgentClient, sd: &Uuid) -> Result<(), sdm_client::Error> {
    try_attach_block_domain_with(c, sd, None).await
}

/// `StorageDomain.attach` of block domain `sd`, expecting `lease_backend` leases.
pub async fn try_attach_block_domain_with(
    c: &AgentClient,
    sd: &Uuid,
    lease_backend: Option<LeaseBackendName>,
) -> Result<(), sdm_client::Error> {
    c.api()
        .attach_domain(
            format!("/dev/{sd}"),
            lease_backend,
            None,
            Some(sd.clone()),
            Some(DomainKindName::Block),
        )
        .await
        .via(c)
        .map(|_| ())
}

/// The domain's VG as LVM reports it now.
pub fn vg(lvm: &Lvm, devs: &Devices, sd: &Uuid) -> VgInfo {
    lvm.vg(devs, sd.as_str()).expect("vgs")
}

/// The domain's LVs as LVM reports them now.
pub fn lvs(lvm: &Lvm, devs: &Devices, sd: &Uuid) -> Vec<LvInfo> {
    lvm.lvs(devs, sd.as_str()).expect("lvs")
}

/// Where an LV's bytes are on its PV: (PV, offset, length). Single-segment LVs only.
pub fn lv_extent(lvm: &Lvm, devs: &Devices, sd: &Uuid, lv: &str) -> (PathBuf, u64, u64) {
    let info = lvm.lv(devs, sd.as_str(), lv).expect("lv");
    assert_eq!(info.segments.len(), 1, "{lv} is one segment");
    let range = &info.segments[0].ranges[0];
    let pv = lvm
        .pvs(devs)
        .unwrap()
        .into_iter()
        .find(|p| p.name == range.pv)
        .expect("pv");
    (
        range.pv.clone(),
        pv.pe_start + range.first * info.extent_size,
        info.size,
    )
}

/// Reads `len` bytes at `offset` of a device with direct IO (`dd`), past any page cache.
pub fn read_direct(dev: &Path, offset: u64, len: u64) -> Vec<u8> {
    let out = Command::new("dd")
        .arg(format!("if={}", dev.display()))
        .args([
            "iflag=direct,skip_bytes,count_bytes",
            "bs=1M",
            &format!("skip={offset}"),
            &format!("count={len}"),
            "status=none",
        ])
        .output()
        .expect("dd");
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An LV's bytes read from its PV.
pub fn read_lv(lvm: &Lvm, devs: &Devices, sd: &Uuid, lv: &str, offset: u64, len: u64) -> Vec<u8> {
    let (pv, start, _) = lv_extent(lvm, devs, sd, lv);
    read_direct(&pv, start + offset, len)
}

/// An LV's bytes as a read-only loop device over its extent of the PV (single-segment LVs),
/// detached by name when dropped: for tools that want a device (`blkid`, `dumpe2fs`).
pub fn lv_view(lvm: &Lvm, devs: &Devices, sd: &Uuid, lv: &str) -> crate::LoopDevice {
    let (pv, start, len) = lv_extent(lvm, devs, sd, lv);
    let out = Command::new("losetup")
        .args(["--read-only", "--find", "--show"])
        .arg(format!("--offset={start}"))
        .arg(format!("--sizelimit={len}"))
        .arg(&pv)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::LoopDevice {
        dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
    }
}

/// Loop devices whose backing device is one of `devs`: the agent's loop-mapped LVs.
pub fn loops_over(devs: &[PathBuf]) -> Vec<PathBuf> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .expect("losetup");
    let mut found: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, back) = (it.next()?, it.next()?);
            devs.iter()
                .any(|d| Path::new(back) == d)
                .then(|| PathBuf::from(name))
        })
        .collect();
    found.sort();
    found
}

/// The value of tag `prefix…` of an LV.
pub fn tag<'a>(lv: &'a LvInfo, prefix: &str) -> Option<&'a str> {
    lv.tags.iter().find_map(|t| t.strip_prefix(prefix))
}

/// `MD_<slot>` of an LV.
pub fn slot_of(lv: &LvInfo) -> u64 {
    tag(lv, "MD_").expect("MD_ tag").parse().expect("slot")
}

/// Offset of a slot in the `metadata` LV (VDSM V5).
pub fn slot_offset(slot: u64) -> u64 {
    (1 << 20) + slot * 8192
}

/// The text of a volume's metadata slot, as a foreign reader finds it (direct IO on the PV).
pub fn slot_text(lvm: &Lvm, devs: &Devices, sd: &Uuid, slot: u64) -> String {
    let raw = read_lv(lvm, devs, sd, "metadata", slot_offset(slot), 512);
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .to_string()
}

/// Every volume LV is whole — tagged `IU_`, `PU_` and `MD_` with readable metadata naming its
/// image — or still tagged `OVIRT_VOL_INITIALIZING`. Returns what is wrong.
pub fn half_made_lvs(lvm: &Lvm, devs: &Devices, sd: &Uuid) -> Vec<String> {
    const SPECIAL: [&str; 7] = [
        "metadata", "ids", "leases", "inbox", "outbox", "xleases", "master",
    ];
    let mut bad = Vec::new();
    for lv in lvs(lvm, devs, sd) {
        if SPECIAL.contains(&lv.name.as_str()) || lv.has_tag("OVIRT_VOL_INITIALIZING") {
            continue;
        }
        let (Some(img), Some(_), Some(_)) = (tag(&lv, "IU_"), tag(&lv, "PU_"), tag(&lv, "MD_"))
        else {
            bad.push(format!("{} lacks tags: {:?}", lv.name, lv.tags));
            continue;
        };
        let text = slot_text(lvm, devs, sd, slot_of(&lv));
        let image = img.rsplit('_').next().unwrap_or(img);
        if !text.contains(&format!("IMAGE={image}")) || !text.contains("\nEOF") {
            bad.push(format!("{} has metadata {text:?}", lv.name));
        }
    }
    bad
}

/// A plain VG (no tags) on `devices`, as another user of the storage would make one.
pub fn make_vg(lvm: &Lvm, name: &str, devices: &[PathBuf]) {
    let devs = Devices::new(devices).unwrap();
    lvm.pvcreate(&devs, &sdm_lvm::PvCreateOptions::default())
        .expect("pvcreate");
    lvm.vgcreate(&devs, name, &sdm_lvm::VgCreateOptions::default())
        .expect("vgcreate");
}

/// The agent's two embedded file domains (ids and directories), whatever block domains it has.
pub async fn file_domains(c: &AgentClient) -> (Uuid, Uuid, PathBuf, PathBuf) {
    let mut l: Vec<_> = c
        .api()
        .list_domains()
        .await
        .via(c)
        .expect("list domains")
        .into_iter()
        .filter(|d| d.kind == "file")
        .collect();
    l.sort_by(|a, b| a.description.cmp(&b.description));
    assert!(
        l.len() >= 2,
        "expected the two embedded file domains: {l:?}"
    );
    (
        l[0].sd_id.clone(),
        l[1].sd_id.clone(),
        l[0].path.clone().into(),
        l[1].path.clone().into(),
    )
}
