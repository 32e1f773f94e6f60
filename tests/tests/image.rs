//! `Image.move` (copy only), `Image.delete` with wipe, leftovers, garbage collection and
//! `StorageDomain.check`/`fix`, through real agents.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn img_dir(dom: &Path, img: &Uuid) -> PathBuf {
    dom.join("images").join(img.as_str())
}

/// A sparse volume with a disk alias as its description, as the engine creates them.
async fn create(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
    size: u64,
    f: VolumeFormat,
    parent: Option<Uuid>,
) {
    let alias = Description::parse("{\"DiskAlias\":\"d\"}").unwrap();
    create_volume(c, sd, img, vol, size, f, parent, Some(alias)).await;
}

fn qemu_io_write(file: &Path, pattern: u8, offset: u64, len: u64) {
    let st = Command::new("qemu-io")
        .arg("-c")
        .arg(format!("write -P {pattern} {offset} {len}"))
        .arg(file)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// Submits `Image.delete` with wipe (postZero) and returns the job's id.
async fn delete_with_wipe(c: &AgentClient, img: &Uuid, sd: &Uuid) -> Uuid {
    c.api()
        .delete_image(img.clone(), sd.clone(), Some(Flag(true)), None, None, None)
        .await
        .via(c)
        .unwrap()
}

async fn move_image(
    c: &AgentClient,
    img: &Uuid,
    src: &Uuid,
    dst: &Uuid,
    force: bool,
) -> Result<JobInfo, sdm_client::Error> {
    let r = c
        .api()
        .move_image(
            img.clone(),
            src.clone(),
            dst.clone(),
            ImageOperation::Copy,
            None,
            Some(Flag(force)),
            None,
            None,
        )
        .await
        .via(c)?;
    Ok(wait_job(c, &r).await)
}

#[tokio::test]
async fn move_cow_chain_and_raw_image_then_force() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, dom1, dom2) = default_domains(&c).await;

    // A three-volume chain with data in every layer.
    let img = uuid();
    let (base, mid, top) = (uuid(), uuid(), uuid());
    create(&c, &sd1, &img, &base, 32 * MIB, VolumeFormat::Cow, None).await;
    qemu_io_write(&volume_path(&dom1, &img, &base), 0x11, 0, 4 * MIB);
    create(
        &c,
        &sd1,
        &img,
        &mid,
        32 * MIB,
        VolumeFormat::Cow,
        Some(base.clone()),
    )
    .await;
    qemu_io_write(&volume_path(&dom1, &img, &mid), 0x22, 2 * MIB, 4 * MIB);
    create(
        &c,
        &sd1,
        &img,
        &top,
        32 * MIB,
        VolumeFormat::Cow,
        Some(mid.clone()),
    )
    .await;
    qemu_io_write(&volume_path(&dom1, &img, &top), 0x33, 20 * MIB, MIB);
    let src_sums: Vec<String> = [&base, &mid, &top]
        .iter()
        .map(|v| sha256sum(&volume_path(&dom1, &img, v)))
        .collect();

    let done = move_image(&c, &img, &sd1, &sd2, false).await.unwrap();
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert_eq!(done.progress, Some(100.0));
    let mut vols = c
        .api()
        .get_volumes(sd2.clone(), img.clone())
        .await
        .via(&c)
        .unwrap();
    vols.sort();
    let mut want = vec![base.clone(), mid.clone(), top.clone()];
    want.sort();
    assert_eq!(vols, want, "same UUIDs on the destination");
    for (i, v) in [&base, &mid, &top].iter().enumerate() {
        let s = c
            .api()
            .get_volume_info(sd1.clone(), img.clone(), (*v).clone())
            .await
            .via(&c)
            .unwrap();
        let d = c
            .api()
            .get_volume_info(sd2.clone(), img.clone(), (*v).clone())
            .await
            .via(&c)
            .unwrap();
        assert_eq!(
            (d.format, d.voltype, &d.parent, d.capacity, &d.description),
            (s.format, s.voltype, &s.parent, s.capacity, &s.description)
        );
        assert_eq!(d.legality, Legality::Legal);
        assert!(d.lease.owners.is_empty());
        let path = volume_path(&dom2, &img, v);
        assert!(qemu_img_check(&path), "qemu-img check {v}");
        assert_eq!(sha256sum(&path), src_sums[i], "volume {v} bytes");
    }
    assert!(
        qemu_img_compare(
            &volume_path(&dom1, &img, &top),
            &volume_path(&dom2, &img, &top)
        ),
        "the whole chain reads the same"
    );

    // A RAW image.
    let rimg = uuid();
    let rvol = uuid();
    create(&c, &sd1, &rimg, &rvol, 16 * MIB, VolumeFormat::Raw, None).await;
    write_pattern(&volume_path(&dom1, &rimg, &rvol), MIB, 3 * MIB as usize, 4);
    assert_eq!(
        move_image(&c, &rimg, &sd1, &sd2, false)
            .await
            .unwrap()
            .status,
        JobStatus::Done
    );
    let (a, b) = (
        volume_path(&dom1, &rimg, &rvol),
        volume_path(&dom2, &rimg, &rvol),
    );
    assert!(qemu_img_compare(&a, &b));
    assert_eq!(sha256sum(&a), sha256sum(&b));

    // The destination exists and is LEGAL: refused without force, nothing changed.
    let before = snapshot(&img_dir(&dom2, &rimg));
    let e = move_image(&c, &rimg, &sd1, &sd2, false).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::VolumeAlreadyExists));
    assert_eq!(before, snapshot(&img_dir(&dom2, &rimg)));
    // Operation MOVE is refused, nothing changed.
    let e = c
        .api()
        .move_image(
            rimg.clone(),
            sd1.clone(),
            sd2.clone(),
            ImageOperation::Move,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnsupportedOperation));
    assert!(
        e.to_string().contains("delete"),
        "the message says to copy, then delete: {e}"
    );
    assert_eq!(before, snapshot(&img_dir(&dom2, &rimg)));
    // With force the destination is replaced.
    write_pattern(&a, 0, MIB as usize, 5);
    assert_eq!(
        move_image(&c, &rimg, &sd1, &sd2, true)
            .await
            .unwrap()
            .status,
        JobStatus::Done
    );
    assert_eq!(sha256sum(&a), sha256sum(&b));
    // An ILLEGAL destination image is replaced without force.
    let r = volume_ref(&sd2, &rimg, &rvol, Some(0));
    update_volume(&c, r, legality_attrs(Legality::Illegal)).await;
    write_pattern(&a, 0, MIB as usize, 6);
    assert_eq!(
        move_image(&c, &rimg, &sd1, &sd2, false)
            .await
            .unwrap()
            .status,
        JobStatus::Done
    );
    assert_eq!(sha256sum(&a), sha256sum(&b));
    assert!(
        c.api()
            .check_domain(sd2.clone())
            .await
            .via(&c)
            .unwrap()
            .is_empty(),
        "no leftovers after force"
    );

    // Missing images and hostile ids.
    let e = move_image(&c, &uuid(), &sd1, &sd2, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ImageDoesNotExistInSD));
    let r = raw_call(
        agent.addr,
        "Image.move",
        serde_json::json!({"imageID": "../x", "storagedomainID": sd1, "dstSdUUID": sd2, "operation": "copy"}),
    );
    assert_eq!(error_code(&r), 1000);
}

#[tokio::test]
async fn delete_with_wipe_overwrites_file_volumes() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, _, dom1, _) = default_domains(&c).await;
    let img = uuid();
    let (v1, v2) = (uuid(), uuid());
    create(&c, &sd1, &img, &v1, 8 * MIB, VolumeFormat::Raw, None).await;
    create(&c, &sd1, &img, &v2, 8 * MIB, VolumeFormat::Raw, None).await;
    let p1 = volume_path(&dom1, &img, &v1);
    let p2 = volume_path(&dom1, &img, &v2);
    write_pattern(&p1, 0, 8 * MIB as usize, 7);
    write_pattern(&p2, 2 * MIB, MIB as usize, 8);
    // Handles kept open: they still read the old inodes after the files are removed.
    let (h1, h2) = (
        std::fs::File::open(&p1).unwrap(),
        std::fs::File::open(&p2).unwrap(),
    );

    let job = delete_with_wipe(&c, &img, &sd1).await;
    // Renamed synchronously, before the verb returned.
    assert!(!img_dir(&dom1, &img).exists());
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert!(all_zero(&h1), "every byte of volume 1 was zeroed");
    assert!(all_zero(&h2), "every byte of volume 2 was zeroed");
    let leftover = dom1.join("images").join(format!("_remove_me_ZERO_{img}"));
    assert!(!leftover.exists(), "removed after the wipe");
    assert!(c
        .api()
        .get_images(sd1.clone())
        .await
        .via(&c)
        .unwrap()
        .is_empty());
    let e = c
        .api()
        .delete_image(img.clone(), sd1.clone(), None, None, None, None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ImageDoesNotExistInSD));

    // Without wipe: plain removal.
    let img = uuid();
    let v = uuid();
    create(&c, &sd1, &img, &v, MIB, VolumeFormat::Raw, None).await;
    let r = c
        .api()
        .delete_image(
            img.clone(),
            sd1.clone(),
            Some(Flag(false)),
            None,
            Some(Flag(true)),
            None,
        )
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &r).await.status, JobStatus::Done);
    assert!(!dom1
        .join("images")
        .join(format!("_remove_me_{img}"))
        .exists());
}

#[tokio::test]
async fn delete_with_wipe_zeroes_a_block_device_volume() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, _, dom1, _) = default_domains(&c).await;
    let backing = agent.state_dir.join("block.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    write_pattern(&backing, 0, 16 * MIB as usize, 9);
    let Some(lo) = LoopDevice::attach(&backing) else {
        return;
    };
    let img = uuid();
    let v = uuid();
    create(&c, &sd1, &img, &v, 16 * MIB, VolumeFormat::Raw, None).await;
    // The volume is a link to the device, as oVirt block domains link images to LVs.
    let p = volume_path(&dom1, &img, &v);
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(&lo.dev, &p).unwrap();
    let job = delete_with_wipe(&c, &img, &sd1).await;
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    let dev = std::fs::File::open(&lo.dev).unwrap();
    assert!(all_zero(&dev), "the device reads back as zeros");
    assert!(lo.dev.exists(), "the device itself is not removed");
}

#[tokio::test]
async fn delete_refuses_held_leases_and_shared_volumes() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, dom1, _) = default_domains(&c).await;
    // A destination being written (throttled copy) cannot be deleted: 651, nothing renamed.
    let (simg, svol, dimg, dvol) = (uuid(), uuid(), uuid(), uuid());
    create(&c, &sd2, &simg, &svol, 8 * MIB, VolumeFormat::Raw, None).await;
    create(&c, &sd1, &dimg, &dvol, 8 * MIB, VolumeFormat::Raw, None).await;
    let (_, _, _, dom2) = default_domains(&c).await;
    write_pattern(&volume_path(&dom2, &simg, &svol), 0, 8 * MIB as usize, 13);
    let (src, dst) = (
        endpoint(&sd2, &simg, &svol, None),
        endpoint(&sd1, &dimg, &dvol, None),
    );
    let job = start_copy(&c, src, dst, Some(MIB)).await;
    wait_running(&c, &job).await;
    let e = c
        .api()
        .delete_image(
            dimg.clone(),
            sd1.clone(),
            Some(Flag(true)),
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap_err();
    assert!(
        matches!(e.code(), Some(ErrorCode::AcquireLockFailure)),
        "{e}"
    );
    assert!(img_dir(&dom1, &dimg).exists(), "nothing renamed");
    c.api().abort_job(job.clone()).await.via(&c).unwrap();
    wait_job(&c, &job).await;

    // A template volume cannot be deleted.
    let (timg, tvol) = (uuid(), uuid());
    create(&c, &sd1, &timg, &tvol, MIB, VolumeFormat::Raw, None).await;
    let shared = VolumeAttributes {
        role: Some(VolumeRole::Shared),
        ..Default::default()
    };
    update_volume(&c, volume_ref(&sd1, &timg, &tvol, Some(0)), shared).await;
    let e = c
        .api()
        .delete_image(timg.clone(), sd1.clone(), None, None, None, None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CannotDeleteSharedVolume));
    assert!(img_dir(&dom1, &timg).exists());
}

fn slow_config(bw: u64) -> Option<String> {
    Some(format!(
        "create_default_domains = true\n[io]\nbandwidth_limit = {bw}\nimage_parallelism = 1\n"
    ))
}

#[tokio::test]
async fn abort_and_crash_mid_wipe_leave_a_leftover_that_is_wiped_before_removal() {
    let state = tempfile::Builder::new()
        .prefix("sdm-wipe-")
        .tempdir()
        .unwrap();
    let mut agent = AgentProc::start(AgentOptions {
        state_dir: Some(state.path().to_path_buf()),
        config: slow_config(2 * MIB),
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, _, dom1, _) = default_domains(&c).await;

    // Abort mid-wipe: VolumesZeroingError, the leftover stays, data still there.
    let img = uuid();
    let v = uuid();
    create(&c, &sd1, &img, &v, 16 * MIB, VolumeFormat::Raw, None).await;
    let p = volume_path(&dom1, &img, &v);
    write_pattern(&p, 0, 16 * MIB as usize, 10);
    let h = std::fs::File::open(&p).unwrap();
    let job = delete_with_wipe(&c, &img, &sd1).await;
    wait_running(&c, &job).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.api().abort_job(job.clone()).await.via(&c).unwrap();
    let a = wait_job(&c, &job).await;
    assert_eq!(a.status, JobStatus::Aborted);
    assert_eq!(a.error.as_ref().unwrap().code, 374, "{a:?}");
    let leftover = dom1.join("images").join(format!("_remove_me_ZERO_{img}"));
    assert!(
        leftover.join(v.as_str()).exists(),
        "unwiped data is never removed"
    );
    let mut tail = vec![0u8; 4096];
    h.read_exact_at(&mut tail, 16 * MIB - 4096).unwrap();
    assert!(tail.iter().any(|b| *b != 0), "the end was not reached yet");
    let fixes = c.api().check_domain(sd1.clone()).await.via(&c).unwrap();
    let fix = fixes
        .iter()
        .find(|f| f.data["kind"] == "leftover")
        .unwrap_or_else(|| panic!("check reports the leftover: {fixes:?}"))
        .clone();
    assert_eq!(fix.fix_type, FixType::Clean);

    // Crash mid-wipe of the fix job: the restart's garbage collection wipes, then removes.
    let job = c
        .api()
        .fix_domain(sd1.clone(), fix, None)
        .await
        .via(&c)
        .unwrap();
    wait_running(&c, &job.uuid).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.kill9();
    assert!(leftover.exists());
    agent.restart();
    let c = agent.client();
    let fixes = c.api().check_domain(sd1.clone()).await.via(&c).unwrap();
    assert!(
        fixes.iter().any(|f| f.data["kind"] == "leftover"),
        "still reported while being wiped: {fixes:?}"
    );
    let gc = c.api().get_jobs(None, None).await.via(&c).unwrap();
    let gc_job = gc
        .values()
        .find(|j| j.description == "gc_wipe")
        .expect("attach scheduled the wipe")
        .id
        .clone();
    let done = wait_job(&c, &gc_job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert!(!leftover.exists());
    let mut all = Vec::new();
    (&h).read_to_end(&mut all).ok();
    let mut h2 = h;
    use std::io::Seek;
    h2.seek(std::io::SeekFrom::Start(0)).unwrap();
    assert!(all_zero(&h2), "wiped before removal");
    assert!(c
        .api()
        .check_domain(sd1.clone())
        .await
        .via(&c)
        .unwrap()
        .is_empty());
    drop(agent);
}

#[tokio::test]
async fn check_and_fix_orphans_illegal_volumes_and_sizes() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, _, dom1, _) = default_domains(&c).await;
    let img = uuid();
    let (good, bad, short) = (uuid(), uuid(), uuid());
    create(&c, &sd1, &img, &good, MIB, VolumeFormat::Raw, None).await;
    create(&c, &sd1, &img, &bad, MIB, VolumeFormat::Raw, None).await;
    create(&c, &sd1, &img, &short, 4 * MIB, VolumeFormat::Raw, None).await;
    let dir = img_dir(&dom1, &img);
    // An orphaned data file (a create that crashed before its metadata), an ILLEGAL volume,
    // and a raw file shorter than its capacity.
    let orphan = uuid();
    std::fs::write(dir.join(orphan.as_str()), b"x").unwrap();
    let r = volume_ref(&sd1, &img, &bad, Some(0));
    update_volume(&c, r, legality_attrs(Legality::Illegal)).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(short.as_str()))
        .unwrap()
        .set_len(MIB)
        .unwrap();

    let fixes = c.api().check_domain(sd1.clone()).await.via(&c).unwrap();
    let find = |kind: &str| {
        fixes
            .iter()
            .find(|f| f.data["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("{kind} not found in {fixes:?}"))
    };
    let (o, i, s) = (
        find("orphan"),
        find("illegal_volume"),
        find("size_mismatch"),
    );
    assert_eq!(fixes.len(), 3, "{fixes:?}");
    assert_eq!(o.data["file"], orphan.as_str());
    assert_eq!(i.data["vol"], bad.as_str());

    // Orphan: removed.
    let t = c
        .api()
        .fix_domain(sd1.clone(), o, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &t.uuid).await.status, JobStatus::Done);
    assert!(!dir.join(orphan.as_str()).exists());
    // ILLEGAL volume: refused unless confirmed; then deleted.
    let e = c
        .api()
        .fix_domain(sd1.clone(), i.clone(), None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException));
    assert!(dir.join(format!("{bad}.meta")).exists());
    let mut confirmed = i;
    confirmed.data["confirm_delete"] = serde_json::json!(true);
    let t = c
        .api()
        .fix_domain(sd1.clone(), confirmed, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &t.uuid).await.status, JobStatus::Done);
    assert!(!dir.join(format!("{bad}.meta")).exists() && !dir.join(bad.as_str()).exists());
    // Short raw file: extended to its capacity.
    let t = c
        .api()
        .fix_domain(sd1.clone(), s, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &t.uuid).await.status, JobStatus::Done);
    assert_eq!(
        std::fs::metadata(dir.join(short.as_str())).unwrap().len(),
        4 * MIB
    );
    assert!(c
        .api()
        .check_domain(sd1.clone())
        .await
        .via(&c)
        .unwrap()
        .is_empty());
    assert!(dir.join(good.as_str()).exists());

    // A forged finding cannot point outside the domain.
    let forged = Fix {
        fix_type: FixType::Clean,
        description: String::new(),
        data: serde_json::json!({"kind": "orphan", "img": img, "file": "../../../../etc/passwd"}),
    };
    let e = c
        .api()
        .fix_domain(sd1.clone(), forged, None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException));
    let forged = Fix {
        fix_type: FixType::Clean,
        description: String::new(),
        data: serde_json::json!({"kind": "leftover", "name": "_remove_me_../../x"}),
    };
    let e = c
        .api()
        .fix_domain(sd1.clone(), forged, None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException));
}
#[tokio::test]
async fn another_agent_attaching_leaves_a_live_deletion_alone() {
    let a = AgentProc::start(AgentOptions {
        config: slow_config(2 * MIB),
        ..Default::default()
    });
    let ca = a.client();
    let (sd1, _, dom1, _) = default_domains(&ca).await;
    let img = uuid();
    let v = uuid();
    create(&ca, &sd1, &img, &v, 16 * MIB, VolumeFormat::Raw, None).await;
    write_pattern(&volume_path(&dom1, &img, &v), 0, 16 * MIB as usize, 14);
    let job = delete_with_wipe(&ca, &img, &sd1).await;
    wait_running(&ca, &job).await;
    // A second agent attaches the same domain while the wipe runs.
    let b = AgentProc::start(AgentOptions {
        config: Some(format!(
            "create_default_domains = false\n[[domains]]\npath = {:?}\n",
            dom1
        )),
        host_id: Some(2),
        ..Default::default()
    });
    let cb = b.client();
    assert!(cb
        .api()
        .list_domains()
        .await
        .via(&cb)
        .unwrap()
        .iter()
        .any(|d| d.sd_id == sd1));
    let jobs = cb.api().get_jobs(None, None).await.via(&cb).unwrap();
    assert!(
        jobs.is_empty(),
        "the second agent took over a live deletion: {jobs:?}"
    );
    assert!(
        b.log_text().contains("in progress elsewhere"),
        "{}",
        b.log_text()
    );
    let done = wait_job(&ca, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
}

/// An image deleted while `StorageDomain.check` scans the domain (an engine's delete beside
/// its check) is simply not reported: the scan never fails because something vanished.
#[tokio::test]
async fn check_while_images_vanish_never_fails() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, _, dom1, _) = default_domains(&c).await;
    let mut imgs = Vec::new();
    for _ in 0..120 {
        let (img, vol) = (uuid(), uuid());
        create(&c, &sd1, &img, &vol, MIB, VolumeFormat::Raw, None).await;
        imgs.push(img);
    }
    // Remove the images one by one from under the agent, as a deletion on another host would,
    // while the checks run.
    let dirs: Vec<PathBuf> = imgs.iter().map(|i| img_dir(&dom1, i)).collect();
    let remover = std::thread::spawn(move || {
        for d in dirs {
            std::fs::remove_dir_all(&d).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut checks = 0;
    while !remover.is_finished() || checks == 0 {
        let fixes = c.api().check_domain(sd1.clone()).await.via(&c);
        let fixes = fixes.unwrap_or_else(|e| panic!("check failed after {checks} scans: {e:?}"));
        assert!(
            fixes.iter().all(|f| f.data["kind"] != "bad_metadata"),
            "a vanished volume was reported as bad metadata: {fixes:?}"
        );
        checks += 1;
    }
    remover.join().unwrap();
    assert!(checks > 1, "the checks did not overlap the removals");
}
