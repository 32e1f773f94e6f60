//! [`sdm_lvm::Activator`] with real lvm2 and loop devices (root only; skips otherwise).
//! Loop-mapped tests run on any host; the device-mapper test needs a usable
//! /dev/mapper/control and says so when it skips.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sdm_lvm::test_support::{unique_vg_name, TestDisks};
use sdm_lvm::{ActivationMode, Activator, Devices, LvCreate, LvSize, Lvm};

struct Setup {
    disks: TestDisks,
    lvm: Lvm,
    devs: Devices,
    vg: String,
    state: PathBuf,
}

impl Setup {
    fn new(mode: ActivationMode) -> Setup {
        let disks = TestDisks::new(1, DISK);
        let lvm = disks.lvm(mode);
        let devs = disks.devices();
        let vg = unique_vg_name();
        disks.make_vg(&lvm, &vg, &[]).unwrap();
        let state = disks.dir().join("activation");
        Setup {
            disks,
            lvm,
            devs,
            vg,
            state,
        }
    }

    fn activator(&self) -> Activator {
        let mode = if self.lvm.config().activation {
            ActivationMode::DeviceMapper
        } else {
            ActivationMode::LoopMapped
        };
        Activator::new(self.lvm.clone(), mode, &self.state).unwrap()
    }

    fn create(&self, name: &str, extents: u64) {
        let lv = LvCreate {
            name: name.to_string(),
            size: LvSize::Extents(extents),
            tags: vec![],
        };
        self.lvm.lvcreate(&self.devs, &self.vg, &lv).unwrap();
    }

    fn pv(&self) -> &Path {
        &self.disks.paths()[0]
    }

    fn records(&self) -> usize {
        std::fs::read_dir(self.state.join(&self.vg)).map_or(0, |d| d.count())
    }
}

#[test]
fn loop_mapped_lv_is_exactly_its_extents_on_the_pv() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    s.create("filler", 1);
    s.create("vol", 2);
    let act = s.activator();
    assert_eq!(act.mode(), ActivationMode::LoopMapped);

    let lv = act.activate(&s.devs, &s.vg, "vol").unwrap();
    assert!(
        lv.path().to_str().unwrap().starts_with("/dev/loop"),
        "{}",
        lv.path().display()
    );
    assert_eq!(lv.size(), 2 * EXTENT);
    assert_eq!(
        std::fs::read_to_string(format!(
            "/sys/block/{}/size",
            lv.path().file_name().unwrap().to_str().unwrap()
        ))
        .unwrap()
        .trim(),
        (2 * EXTENT / 512).to_string()
    );

    // Where LVM says the LV lives: pe_start + first PE × extent size.
    let pe_start = s.lvm.pvs(&s.devs).unwrap()[0].pe_start;
    let first_pe = s.lvm.lv(&s.devs, &s.vg, "vol").unwrap().segments[0].ranges[0].first;
    assert_eq!(first_pe, 1, "after filler");
    let base = pe_start + first_pe * EXTENT;

    // A pattern at the start, in the middle and in the last 4 KiB of the LV, through the
    // loop device with O_DIRECT; read back from the PV with O_DIRECT.
    for (i, off) in [0, EXTENT + 12_288, 2 * EXTENT - 4096]
        .into_iter()
        .enumerate()
    {
        let data = Aligned::pattern(4096, i as u64 + 1);
        write_direct(lv.path(), off, &data).unwrap();
        assert_eq!(
            read_direct(s.pv(), base + off, 4096).unwrap(),
            data.as_ref()
        );
    }
    // Nothing past the end, and the neighbouring extents untouched.
    let past = write_direct(lv.path(), 2 * EXTENT, &Aligned::pattern(4096, 9));
    assert!(past.is_err(), "wrote past the LV's end");
    assert!(read_direct(s.pv(), base - 4096, 4096)
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    assert!(read_direct(s.pv(), base + 2 * EXTENT, 4096)
        .unwrap()
        .iter()
        .all(|b| *b == 0));

    assert_eq!(s.records(), 1);
    assert_eq!(loops_over(s.pv()), [lv.path().display().to_string()]);
    lv.release().unwrap();
    assert!(loops_over(s.pv()).is_empty());
    assert_eq!(s.records(), 0);
}

#[test]
fn guards_share_one_loop_device_and_the_last_detaches() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    s.create("vol", 1);
    let act = s.activator();

    let first = act.activate(&s.devs, &s.vg, "vol").unwrap();
    let second = std::thread::scope(|scope| {
        scope
            .spawn(|| act.activate(&s.devs, &s.vg, "vol").unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(first.path(), second.path());
    assert_eq!(act.users(&s.vg, "vol"), 2);
    assert_eq!(loops_over(s.pv()).len(), 1);

    let device = first.path().to_path_buf();
    drop(first);
    assert_eq!(act.users(&s.vg, "vol"), 1);
    assert_eq!(loops_over(s.pv()), [device.display().to_string()]);
    drop(second);
    assert_eq!(act.users(&s.vg, "vol"), 0);
    assert!(loops_over(s.pv()).is_empty());
    assert_eq!(s.records(), 0);

    // Activating again after the last release makes a fresh mapping.
    let again = act.activate(&s.devs, &s.vg, "vol").unwrap();
    assert_eq!(again.size(), EXTENT);
    again.release().unwrap();
    assert!(loops_over(s.pv()).is_empty());
}

#[test]
fn parallel_activations_of_many_lvs_leave_nothing_behind() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    for i in 0..3 {
        s.create(&format!("v{i}"), 1);
    }
    let act = s.activator();
    std::thread::scope(|scope| {
        for t in 0..6 {
            let (act, s) = (&act, &s);
            scope.spawn(move || {
                for round in 0..3 {
                    let name = format!("v{}", (t + round) % 3);
                    let lv = act.activate(&s.devs, &s.vg, &name).unwrap();
                    assert_eq!(lv.size(), EXTENT);
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
    });
    assert!(loops_over(s.pv()).is_empty());
    assert_eq!(s.records(), 0);
}

#[test]
fn multi_segment_lv_is_refused_and_nothing_is_attached() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    s.create("a", 1);
    s.create("b", 1);
    // a's second extent lands after b's: two segments.
    s.lvm
        .lvextend(&s.devs, &s.vg, "a", LvSize::Extents(2))
        .unwrap();
    assert_eq!(s.lvm.lv(&s.devs, &s.vg, "a").unwrap().segments.len(), 2);
    let act = s.activator();

    let err = act.activate(&s.devs, &s.vg, "a").unwrap_err();
    assert_eq!(err.code(), "MultiSegment");
    assert!(err.to_string().contains("2 segments"), "{err}");
    assert!(loops_over(s.pv()).is_empty());
    assert_eq!(s.records(), 0);
    assert_eq!(act.users(&s.vg, "a"), 0);

    let err = act.activate(&s.devs, &s.vg, "missing").unwrap_err();
    assert_eq!(err.code(), "NotFound");
    assert_eq!(s.records(), 0);
}

#[test]
fn refresh_reports_an_lv_grown_under_its_loop_mapping() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    s.create("vol", 1);
    let act = s.activator();
    let lv = act.activate(&s.devs, &s.vg, "vol").unwrap();
    act.refresh(&s.vg, "vol").unwrap();
    // Contiguous growth: still one segment, but no longer what is mapped.
    s.lvm
        .lvextend(&s.devs, &s.vg, "vol", LvSize::Extents(2))
        .unwrap();
    let err = act.refresh(&s.vg, "vol").unwrap_err();
    assert_eq!(err.code(), "Changed", "{err}");
    lv.release().unwrap();
    act.refresh(&s.vg, "vol").unwrap();
    let lv = act.activate(&s.devs, &s.vg, "vol").unwrap();
    assert_eq!(lv.size(), 2 * EXTENT);
}

#[test]
fn cleanup_stale_detaches_what_a_leaked_activator_left() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    s.create("leaked", 1);
    s.create("live", 1);
    let leaked = s.activator();
    let lv = leaked.activate(&s.devs, &s.vg, "leaked").unwrap();
    let device = lv.path().to_path_buf();
    // As if the process had died: no release, no drop.
    std::mem::forget(lv);
    drop(leaked);
    assert!(loop_bound(&device));

    let act = s.activator();
    let live = act.activate(&s.devs, &s.vg, "live").unwrap();
    let report = act.cleanup_stale().unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&device));
    assert_eq!(report.records, 1);
    assert_eq!(report.skipped, 1, "the live activation is left alone");
    assert!(report.failed.is_empty());
    assert_eq!(loops_over(s.pv()), [live.path().display().to_string()]);
    live.release().unwrap();
    assert!(loops_over(s.pv()).is_empty());
    assert_eq!(s.records(), 0);
}

/// Not a test by itself: the child of `cleanup_stale_after_sigkill`, which runs it with
/// `SDM_LVM_CHILD` set. Activates, prints the device, and waits to be killed.
#[test]
#[ignore = "run by cleanup_stale_after_sigkill as its child process"]
fn child_activates_and_waits() {
    let Ok(spec) = std::env::var("SDM_LVM_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [devices, vg, lv, state, backup] = parts.as_slice() else {
        panic!("bad SDM_LVM_CHILD {spec}");
    };
    let lvm = Lvm::new(sdm_lvm::LvmConfig {
        activation: false,
        backup_dir: Some(PathBuf::from(backup)),
        ..sdm_lvm::LvmConfig::default()
    })
    .unwrap();
    let act = Activator::new(lvm, ActivationMode::LoopMapped, state).unwrap();
    let devs = Devices::new(devices.split(',')).unwrap();
    let guard = act.activate(&devs, vg, lv).unwrap();
    println!("DEVICE={}", guard.path().display());
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn cleanup_stale_after_sigkill() {
    require_lvm2!();
    let s = Setup::new(ActivationMode::LoopMapped);
    s.create("vol", 1);
    let spec = [
        s.devs.to_string(),
        s.vg.clone(),
        "vol".to_string(),
        s.state.display().to_string(),
        s.disks.dir().join("lvm").display().to_string(),
    ]
    .join("|");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_activates_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env("SDM_LVM_CHILD", spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let device = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("DEVICE=").map(PathBuf::from));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let device = device.expect("child printed its device");
    assert!(
        loop_bound(&device),
        "the killed child's loop device is still there"
    );
    assert_eq!(s.records(), 1);

    let act = s.activator();
    let report = act.cleanup_stale().unwrap();
    assert_eq!(report.removed, [device]);
    assert!(loops_over(s.pv()).is_empty());
    assert_eq!(s.records(), 0);
    // Nothing left to do the second time.
    let again = act.cleanup_stale().unwrap();
    assert!(again.removed.is_empty() && again.records == 0);
}

#[test]
fn device_mapper_activation_round_trip() {
    require_lvm2!();
    if ActivationMode::probe() != ActivationMode::DeviceMapper {
        eprintln!("skipping: /dev/mapper/control is not usable (no device-mapper here)");
        return;
    }
    let s = Setup::new(ActivationMode::DeviceMapper);
    s.create("vol", 2);
    let act = s.activator();
    let lv = act.activate(&s.devs, &s.vg, "vol").unwrap();
    assert_eq!(lv.path(), Path::new("/dev").join(&s.vg).join("vol"));
    assert_eq!(lv.size(), 2 * EXTENT);
    assert_eq!(
        s.lvm.lv(&s.devs, &s.vg, "vol").unwrap().dm_active(),
        Some(true)
    );
    let data = Aligned::pattern(4096, 3);
    write_direct(lv.path(), EXTENT, &data).unwrap();
    let pe_start = s.lvm.pvs(&s.devs).unwrap()[0].pe_start;
    assert_eq!(
        read_direct(s.pv(), pe_start + EXTENT, 4096).unwrap(),
        data.as_ref()
    );
    let second = act.activate(&s.devs, &s.vg, "vol").unwrap();
    drop(lv);
    assert_eq!(
        s.lvm.lv(&s.devs, &s.vg, "vol").unwrap().dm_active(),
        Some(true)
    );
    second.release().unwrap();
    assert_eq!(
        s.lvm.lv(&s.devs, &s.vg, "vol").unwrap().dm_active(),
        Some(false)
    );

    // A leaked activation is deactivated by cleanup_stale.
    let leaked = act.activate(&s.devs, &s.vg, "vol").unwrap();
    std::mem::forget(leaked);
    let fresh = s.activator();
    let report = fresh.cleanup_stale().unwrap();
    assert_eq!(report.records, 1);
    assert_eq!(
        s.lvm.lv(&s.devs, &s.vg, "vol").unwrap().dm_active(),
        Some(false)
    );
}

#[test]
fn test_disks_remove_leftovers_when_a_test_panics() {
    require_lvm2!();
    // (disk loop device, its backing file): the file path is unique to this test, so the
    // check below cannot be fooled by a parallel test reusing the loop number.
    let seen: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let s = Setup::new(ActivationMode::LoopMapped);
        s.create("vol", 1);
        let lv = s.activator().activate(&s.devs, &s.vg, "vol").unwrap();
        for disk in s.disks.paths() {
            seen.lock()
                .unwrap()
                .push((disk.clone(), backing_file(disk).unwrap()));
        }
        // Leaked mapping, then a failing assertion: only TestDisks' drop is left to clean.
        std::mem::forget(lv);
        panic!("deliberate");
    });
    assert!(outcome.is_err());
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 1);
    // The LV's loop device held the disk's open: had it survived, the disk's loop device
    // would still be bound to its file (a busy detach only sets autoclear).
    for (device, file) in &seen {
        assert_ne!(
            backing_file(device).as_ref(),
            Some(file),
            "{} still bound",
            device.display()
        );
    }
}
