//! Creations and deletions interrupted half-way: a half-made volume (data and lease without
//! `.meta`) is taken over only once its creator is gone, an agent's restart removes its own dead
//! writers' temporary files at once, `Image.delete` removes half-made volumes, and a deletion's
//! leftover whose lease files are gone is still removed. The scale run's leftovers came from
//! these paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sdm_client::{SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::fencing::{sanlock_or_skip, TwoHosts};
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn img_dir(dom: &Path, img: &Uuid) -> PathBuf {
    dom.join("images").join(img.as_str())
}

fn description(s: &str) -> VolumeAttributes {
    VolumeAttributes {
        description: Some(Description::parse(s).unwrap()),
        ..Default::default()
    }
}

/// A creation killed half-way on host A (between its metadata's temporary file and the rename,
/// holding the new volume's lease): while A's creation runs, B can neither create that volume
/// nor delete its image (651); once A is killed, A's restart removes its own dead writer's
/// temporary file at once, and B's create of the same volume takes over the half-made one.
#[tokio::test]
async fn a_half_made_volume_is_taken_over_only_once_its_creator_is_gone() {
    if !sanlock_or_skip("a_half_made_volume_is_taken_over_only_once_its_creator_is_gone") {
        return;
    }
    let mut h = TwoHosts::start(
        "halfmade",
        &[(
            "FAILPOINTS",
            "sdm::durable::before_rename=return(60000:DESCRIPTION=half-made)",
        )],
        &[],
    )
    .await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let (img, vol) = (uuid(), uuid());
    let img_dir = h.dir.join("images").join(img.as_str());
    let temp = create_held_before_rename(&ca, &h.sd, &img, &vol, &img_dir, "half-made").await;
    let a_pid = h.a.agent.pid();
    assert!(temp.contains(&format!(".sdm-tmp-h1-p{a_pid}-")), "{temp}");

    // A is creating it: B must not touch it.
    let create_on_b = || async {
        cb.api()
            .create_volume(
                h.sd.clone(),
                img.clone(),
                vol.clone(),
                Capacity(Size(MIB)),
                VolumeFormat::Raw,
                Preallocation::Sparse,
                None,
                Description::parse("by B").ok(),
            )
            .await
            .via(&cb)
    };
    let e = create_on_b().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AcquireLockFailure), "{e:?}");
    let e = cb
        .api()
        .delete_image(img.clone(), h.sd.clone(), None, None, None, None)
        .await
        .via(&cb)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AcquireLockFailure), "{e:?}");

    h.a.agent.kill9();
    let files = |n: &str| img_dir.join(n).exists();
    assert!(files(&temp) && files(vol.as_str()) && files(&format!("{vol}.lease")));
    assert!(!files(&format!("{vol}.meta")));
    let fixes = cb.api().check_domain(h.sd.clone()).await.via(&cb).unwrap();
    assert!(
        fixes
            .iter()
            .any(|f| f.data["file"] == serde_json::json!(temp)),
        "check reports the dead writer's file: {fixes:?}"
    );
    h.a.agent.restart_same_port();
    assert!(
        meta_temp_files(&img_dir, &vol).is_empty(),
        "A's restart removed its dead writer's temporary file"
    );
    assert!(files(vol.as_str()) && files(&format!("{vol}.lease")));

    create_on_b()
        .await
        .expect("B takes over the half-made volume");
    let i = volume_info(&ca, &h.sd, &img, &vol).await;
    assert_eq!(i.description, "by B");
    assert_eq!(i.legality, Legality::Legal);
    assert!(i.lease.owners.is_empty());
    let fixes = ca.api().check_domain(h.sd.clone()).await.via(&ca).unwrap();
    assert!(fixes.is_empty(), "{fixes:?}");
}

/// A volume deleted with its image and created again, with the same ids, on the same host: the
/// deletion's leases must not outlive the files they lived in (the scale run's rolled-back moves
/// are tried again with the same ids).
#[tokio::test]
async fn a_volume_deleted_and_created_again_on_the_same_host() {
    if !sanlock_or_skip("a_volume_deleted_and_created_again_on_the_same_host") {
        return;
    }
    let h = TwoHosts::start("recreate", &[], &[]).await;
    let ca = h.a.agent.client();
    let v = new_volume(&ca, &h.sd, MIB, VolumeFormat::Raw).await;
    for round in 0..2 {
        let t = ca
            .api()
            .delete_image(v.img.clone(), h.sd.clone(), None, None, None, None)
            .await
            .via(&ca)
            .unwrap();
        let done = wait_job(&ca, &t).await;
        assert_eq!(done.status, JobStatus::Done, "round {round}: {done:?}");
        ca.api()
            .create_volume(
                h.sd.clone(),
                v.img.clone(),
                v.vol.clone(),
                Capacity(Size(MIB)),
                VolumeFormat::Raw,
                Preallocation::Sparse,
                None,
                None,
            )
            .await
            .via(&ca)
            .unwrap_or_else(|e| panic!("round {round}: create again: {e:?}"));
        // Its lease can be taken again (SDM.update_volume holds it).
        let r = update_volume(&ca, v.vref(Some(0)), description("again")).await;
        assert_eq!(r.status, JobStatus::Done, "round {round}: {r:?}");
    }
}

/// A create refused after its lease was made and taken (qemu-img refuses the size) leaves
/// nothing: no half-made volume for `StorageDomain.check` to report. Its lease file goes before
/// its sanlock lease is released, so the same host can create that volume right after and
/// take its new lease.
#[tokio::test]
async fn a_refused_create_leaves_no_half_made_volume() {
    if !sanlock_or_skip("a_refused_create_leaves_no_half_made_volume") {
        return;
    }
    let h = TwoHosts::start("refused", &[], &[]).await;
    let ca = h.a.agent.client();
    let v = new_volume(&ca, &h.sd, MIB, VolumeFormat::Raw).await;
    let (img, vol) = (v.img.clone(), uuid());
    let create = |capacity: u64| {
        let (ca, sd, img, vol, parent) = (&ca, &h.sd, &img, &vol, &v.vol);
        async move {
            ca.api()
                .create_volume(
                    sd.clone(),
                    img.clone(),
                    vol.clone(),
                    Capacity(Size(capacity)),
                    VolumeFormat::Cow,
                    Preallocation::Sparse,
                    Some(parent.clone()),
                    None,
                )
                .await
                .via(ca)
        }
    };
    create(1 << 60)
        .await
        .expect_err("qemu-img refuses the size");
    let names: Vec<String> = std::fs::read_dir(v.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(vol.as_str()))
        .collect();
    assert!(names.is_empty(), "a refused create left {names:?}");
    let fixes = ca.api().check_domain(h.sd.clone()).await.via(&ca).unwrap();
    assert!(fixes.is_empty(), "{fixes:?}");

    create(MIB).await.expect("created after the refusal");
    let child = Vol {
        sd: h.sd.clone(),
        img: img.clone(),
        vol: vol.clone(),
        path: v.path.with_file_name(vol.as_str()),
    };
    let r = update_volume(&ca, child.vref(Some(0)), description("taken again")).await;
    assert_eq!(r.status, JobStatus::Done, "{r:?}");
}

/// A deletion whose removal was killed half-way can leave a volume's `.meta` in the
/// `_remove_me_` directory after its `.lease` is gone: finishing it must not need that lease.
#[tokio::test]
async fn a_leftover_whose_lease_files_are_gone_is_still_removed() {
    if !sanlock_or_skip("a_leftover_whose_lease_files_are_gone_is_still_removed") {
        return;
    }
    let h = TwoHosts::start("nolease", &[], &[]).await;
    let ca = h.a.agent.client();
    let v = new_volume(&ca, &h.sd, MIB, VolumeFormat::Raw).await;
    let images = h.dir.join("images");
    let leftover = images.join(format!("_remove_me_{}", v.img));
    std::fs::rename(images.join(v.img.as_str()), &leftover).unwrap();
    std::fs::remove_file(leftover.join(format!("{}.lease", v.vol))).unwrap();
    let fixes = ca.api().check_domain(h.sd.clone()).await.via(&ca).unwrap();
    assert_eq!(fixes.len(), 1, "{fixes:?}");
    let t = ca
        .api()
        .fix_domain(h.sd.clone(), fixes[0].clone(), None)
        .await
        .via(&ca)
        .unwrap();
    let done = wait_job(&ca, &t.uuid).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert!(!leftover.exists());
}

/// An agent killed while creating volumes (between a metadata file's temporary file and its
/// rename) leaves half-made volumes and its temporary files. Its restart removes its own dead
/// writer's temporary files at once; another host's stay until they are 10 minutes old (then
/// garbage collection removes them), `StorageDomain.check` reports the young one and `fix`
/// removes it. `Image.delete` removes an image whose only volume is half-made, and the
/// half-made volume beside a complete one.
#[tokio::test]
async fn a_killed_creation_is_collected_at_restart_and_deleted_with_its_image() {
    let mut agent = AgentProc::start(AgentOptions {
        env: vec![(
            "FAILPOINTS".into(),
            "sdm::durable::before_rename=return(60000:DESCRIPTION=doomed)".into(),
        )],
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, _, dom1, _) = default_domains(&c).await;
    let (img1, img2) = (uuid(), uuid());
    let (v0, v1, v2) = (uuid(), uuid(), uuid());
    let (dir1, dir2) = (img_dir(&dom1, &img1), img_dir(&dom1, &img2));
    create_volume(&c, &sd1, &img1, &v0, MIB, VolumeFormat::Raw, None, None).await;
    create_held_before_rename(&c, &sd1, &img1, &v1, &dir1, "doomed").await;
    create_held_before_rename(&c, &sd1, &img2, &v2, &dir2, "doomed").await;
    // Files other hosts' writers left: one young, one an hour old.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let theirs = |host: u32| {
        dir1.join(format!(
            "{v0}.meta.sdm-tmp-h{host}-p{dead}-0123456789abcdef"
        ))
    };
    let (young, old) = (theirs(2), theirs(3));
    for p in [&young, &old] {
        std::fs::write(p, b"DOMAIN=").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();

    agent.kill9();
    assert_eq!(meta_temp_files(&dir1, &v1).len(), 1);
    agent.restart_same_port();
    let c = agent.client();
    assert!(
        meta_temp_files(&dir1, &v1).is_empty(),
        "ours, removed at restart"
    );
    assert!(
        meta_temp_files(&dir2, &v2).is_empty(),
        "ours, removed at restart"
    );
    assert!(!old.exists(), "another host's, 10 minutes old: removed");
    assert!(
        young.exists(),
        "another host's, young: only that host can tell it is dead"
    );

    let fixes = c.api().check_domain(sd1.clone()).await.via(&c).unwrap();
    let mut orphans: Vec<String> = fixes
        .iter()
        .filter(|f| f.data["kind"] == "orphan")
        .map(|f| f.data["file"].as_str().unwrap().to_string())
        .collect();
    orphans.sort();
    let young_name = young.file_name().unwrap().to_string_lossy().into_owned();
    let mut want = vec![
        v1.to_string(),
        format!("{v1}.lease"),
        v2.to_string(),
        format!("{v2}.lease"),
        young_name.clone(),
    ];
    want.sort();
    assert_eq!(orphans, want, "{fixes:?}");
    let fix = fixes
        .into_iter()
        .find(|f| f.data["file"] == young_name.as_str())
        .unwrap();
    let t = c
        .api()
        .fix_domain(sd1.clone(), fix, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &t.uuid).await.status, JobStatus::Done);
    assert!(!young.exists());

    // An image of half-made volumes only still exists, and Image.delete removes it.
    let vols = c
        .api()
        .get_volumes(sd1.clone(), img2.clone())
        .await
        .via(&c)
        .unwrap();
    assert!(vols.is_empty());
    for img in [&img2, &img1] {
        let t = c
            .api()
            .delete_image(img.clone(), sd1.clone(), None, None, None, None)
            .await
            .via(&c)
            .unwrap();
        let done = wait_job(&c, &t).await;
        assert_eq!(done.status, JobStatus::Done, "{done:?}");
    }
    assert!(!dir1.exists() && !dir2.exists());
    let fixes = c.api().check_domain(sd1.clone()).await.via(&c).unwrap();
    assert!(fixes.is_empty(), "{fixes:?}");
}
