//! [`sdm_lvm::Lvm`] against the real lvm2 on loop devices over sparse files (root only;
//! each test skips and says why otherwise). Every test has its own disks and a UUID VG
//! name, and passes `--devices`, so tests run in parallel and never see the host's disks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sdm_lvm::test_support::{unique_vg_name, TestDisks};
use sdm_lvm::{
    decode_tag, encode_tag, ActivationMode, Devices, LvCreate, LvSize, Lvm, LvmConfig,
    PvCreateOptions, ReportFormat, VgCreateOptions,
};

const UNREADY: &str = "RHAT_storage_domain_UNREADY";

/// Loop-mapped: works with and without device-mapper, and is what these machines have.
fn setup(disks: usize) -> (TestDisks, Lvm, Devices, String) {
    let disks = TestDisks::new(disks, DISK);
    let lvm = disks.lvm(ActivationMode::LoopMapped);
    let devs = disks.devices();
    let vg = unique_vg_name();
    disks.make_vg(&lvm, &vg, &[UNREADY]).unwrap();
    (disks, lvm, devs, vg)
}

fn lv(name: &str, size: LvSize, tags: &[&str]) -> LvCreate {
    LvCreate {
        name: name.to_string(),
        size,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

#[test]
fn vg_has_vdsm_pv_and_vg_parameters() {
    require_lvm2!();
    let (disks, lvm, devs, vg) = setup(2);

    let info = lvm.vg(&devs, &vg).unwrap();
    assert_eq!(info.extent_size, EXTENT);
    assert_eq!(info.tags, [UNREADY]);
    // lvm lists a VG's PVs in its own order (by device name), not in creation order.
    let (mut got, mut want) = (info.pv_names.clone(), disks.paths().to_vec());
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(info.pv_count, 2);
    assert_eq!(info.lv_count, 0);
    assert!(info.writable() && !info.partial());
    // VDSM's health rule (blockSD.py metadataValidity): mda ≥ 64 MiB, ≥ 20 % of it free.
    assert_eq!(info.mda_size, 128 * MIB);
    assert!(info.mda_free * 5 >= info.mda_size, "{info:?}");

    let pvs = lvm.pvs(&devs).unwrap();
    assert_eq!(pvs.len(), 2);
    for pv in &pvs {
        assert_eq!(pv.vg_name.as_deref(), Some(vg.as_str()));
        assert_eq!(pv.mda_count, 2, "{pv:?}");
        assert_eq!(pv.dev_size, DISK);
        // 128 MiB metadata area, then the first extent on a 1 MiB boundary.
        assert!(pv.pe_start >= 128 * MIB && pv.pe_start % MIB == 0, "{pv:?}");
        // The second metadata copy takes the last 128 MiB of the device.
        assert_eq!(
            pv.pe_count,
            (DISK - pv.pe_start - 128 * MIB) / EXTENT,
            "{pv:?}"
        );
    }
    // Metadata in use on the first PV only (pvchange --metadataignore n).
    // lvm lists PVs in device-name order, which depends on the loop numbers free at the time.
    let mut used: Vec<(PathBuf, u32)> = pvs
        .iter()
        .map(|p| (p.name.clone(), p.mda_used_count))
        .collect();
    used.sort();
    let mut want = vec![(disks.paths()[0].clone(), 2), (disks.paths()[1].clone(), 0)];
    want.sort();
    assert_eq!(used, want);
    for sizes in devs.block_sizes().unwrap() {
        assert_eq!((sizes.logical, sizes.physical), (512, 512), "{sizes:?}");
    }
    assert!(lvm.supports_setautoactivation().unwrap());
    assert!(lvm.version().unwrap().starts_with("LVM version:"));
}

#[test]
fn vgs_with_tag_finds_only_tagged_vgs_on_the_devices() {
    require_lvm2!();
    let (_disks, lvm, devs, vg) = setup(1);
    let (_other_disks, _lvm2, other_devs, other_vg) = setup(1);

    let found = lvm.vgs_with_tag(&devs, UNREADY).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, vg);
    assert!(lvm
        .vgs_with_tag(&devs, "RHAT_storage_domain")
        .unwrap()
        .is_empty());
    // Both VGs when both device sets are given; neither sees the other otherwise.
    let both = lvm.vgs_with_tag(&devs.union(&other_devs), UNREADY).unwrap();
    let mut names: Vec<String> = both.into_iter().map(|v| v.name).collect();
    names.sort();
    let mut want = vec![vg, other_vg];
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn vg_tags_round_trip_vdsm_encoded_metadata_in_one_vgchange() {
    require_lvm2!();
    let (_disks, lvm, devs, vg) = setup(1);
    let lines = [
        "DESCRIPTION=my domain, with & and \u{05d9}",
        "PV0=pv:36001405a1b2,uuid:AbCd,pestart:0,pecount:77,mapoffset:0",
        "CLASS=Data",
    ];
    let mut add: Vec<String> = lines
        .iter()
        .map(|l| format!("MDT_{}", encode_tag(l)))
        .collect();
    add.push("RHAT_storage_domain".to_string());
    lvm.change_vg_tags(&devs, &vg, &[UNREADY.to_string()], &add)
        .unwrap();

    let tags = lvm.vg(&devs, &vg).unwrap().tags;
    assert!(!tags.iter().any(|t| t == UNREADY));
    assert!(tags
        .iter()
        .any(|t| t == "MDT_DESCRIPTION=my&32&domain&44&&32&with&32&&38&&32&and&32&&1497&"));
    let mut decoded: Vec<String> = tags
        .iter()
        .filter_map(|t| t.strip_prefix("MDT_"))
        .map(|t| decode_tag(t).unwrap())
        .collect();
    decoded.sort();
    let mut want: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    want.sort();
    assert_eq!(decoded, want);

    // A changed line: old tag out, new tag in, one command.
    lvm.change_vg_tags(&devs, &vg, &["MDT_CLASS=Data"], &["MDT_CLASS=Backup"])
        .unwrap();
    let tags = lvm.vg(&devs, &vg).unwrap().tags;
    assert!(tags.contains(&"MDT_CLASS=Backup".to_string()));
    assert!(!tags.contains(&"MDT_CLASS=Data".to_string()));

    // Refused before LVM runs: nothing changes.
    let err = lvm
        .change_vg_tags(&devs, &vg, &["MDT_CLASS=Backup"], &["MDT_CLASS=Backup"])
        .unwrap_err();
    assert_eq!(err.code(), "InvalidArgument");
    let err = lvm
        .change_vg_tags(&devs, &vg, &[], &["MDT_X=a b"])
        .unwrap_err();
    assert_eq!(err.code(), "InvalidArgument");
    assert_eq!(lvm.vg(&devs, &vg).unwrap().tags, tags);
}

#[test]
fn lv_create_tag_extend_remove() {
    require_lvm2!();
    let (_disks, lvm, devs, vg) = setup(1);
    let vol = "0b6e7a8e-7d0c-4f59-9d44-6f3b1c2a9e01";
    lvm.lvcreate(
        &devs,
        &vg,
        &lv(vol, LvSize::Mib(300), &["OVIRT_VOL_INITIALIZING"]),
    )
    .unwrap();
    let info = lvm.lv(&devs, &vg, vol).unwrap();
    assert_eq!(info.size, 3 * EXTENT, "300 MiB rounds up to 3 extents");
    assert_eq!(info.tags, ["OVIRT_VOL_INITIALIZING"]);
    assert_eq!(info.dm_active(), None, "activation disabled: state unknown");
    assert_eq!(info.segments.len(), 1);
    assert_eq!(info.segments[0].ranges[0].first, 0);

    // VDSM's finishing step: drop the init tag, add MD_/PU_/IU_, one lvchange.
    lvm.change_lv_tags(
        &devs,
        &vg,
        &[vol],
        &["OVIRT_VOL_INITIALIZING"],
        &["MD_1", "PU_00000000-0000-0000-0000-000000000000", "IU_img1"],
    )
    .unwrap();
    let mut tags = lvm.lv(&devs, &vg, vol).unwrap().tags;
    tags.sort();
    assert_eq!(
        tags,
        ["IU_img1", "MD_1", "PU_00000000-0000-0000-0000-000000000000"]
    );

    lvm.lvextend(&devs, &vg, vol, LvSize::Mib(600)).unwrap();
    assert_eq!(lvm.lv(&devs, &vg, vol).unwrap().size, 5 * EXTENT);
    // Already large enough: success, no change (LVM itself refuses the no-op).
    lvm.lvextend(&devs, &vg, vol, LvSize::Mib(100)).unwrap();
    lvm.lvextend(&devs, &vg, vol, LvSize::Extents(5)).unwrap();
    assert_eq!(lvm.lv(&devs, &vg, vol).unwrap().size, 5 * EXTENT);
    let err = lvm
        .lvextend(&devs, &vg, vol, LvSize::Mib(100 * 1024))
        .unwrap_err();
    assert_eq!(err.code(), "NoSpace", "{err}");
    let stderr = &err.failure().unwrap().stderr;
    assert!(
        stderr.to_lowercase().contains("insufficient free space"),
        "{stderr}"
    );

    let err = lvm
        .lvcreate(&devs, &vg, &lv(vol, LvSize::Extents(1), &[]))
        .unwrap_err();
    assert_eq!(err.code(), "Exists", "{err}");

    assert_eq!(lvm.lvs(&devs, &vg).unwrap().len(), 1);
    lvm.lvremove(&devs, &vg, &[vol]).unwrap();
    let err = lvm.lv(&devs, &vg, vol).unwrap_err();
    assert_eq!(err.code(), "NotFound", "{err}");
    assert!(lvm.lvs(&devs, &vg).unwrap().is_empty());
    let err = lvm.lvremove(&devs, &vg, &[vol]).unwrap_err();
    assert_eq!(err.code(), "NotFound", "{err}");
}

#[test]
fn reports_agree_between_json_and_separated() {
    require_lvm2!();
    let (disks, json, devs, vg) = setup(2);
    // Two LVs and a two-segment one, tags with escapes.
    json.lvcreate(&devs, &vg, &lv("a", LvSize::Extents(1), &["IU_x", "MD_7"]))
        .unwrap();
    json.lvcreate(&devs, &vg, &lv("b", LvSize::Extents(2), &[]))
        .unwrap();
    json.lvextend(&devs, &vg, "a", LvSize::Extents(3)).unwrap();
    json.change_vg_tags(&devs, &vg, &[UNREADY], &["MDT_D=a&32&b"])
        .unwrap();
    let sep = Lvm::new(LvmConfig {
        report_format: ReportFormat::Separated,
        ..disks.lvm_config(ActivationMode::LoopMapped)
    })
    .unwrap();

    assert_eq!(json.pvs(&devs).unwrap(), sep.pvs(&devs).unwrap());
    assert_eq!(json.vgs(&devs).unwrap(), sep.vgs(&devs).unwrap());
    let lvs = json.lvs(&devs, &vg).unwrap();
    assert_eq!(lvs, sep.lvs(&devs, &vg).unwrap());
    let a = lvs.iter().find(|l| l.name == "a").unwrap();
    assert_eq!(a.segments.len(), 2, "{a:?}");
    assert_eq!(a.segments[1].start_extent, 1);
    assert_eq!(a.segments[1].extent_count, 2);
    assert_eq!(a.segments[1].ranges[0].first, 3, "after b's extents 1-2");
}

#[test]
fn bad_devices_and_names_are_refused_with_codes() {
    require_lvm2!();
    let (disks, lvm, devs, vg) = setup(1);
    let file = disks.dir().join("not-a-disk");
    std::fs::write(&file, b"x").unwrap();

    let err = lvm
        .pvcreate(&Devices::new([&file]).unwrap(), &PvCreateOptions::default())
        .unwrap_err();
    assert_eq!(err.code(), "NotBlockDevice");

    // The disk already holds our VG.
    let err = lvm
        .pvcreate(&devs, &PvCreateOptions::default())
        .unwrap_err();
    assert_eq!(err.code(), "InUse", "{err}");
    let err = lvm
        .vgcreate(&devs, &vg, &VgCreateOptions::default())
        .unwrap_err();
    assert!(matches!(err.code(), "Exists" | "InUse"), "{err}");
    assert_eq!(lvm.vg(&devs, &vg).unwrap().pv_count, 1, "nothing changed");

    let err = lvm.vg(&devs, &unique_vg_name()).unwrap_err();
    assert_eq!(err.code(), "NotFound", "{err}");
    assert!(
        err.to_string().contains("not found"),
        "stderr in message: {err}"
    );
    assert_eq!(
        lvm.lv(&devs, &vg, "missing").unwrap_err().code(),
        "NotFound"
    );
    assert_eq!(
        lvm.lv(&devs, &vg, "--all").unwrap_err().code(),
        "InvalidArgument"
    );
}

/// Holds LVM's VG lock (`flock` on `<locking dir>/V_<vg>`) until dropped.
struct VgLock(Child);

impl VgLock {
    fn take(vg: &str, marker: &Path) -> Option<VgLock> {
        let dir = Path::new("/run/lock/lvm");
        if !dir.is_dir() {
            return None;
        }
        // --no-fork: the lock holder is the process we kill, not a grandchild of it.
        let child = Command::new("flock")
            .args(["--no-fork", "-x"])
            .arg(dir.join(format!("V_{vg}")))
            .arg("-c")
            .arg(format!("touch {} && exec sleep 60", marker.display()))
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let lock = VgLock(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !marker.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        marker.exists().then_some(lock)
    }
}

impl Drop for VgLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn timeout_kills_real_lvm_waiting_for_the_vg_lock() {
    require_lvm2!();
    let (disks, lvm, devs, vg) = setup(1);
    let Some(lock) = VgLock::take(&vg, &disks.dir().join("locked")) else {
        eprintln!("skipping: cannot hold LVM's VG lock in /run/lock/lvm");
        return;
    };
    let impatient = Lvm::new(LvmConfig {
        timeout: Duration::from_secs(2),
        ..disks.lvm_config(ActivationMode::LoopMapped)
    })
    .unwrap();
    let started = Instant::now();
    let err = impatient
        .change_vg_tags(&devs, &vg, &[], &["MDT_LATE=1"])
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), "Timeout", "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    drop(lock);
    assert!(!lvm.vg(&devs, &vg).unwrap().has_tag("MDT_LATE=1"));
    // And LVM is usable again at once.
    lvm.change_vg_tags(&devs, &vg, &[], &["MDT_LATE=1"])
        .unwrap();
}
