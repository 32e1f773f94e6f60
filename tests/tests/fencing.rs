//! Fencing across hosts (issue 12): two agents, each with its own sanlock daemon and host id
//! (io_timeout 1 s), over one shared domain — a frozen host writes nothing after another
//! fenced it, a lease taken away before the first write stops the job, the lease backend is
//! the domain's, every metadata writer holds the lease of what it writes — and, with local leases on one host, the re-read under
//! the lease, the source check before LEGAL and the outcome of a failed directory fsync.

use std::process::Command;
use std::time::{Duration, Instant};

use sdm_client::{SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::fencing::{eventually, sanlock_or_skip, SanlockHost, TwoHosts};
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn meta_of(v: &Vol) -> Vec<u8> {
    std::fs::read(v.path.with_extension("meta")).expect("read .meta")
}

fn description(s: &str) -> VolumeAttributes {
    VolumeAttributes {
        description: Some(Description::parse(s).unwrap()),
        ..Default::default()
    }
}

fn generation(g: u16) -> VolumeAttributes {
    VolumeAttributes {
        generation: Some(Generation(g)),
        ..Default::default()
    }
}

/// Whole-host freeze: host A (agent and daemon) stopped mid-copy until its lease expires; B
/// fences the destination (G → G+3) and copies into it; A thaws. Not one more byte or metadata
/// line of A reaches the volume, and A's job never ends done (sanlock kills A's agent when its
/// daemon finds the lockspace lost, and the agent stops on its own when its lease deadline has
/// passed, whichever comes first).
#[tokio::test]
async fn a_frozen_host_writes_nothing_after_another_host_fenced_it() {
    if !sanlock_or_skip("a_frozen_host_writes_nothing_after_another_host_fenced_it") {
        return;
    }
    let h = TwoHosts::start("freeze", &[], &[]).await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let src = new_volume(&ca, &h.sd, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 8 * MIB as usize, 31);
    let other = new_volume(&cb, &h.sd, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&other.path, 0, 8 * MIB as usize, 32);
    let dst = new_volume(&ca, &h.sd, 8 * MIB, VolumeFormat::Raw).await;
    // 16 s at 512 KiB/s: A is mid-copy when frozen, with most of the copy still to do.
    let job = copy_volume(&ca, &src, &dst, Some(0), Some(MIB / 2)).await;
    wait_running(&ca, &job).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dst.info(&cb).await.lease.owners, vec![1]);

    h.a.freeze();
    let frozen = Instant::now();
    // B fences as soon as sanlock lets it: 651 while A's host still counts as alive.
    let fenced = eventually(Duration::from_secs(200), Duration::from_secs(2), || async {
        let f = update_volume(&cb, dst.vref(Some(0)), generation(3)).await;
        match f.status {
            JobStatus::Done => Some(()),
            _ => {
                assert_eq!(f.error.as_ref().map(|e| e.code), Some(651), "{f:?}");
                None
            }
        }
    })
    .await;
    assert!(fenced.is_some(), "B never got A's lease");
    let expiry = frozen.elapsed();
    eprintln!("A's lease was taken over {expiry:.1?} after the freeze (io_timeout 1 s)");
    assert!(
        expiry > Duration::from_secs(20),
        "taken over too soon: {expiry:?}"
    );
    let b_copy = copy_volume(&cb, &other, &dst, Some(3), None).await;
    let r = wait_job(&cb, &b_copy).await;
    assert_eq!(r.status, JobStatus::Done, "{r:?}");
    let i = dst.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 4));
    let (sum, meta) = (sha256sum(&dst.path), meta_of(&dst));
    assert_eq!(sum, sha256sum(&other.path));

    h.a.thaw();
    // A's lease deadline (6 s) has long passed and its daemon finds the lockspace lost: give
    // both every chance to write, then look.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        sha256sum(&dst.path),
        sum,
        "A wrote data after it was fenced"
    );
    assert_eq!(meta_of(&dst), meta, "A wrote metadata after it was fenced");
    let i = dst.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 4));
    if h.a.agent_alive() {
        let r = wait_job(&ca, &job).await;
        eprintln!("A's agent survived the thaw; its job: {r:?}");
        assert_ne!(r.status, JobStatus::Done, "{r:?}");
    } else {
        eprintln!("A's agent was killed by its sanlock daemon on thaw; its job died with it");
    }
    assert_eq!(sha256sum(&dst.path), sum);
    assert_eq!(meta_of(&dst), meta);
}

/// A's lease released from outside while its job waits for an in-process lock: the job fails
/// with 651 before its first write (the destination's metadata and bytes are untouched).
#[tokio::test]
async fn a_lease_lost_while_waiting_for_a_lock_fails_before_the_first_write() {
    if !sanlock_or_skip("a_lease_lost_while_waiting_for_a_lock_fails_before_the_first_write") {
        return;
    }
    let h = TwoHosts::start("lockwait", &[], &[]).await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let src = new_volume(&ca, &h.sd, 4 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 4 * MIB as usize, 41);
    // Two volumes of one image: a copy into either takes the image's lock exclusively.
    let img = uuid();
    let (busy, target) = (uuid(), uuid());
    for v in [&busy, &target] {
        create_volume(&ca, &h.sd, &img, v, 4 * MIB, VolumeFormat::Raw, None, None).await;
    }
    let dir = domain_dir(&ca, &h.sd).await;
    let busy = Vol {
        sd: h.sd.clone(),
        img: img.clone(),
        vol: busy.clone(),
        path: volume_path(&dir, &img, &busy),
    };
    let dst = Vol {
        sd: h.sd.clone(),
        img: img.clone(),
        vol: target.clone(),
        path: volume_path(&dir, &img, &target),
    };
    write_pattern(&dst.path, 0, MIB as usize, 42);
    let (sum, meta) = (sha256sum(&dst.path), meta_of(&dst));
    let blocker = copy_volume(&ca, &src, &busy, Some(0), Some(MIB / 4)).await;
    wait_running(&ca, &blocker).await;
    let job = copy_volume(&ca, &src, &dst, Some(0), None).await;
    // The job holds the destination's lease (it takes it before the locks) and waits.
    let lease = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let i = dst.info(&cb).await;
            (i.lease.owners == vec![1]).then_some(i.lease)
        },
    )
    .await
    .expect("the waiting job took the destination's lease");
    h.a.release_from_outside(&h.sd, &dst.vol, &lease.path, lease.offset);
    tokio::time::sleep(Duration::from_millis(500)).await;
    ca.api().abort_job(blocker.clone()).await.via(&ca).unwrap();
    let r = wait_job(&ca, &job).await;
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert_eq!(r.error.as_ref().unwrap().code, 651, "{r:?}");
    assert_eq!(
        meta_of(&dst),
        meta,
        "nothing written: not even the ILLEGAL mark"
    );
    assert_eq!(sha256sum(&dst.path), sum, "no data written");
    let i = dst.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 0));
}

/// The lease backend is the domain's: A attaching B's sanlock domain with local is refused
/// (StorageDomainTypeError, nothing changed), from the API and from A's config at start.
#[tokio::test]
async fn attaching_a_sanlock_domain_with_local_leases_is_refused() {
    if !sanlock_or_skip("attaching_a_sanlock_domain_with_local_leases_is_refused") {
        return;
    }
    let shared = tempfile::Builder::new()
        .prefix("sdm-fence-")
        .tempdir()
        .unwrap();
    let b = SanlockHost::start("attach-b", 2, shared.path(), &[]);
    let cb = b.agent.client();
    let sd = uuid();
    cb.api()
        .create_domain(
            sd.clone(),
            Some(shared.path().to_string_lossy().into()),
            None,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&cb)
        .unwrap();
    let dir = shared.path().join(sd.as_str());
    let md = std::fs::read_to_string(dir.join("dom_md/metadata")).unwrap();
    assert!(md.contains("TYPE=POSIXFS\n"), "{md}");
    let before = snapshot(&dir);

    // A: a host whose default is local, no sanlock daemon at all.
    let a = AgentProc::start(AgentOptions {
        host_id: Some(1),
        ..Default::default()
    });
    let ca = a.client();
    for force in [None, Some(Flag(true))] {
        let e = ca
            .api()
            .attach_domain(
                dir.to_string_lossy().into(),
                Some(LeaseBackendName::Local),
                force,
                None,
                None,
            )
            .await
            .via(&ca)
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::StorageDomainTypeError), "{e:?}");
        assert!(e.to_string().contains("sanlock"), "{e}");
    }
    let listed = ca.api().list_domains().await.via(&ca).unwrap();
    assert!(listed.iter().all(|d| d.sd_id != sd), "{listed:?}");
    assert_eq!(snapshot(&dir), before, "nothing changed in the domain");
    // Without an expectation A would attach it with sanlock, which this host lacks: that
    // fails on sanlock, not on the domain's type.
    if let Err(e) = ca
        .api()
        .attach_domain(dir.to_string_lossy().into(), None, None, None, None)
        .await
        .via(&ca)
    {
        assert_ne!(e.code(), Some(ErrorCode::StorageDomainTypeError), "{e:?}");
    }

    // The same from the config at start: the domain is not attached, the agent runs.
    let c = AgentProc::start(AgentOptions {
        host_id: Some(3),
        config: Some(format!(
            "[[domains]]\npath = {dir:?}\nlease_backend = \"local\"\n"
        )),
        ..Default::default()
    });
    let cc = c.client();
    assert!(cc.api().list_domains().await.via(&cc).unwrap().is_empty());
    assert!(
        c.log_text().contains("formatted for sanlock leases"),
        "{}",
        c.log_text()
    );
    assert_eq!(snapshot(&dir), before);
}

/// A local domain on a network file system (FUSE here, as GlusterFS is) is refused unless
/// forced, at create and at attach.
#[tokio::test]
async fn a_local_domain_on_a_network_file_system_needs_force() {
    if !is_root() || Command::new("bindfs").arg("--version").output().is_err() {
        eprintln!("SKIPPED a_local_domain_on_a_network_file_system_needs_force: needs root and bindfs (a FUSE mount; apt-get install bindfs)");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("sdm-fence-fuse-")
        .tempdir()
        .unwrap();
    let (below, mnt) = (tmp.path().join("below"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&below).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("bindfs")
        .arg(&below)
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "bindfs mount");
    let _unmount = Unmount(mnt.clone());
    let a = AgentProc::start(AgentOptions {
        config: Some(format!(
            "create_default_domains = true\ndomain_roots = [{mnt:?}, {below:?}]\n"
        )),
        ..Default::default()
    });
    let c = a.client();
    let sd = uuid();
    let e = c
        .api()
        .create_domain(
            sd.clone(),
            Some(mnt.to_string_lossy().into()),
            None,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StorageDomainTypeError), "{e:?}");
    assert!(e.to_string().contains("FUSE"), "{e}");
    assert!(!mnt.join(sd.as_str()).exists(), "nothing formatted");
    // Formatted on the local path below the mount, then attached through the FUSE mount.
    c.api()
        .create_domain(
            sd.clone(),
            Some(below.to_string_lossy().into()),
            None,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    c.api().detach_domain(sd.clone()).await.via(&c).unwrap();
    let over_fuse = mnt.join(sd.as_str()).to_string_lossy().into_owned();
    let e = c
        .api()
        .attach_domain(over_fuse.clone(), None, None, None, None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StorageDomainTypeError), "{e:?}");
    let r = c
        .api()
        .attach_domain(over_fuse, None, Some(Flag(true)), None, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(r.sd_id, sd);
    // Remembered with force: a restart attaches it again.
    let mut a = a;
    a.restart();
    let c = a.client();
    let listed = c.api().list_domains().await.via(&c).unwrap();
    assert!(listed.iter().any(|d| d.sd_id == sd), "{listed:?}");
}

/// Unmounts a FUSE mount by path on drop, also on panic.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A creating a child of P while B holds P's lease (B's `SDM.update_volume` of P, slowed by a
/// failpoint): 651, and P's metadata is whole: B's update, still LEAF, no child.
#[tokio::test]
async fn creating_a_child_while_another_host_holds_the_parent_lease_fails_651() {
    if !sanlock_or_skip("creating_a_child_while_another_host_holds_the_parent_lease_fails_651") {
        return;
    }
    let h = TwoHosts::start(
        "parent",
        &[],
        &[("FAILPOINTS", "sdm::update_volume::before_write=sleep(4000)")],
    )
    .await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let p = new_volume(&ca, &h.sd, 4 * MIB, VolumeFormat::Cow).await;
    let job = uuid();
    cb.api()
        .update_volume(job.clone(), p.vref(Some(0)), description("updated by B"))
        .await
        .via(&cb)
        .unwrap();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (p.info(&ca).await.lease.owners == vec![2]).then_some(()) },
    )
    .await
    .expect("B holds P's lease");
    let child = uuid();
    let e = ca
        .api()
        .create_volume(
            h.sd.clone(),
            p.img.clone(),
            child.clone(),
            Capacity(Size(4 * MIB)),
            VolumeFormat::Cow,
            Preallocation::Sparse,
            Some(p.vol.clone()),
            None,
        )
        .await
        .via(&ca)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AcquireLockFailure), "{e:?}");
    let r = wait_job(&cb, &job).await;
    assert_eq!(r.status, JobStatus::Done, "{r:?}");
    let i = p.info(&ca).await;
    assert_eq!(i.description, "updated by B");
    assert_eq!(i.generation, 1);
    assert_eq!(i.voltype, VolumeRole::Leaf, "no child, so still a LEAF");
    assert_eq!(
        ca.api()
            .get_volumes(h.sd.clone(), p.img.clone())
            .await
            .via(&ca)
            .unwrap(),
        vec![p.vol.clone()],
        "the child was not created"
    );
    // With the lease free, the child is created and P becomes INTERNAL.
    create_volume(
        &ca,
        &h.sd,
        &p.img,
        &child,
        4 * MIB,
        VolumeFormat::Cow,
        Some(p.vol.clone()),
        None,
    )
    .await;
    let i = p.info(&ca).await;
    assert_eq!(
        (i.voltype, i.description.as_str()),
        (VolumeRole::Internal, "updated by B")
    );
}
/// The source stays what it was: B changes the source while A copies it; A's copy fails and
/// the destination stays ILLEGAL at its old generation.
#[tokio::test]
async fn a_source_changed_during_the_copy_is_not_declared_copied() {
    if !sanlock_or_skip("a_source_changed_during_the_copy_is_not_declared_copied") {
        return;
    }
    let h = TwoHosts::start("source", &[], &[]).await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let src = new_volume(&ca, &h.sd, 4 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 4 * MIB as usize, 51);
    let dst = new_volume(&ca, &h.sd, 4 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&ca, &src, &dst, Some(0), Some(MIB)).await;
    wait_running(&ca, &job).await;
    let u = update_volume(&cb, src.vref(Some(0)), legality_attrs(Legality::Illegal)).await;
    assert_eq!(u.status, JobStatus::Done, "{u:?}");
    let r = wait_job(&ca, &job).await;
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert_eq!(r.error.as_ref().unwrap().code, 227, "{r:?}");
    let i = dst.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
}

/// A lost sanlock registration (the daemon died) stops every job holding a lease in it at
/// once, with 651: the copy does not run on to its end.
#[tokio::test]
async fn a_lost_registration_stops_the_copy_at_once() {
    if !sanlock_or_skip("a_lost_registration_stops_the_copy_at_once") {
        return;
    }
    let mut h = TwoHosts::start("daemon", &[], &[]).await;
    let ca = h.a.agent.client();
    let src = new_volume(&ca, &h.sd, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 8 * MIB as usize, 61);
    let dst = new_volume(&ca, &h.sd, 8 * MIB, VolumeFormat::Raw).await;
    // 16 s at 512 KiB/s.
    let job = copy_volume(&ca, &src, &dst, Some(0), Some(MIB / 2)).await;
    wait_running(&ca, &job).await;
    h.a.daemon.kill().unwrap();
    let t = Instant::now();
    let r = wait_job(&ca, &job).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopped at once, not at the end of the copy: {:?}",
        t.elapsed()
    );
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.code, 651, "{e:?}");
    assert!(r.bytes_done < 8 * MIB, "{}", r.bytes_done);
    let md = String::from_utf8(meta_of(&dst)).unwrap();
    assert!(
        md.contains("LEGALITY=ILLEGAL") && md.contains("GEN=0"),
        "{md}"
    );
}

// ---------------------------------------------------------------------------------------------
// One host, local leases: the rules that need no second host to show.

/// The re-read under the lease must not fall back to the read before it: the engine fences
/// (G → G+3) while the job waits for its lease, and the re-read fails once; the job fails and
/// the fenced volume is not overwritten at G and marked LEGAL G+1.
#[tokio::test]
async fn a_failed_reread_under_the_lease_fails_the_copy() {
    let agent = AgentProc::start(AgentOptions {
        env: vec![(
            "FAILPOINTS".into(),
            "sdm::copy_data::before_lease=sleep(2000);sdm::copy_data::reread=1*return(EIO)".into(),
        )],
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, MIB as usize, 71);
    let dst = new_volume(&c, &sd2, MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let f = update_volume(&c, dst.vref(Some(0)), generation(3)).await;
    assert_eq!(f.status, JobStatus::Done, "{f:?}");
    let r = wait_job(&c, &job).await;
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    let i = dst.info(&c).await;
    assert_eq!(
        (i.legality, i.generation),
        (Legality::Legal, 3),
        "the fenced volume is untouched"
    );
}

/// `Image.delete` reads metadata under the leases: what another host wrote just before is
/// what gets marked ILLEGAL (here B's fence to generation 3), not a stale read.
#[tokio::test]
async fn image_delete_marks_what_it_read_under_the_leases() {
    let a = AgentProc::start(AgentOptions {
        env: vec![(
            "FAILPOINTS".into(),
            "sdm::image_delete::before_lease=sleep(2000);sdm::image_delete::before_remove=sleep(5000)".into(),
        )],
        ..Default::default()
    });
    let ca = a.client();
    let (_, sd2, dom1, dom2) = default_domains(&ca).await;
    let b = AgentProc::start(AgentOptions {
        host_id: Some(2),
        ..Default::default()
    });
    let cb = b.client();
    for d in [&dom1, &dom2] {
        cb.api()
            .attach_domain(d.to_string_lossy().into(), None, None, None, None)
            .await
            .via(&cb)
            .unwrap();
    }
    let v = new_volume(&ca, &sd2, MIB, VolumeFormat::Raw).await;
    let (ca2, sd, img) = (ca.clone(), sd2.clone(), v.img.clone());
    let delete = tokio::spawn(async move {
        ca2.api()
            .delete_image(img, sd, None, None, None, None)
            .await
            .via(&ca2)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let f = update_volume(&cb, v.vref(Some(0)), generation(3)).await;
    assert_eq!(f.status, JobStatus::Done, "{f:?}");
    delete.await.unwrap().expect("delete accepted");
    let leftover = dom2
        .join("images")
        .join(format!("_remove_me_{}", v.img))
        .join(format!("{}.meta", v.vol));
    let md = std::fs::read_to_string(&leftover).expect("the leftover is there for 5 s");
    assert!(
        md.contains("LEGALITY=ILLEGAL\n") && md.contains("GEN=3\n"),
        "B's generation kept: {md}"
    );
}

/// When the directory fsync after the LEGAL rename fails, the job reports what the disk says:
/// done, with the volume LEGAL at G+1 — never "failed" next to a LEGAL G+1 volume.
#[tokio::test]
async fn a_failed_directory_fsync_after_the_legal_write_reports_what_the_disk_says() {
    let agent = AgentProc::start(AgentOptions {
        env: vec![(
            "FAILPOINTS".into(),
            "sdm::durable::dir_fsync=return(EIO:GEN=1)".into(),
        )],
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 2 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 2 * MIB as usize, 81);
    let dst = new_volume(&c, &sd2, 2 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let r = wait_job(&c, &job).await;
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1), "{r:?}");
    assert_eq!(
        r.status,
        JobStatus::Done,
        "the job agrees with the disk: {r:?}"
    );
    assert!(
        agent.log_text().contains("directory fsync failed"),
        "the lost durability is logged"
    );
    assert_eq!(sha256sum(&src.path), sha256sum(&dst.path));
}
