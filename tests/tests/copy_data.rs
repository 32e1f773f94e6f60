//! `SDM.copy_data` and `SDM.update_volume` through real agents: VDSM's scenarios, leases seen
//! from another client, contention, kill -9 and restart — with local leases, and with sanlock
//! for two hosts.

use std::path::Path;
use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

/// A raw source with data in a few places and holes elsewhere.
async fn raw_source(c: &AgentClient, sd: &Uuid, size: u64) -> Vol {
    let v = new_volume(c, sd, size, VolumeFormat::Raw).await;
    write_pattern(&v.path, 0, 256 * 1024, 1);
    write_pattern(&v.path, size / 2 + 4096, MIB as usize, 2);
    write_pattern(&v.path, size - 8192, 8192, 3);
    v
}

async fn fill_illegal(c: &AgentClient, v: &Vol, generation: u16) {
    let attrs = legality_attrs(Legality::Illegal);
    assert_eq!(
        update_volume(c, v.vref(Some(generation)), attrs)
            .await
            .status,
        JobStatus::Done
    );
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::process::Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn copy_raw_and_cow_succeeds_legal_with_next_generation() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;

    let src = raw_source(&c, &sd1, 64 * MIB).await;
    let before = sha256sum(&src.path);
    let dst = new_volume(&c, &sd2, 64 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert_eq!(done.progress, Some(100.0));
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
    assert!(i.lease.owners.is_empty());
    assert!(same_bytes(&src.path, &dst.path), "cmp differs");
    assert!(qemu_img_compare(&src.path, &dst.path));
    assert!(
        i.truesize.0 < 16 * MIB,
        "sparse source stays sparse: {} allocated",
        i.truesize.0
    );
    assert_eq!(sha256sum(&src.path), before, "source untouched");
    assert_eq!(
        src.info(&c).await.generation,
        0,
        "source generation untouched"
    );

    // COW: a qcow2 with data, copied container to container.
    let csrc = new_volume(&c, &sd1, 32 * MIB, VolumeFormat::Cow).await;
    let raw = agent.state_dir.join("fill.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    write_pattern(&raw, 3 * MIB, 2 * MIB as usize, 9);
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-n"])
        .arg(&raw)
        .arg(&csrc.path)
        .status()
        .unwrap();
    assert!(st.success());
    let cdst = new_volume(&c, &sd2, 32 * MIB, VolumeFormat::Cow).await;
    let job = copy_volume(&c, &csrc, &cdst, Some(0), None).await;
    assert_eq!(wait_job(&c, &job).await.status, JobStatus::Done);
    assert!(
        qemu_img_compare(&raw, &cdst.path),
        "qcow2 destination has the data"
    );
    assert!(
        qemu_img_check(&cdst.path),
        "qemu-img check of the destination"
    );

    // RAW into COW converts (issue 14; the refusal with 2009 this asserted before is gone).
    let conv = new_volume(&c, &sd2, 64 * MIB, VolumeFormat::Cow).await;
    let job = copy_volume(&c, &src, &conv, Some(0), None).await;
    assert_eq!(wait_job(&c, &job).await.status, JobStatus::Done);
    assert_eq!(conv.info(&c).await.generation, 1);
    assert!(qemu_img_compare(&src.path, &conv.path));
    assert!(qemu_img_check(&conv.path));
}

#[tokio::test]
async fn injected_io_error_leaves_destination_illegal_with_old_generation() {
    let agent = AgentProc::start(AgentOptions {
        env: vec![("FAILPOINTS".into(), "sdm_io::write=return(EIO)".into())],
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = raw_source(&c, &sd1, 16 * MIB).await;
    let before = sha256sum(&src.path);
    let dst = new_volume(&c, &sd2, 16 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let f = wait_job(&c, &job).await;
    assert_eq!(f.status, JobStatus::Failed);
    let e = f.error.unwrap();
    assert_eq!(e.code, 100, "{e:?}");
    assert!(
        e.message.contains("Input/output error"),
        "errno text reaches the engine: {}",
        e.message
    );
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    assert!(i.lease.owners.is_empty());
    assert_eq!(sha256sum(&src.path), before);
    c.api().get_capabilities().await.via(&c).unwrap();
}

#[tokio::test]
async fn abort_and_lease_visible_while_running() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 16 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 16 * MIB as usize, 5);
    let dst = new_volume(&c, &sd2, 16 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), Some(2 * MIB)).await;
    let running = wait_running(&c, &job).await;
    assert_eq!(running.status, JobStatus::Running);

    // A second client sees the lease held by this host while the copy runs.
    let other = AgentClient::new(&agent.url).unwrap();
    let i = dst.info(&other).await;
    assert_eq!(i.lease.owners, vec![1]);
    assert_eq!(i.legality, Legality::Illegal, "ILLEGAL while written");
    let stats = other.api().get_stats().await.via(&other).unwrap();
    assert_eq!(stats.jobs_running, 1);

    // A second copy onto the same destination fails at once with 651.
    let second = copy_volume(&other, &src, &dst, None, None).await;
    let s = wait_job(&other, &second).await;
    assert_eq!(s.error.as_ref().map(|e| e.code), Some(651), "{s:?}");

    let t = std::time::Instant::now();
    c.api().abort_job(job.clone()).await.via(&c).unwrap();
    let a = wait_job(&c, &job).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "abort took {:?}",
        t.elapsed()
    );
    assert_eq!(a.status, JobStatus::Aborted);
    assert_eq!(a.error.unwrap().code, 443);
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    assert!(i.lease.owners.is_empty(), "lease released after abort");

    // An ILLEGAL destination is allowed: the copy can be run again and succeeds.
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    assert_eq!(wait_job(&c, &job).await.status, JobStatus::Done);
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
    assert!(same_bytes(&src.path, &dst.path));
}

#[tokio::test]
async fn generation_mismatch_and_illegal_source() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = raw_source(&c, &sd1, 8 * MIB).await;
    let dst = new_volume(&c, &sd2, 8 * MIB, VolumeFormat::Raw).await;
    let dst_before = sha256sum(&dst.path);
    let meta_before = std::fs::read(dst.path.with_extension("meta")).unwrap();

    let job = copy_volume(&c, &src, &dst, Some(1), None).await;
    let f = wait_job(&c, &job).await;
    assert_eq!(f.error.unwrap().code, 911);
    let i = dst.info(&c).await;
    assert_eq!(
        (i.legality, i.generation),
        (Legality::Legal, 0),
        "nothing changed"
    );
    assert_eq!(sha256sum(&dst.path), dst_before);
    assert_eq!(
        std::fs::read(dst.path.with_extension("meta")).unwrap(),
        meta_before,
        "metadata not rewritten"
    );

    fill_illegal(&c, &src, 0).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let f = wait_job(&c, &job).await;
    assert_eq!(f.error.unwrap().code, 227);
    assert_eq!(dst.info(&c).await.legality, Legality::Legal);
}

#[tokio::test]
async fn update_volume_matrix() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, _, _, _) = default_domains(&c).await;
    let v = new_volume(&c, &sd1, MIB, VolumeFormat::Raw).await;
    let r = |g: Option<u16>| v.vref(g);
    let run = |vr: VolumeRef, a: VolumeAttributes| update_volume(&c, vr, a);

    assert_eq!(
        run(r(Some(0)), legality_attrs(Legality::Illegal))
            .await
            .status,
        JobStatus::Done
    );
    assert_eq!(v.info(&c).await.generation, 1);
    assert_eq!(
        run(r(Some(1)), legality_attrs(Legality::Legal))
            .await
            .status,
        JobStatus::Done
    );
    let i = v.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 2));
    // Same legality: InvalidVolumeUpdate, generation unchanged.
    assert_eq!(
        run(r(Some(2)), legality_attrs(Legality::Legal))
            .await
            .error
            .unwrap()
            .code,
        235
    );
    assert_eq!(v.info(&c).await.generation, 2);
    // Wrong or missing generation: 911.
    assert_eq!(
        run(r(Some(7)), legality_attrs(Legality::Illegal))
            .await
            .error
            .unwrap()
            .code,
        911
    );
    assert_eq!(
        run(r(None), legality_attrs(Legality::Illegal))
            .await
            .error
            .unwrap()
            .code,
        911
    );
    // Description; explicit generation; the fence G -> G+3.
    let d = VolumeAttributes {
        description: Some(Description::parse("renamed").unwrap()),
        ..Default::default()
    };
    assert_eq!(run(r(Some(2)), d).await.status, JobStatus::Done);
    assert_eq!(v.info(&c).await.description, "renamed");
    let g = VolumeAttributes {
        generation: Some(Generation(44)),
        ..Default::default()
    };
    assert_eq!(run(r(Some(3)), g).await.status, JobStatus::Done);
    assert_eq!(v.info(&c).await.generation, 44);
    let fence = VolumeAttributes {
        generation: Some(Generation(47)),
        ..Default::default()
    };
    assert_eq!(run(r(Some(44)), fence).await.status, JobStatus::Done);
    assert_eq!(v.info(&c).await.generation, 47);
    // Generation wraps at 999.
    let g = VolumeAttributes {
        generation: Some(Generation(999)),
        ..Default::default()
    };
    run(r(Some(47)), g).await;
    assert_eq!(
        run(r(Some(999)), legality_attrs(Legality::Illegal))
            .await
            .status,
        JobStatus::Done
    );
    assert_eq!(v.info(&c).await.generation, 0);
    // Type: a parentless LEAF may become SHARED, once.
    let shared = VolumeAttributes {
        role: Some(VolumeRole::Shared),
        ..Default::default()
    };
    assert_eq!(
        run(r(Some(0)), shared.clone()).await.status,
        JobStatus::Done
    );
    assert_eq!(v.info(&c).await.voltype, VolumeRole::Shared);
    assert_eq!(
        run(r(Some(1)), shared.clone()).await.error.unwrap().code,
        235
    );
    // A leaf with a parent, and an internal volume, cannot.
    let img = uuid();
    let (base, top) = (uuid(), uuid());
    for (vol, parent) in [(&base, None), (&top, Some(base.clone()))] {
        create_volume(&c, &sd1, &img, vol, MIB, VolumeFormat::Cow, parent, None).await;
    }
    for vol in [&top, &base] {
        let vr = volume_ref(&sd1, &img, vol, Some(0));
        assert_eq!(run(vr, shared.clone()).await.error.unwrap().code, 235);
    }
    // Empty or invalid attributes are refused before a job exists.
    let job = uuid();
    let e = c
        .api()
        .update_volume(job.clone(), r(Some(1)), VolumeAttributes::default())
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException));
    let e = c
        .api()
        .update_volume(
            job.clone(),
            r(Some(1)),
            VolumeAttributes {
                role: Some(VolumeRole::Leaf),
                ..Default::default()
            },
        )
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException));
    assert!(c
        .api()
        .get_jobs(None, Some(vec![job]))
        .await
        .via(&c)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn kill_9_mid_copy_then_restart_local_leases() {
    let mut agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 16 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 16 * MIB as usize, 11);
    let before = sha256sum(&src.path);
    let dst = new_volume(&c, &sd2, 16 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), Some(2 * MIB)).await;
    wait_running(&c, &job).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.restart();
    let c = agent.client();
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    assert!(i.lease.owners.is_empty(), "the dead agent's lease is free");
    assert_eq!(sha256sum(&src.path), before, "source byte-identical");
    assert!(
        c.api()
            .get_jobs(None, None)
            .await
            .via(&c)
            .unwrap()
            .is_empty(),
        "jobs are gone with the process"
    );
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    assert_eq!(wait_job(&c, &job).await.status, JobStatus::Done);
    assert!(same_bytes(&src.path, &dst.path));
}

#[tokio::test]
async fn sigterm_aborts_running_jobs_cleanly() {
    let mut agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 16 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 16 * MIB as usize, 12);
    let dst = new_volume(&c, &sd2, 16 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), Some(MIB)).await;
    wait_running(&c, &job).await;
    let (status, took) = agent.terminate();
    assert!(
        status.success() && took < Duration::from_secs(10),
        "{status} after {took:?}"
    );
    let md = std::fs::read_to_string(dst.path.with_extension("meta")).unwrap();
    assert!(
        md.contains("LEGALITY=ILLEGAL\n") && md.contains("GEN=0\n"),
        "{md}"
    );
}

// ---------------------------------------------------------------------------------------------
// sanlock: two hosts, each with its own daemon, over one shared domain directory.

fn sanlock_config(shared: &Path, run_dir: &Path) -> String {
    format!(
        "create_default_domains = false\ndomain_roots = [{shared:?}]\n[leases]\ndefault_backend = \"sanlock\"\nsanlock_io_timeout_s = 1\nsanlock_run_dir = {run_dir:?}\n"
    )
}

#[tokio::test]
async fn sanlock_two_hosts_lease_contention_and_crash() {
    use sdm_lease::test_support::{sanlock_available, SanlockDaemon};
    if let Err(why) = sanlock_available() {
        eprintln!("skipping sanlock_two_hosts_lease_contention_and_crash: {why}");
        return;
    }
    let shared = tempfile::Builder::new()
        .prefix("sdm-shared-")
        .tempdir()
        .unwrap();
    let d1 = SanlockDaemon::start("sdm-h1");
    let d2 = SanlockDaemon::start("sdm-h2");
    let mut h1 = AgentProc::start(AgentOptions {
        config: Some(sanlock_config(shared.path(), d1.run_dir())),
        host_id: Some(1),
        ..Default::default()
    });
    let h2 = AgentProc::start(AgentOptions {
        config: Some(sanlock_config(shared.path(), d2.run_dir())),
        host_id: Some(2),
        ..Default::default()
    });
    let c1 = h1.client();
    let c2 = h2.client();
    let sd = uuid();
    c1.api()
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
        .via(&c1)
        .unwrap();
    let dir = shared.path().join(sd.as_str());
    c2.api()
        .attach_domain(dir.to_string_lossy().into(), None, None, None, None)
        .await
        .via(&c2)
        .unwrap();
    let caps = c2.api().get_capabilities().await.via(&c2).unwrap();
    assert!(caps.lease_backends.contains(&"sanlock".to_string()));
    assert_eq!(
        std::fs::metadata(dir.join("dom_md/ids")).unwrap().len(),
        1 << 20,
        "lockspace written"
    );

    let src_a = new_volume(&c1, &sd, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src_a.path, 0, 8 * MIB as usize, 21);
    let dst_a = new_volume(&c1, &sd, 8 * MIB, VolumeFormat::Raw).await;
    let src_b = new_volume(&c2, &sd, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src_b.path, 0, 8 * MIB as usize, 22);
    let dst_b = new_volume(&c2, &sd, 8 * MIB, VolumeFormat::Raw).await;
    assert_eq!(
        std::fs::metadata(dst_a.path.with_extension("lease"))
            .unwrap()
            .len(),
        1 << 20,
        "sanlock resource written"
    );

    // Host 1 copies slowly; host 2 sees host 1 as the owner and cannot take the lease.
    let job_a = copy_volume(&c1, &src_a, &dst_a, Some(0), Some(MIB)).await;
    wait_running(&c1, &job_a).await;
    let seen = dst_a.info(&c2).await;
    assert_eq!(
        seen.lease.owners,
        vec![1],
        "host 2 sees host 1 holding the lease"
    );
    assert!(seen.lease.version.is_some());
    let t = std::time::Instant::now();
    let steal = copy_volume(&c2, &src_b, &dst_a, None, None).await;
    let s = wait_job(&c2, &steal).await;
    assert_eq!(s.error.as_ref().map(|e| e.code), Some(651), "{s:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting: {:?}",
        t.elapsed()
    );

    // Copies on both hosts run at the same time on different volumes.
    let job_b = copy_volume(&c2, &src_b, &dst_b, Some(0), None).await;
    assert_eq!(wait_job(&c2, &job_b).await.status, JobStatus::Done);
    assert_eq!(
        wait_running(&c1, &job_a).await.status,
        JobStatus::Running,
        "host 1 still copying"
    );
    assert!(same_bytes(&src_b.path, &dst_b.path));

    // Host 1's agent frozen (SIGSTOP) while its sanlock daemon keeps renewing the host's
    // delta lease: the lease stays with host 1, and host 2 is still refused at once.
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(h1.pid() as i32, libc::SIGSTOP) };
    let frozen = copy_volume(&c2, &src_b, &dst_a, None, None).await;
    let s = wait_job(&c2, &frozen).await;
    assert_eq!(s.error.as_ref().map(|e| e.code), Some(651), "{s:?}");
    assert_eq!(dst_a.info(&c2).await.lease.owners, vec![1]);
    // SAFETY: as above.
    unsafe { libc::kill(h1.pid() as i32, libc::SIGCONT) };

    // kill -9 of host 1 mid-copy: sanlock frees its lease, the volume stays ILLEGAL, gen 0.
    h1.kill9();
    let mut freed = false;
    for _ in 0..50 {
        if dst_a.info(&c2).await.lease.owners.is_empty() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the dead agent's lease was not freed");
    let i = dst_a.info(&c2).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    // Host 2 finishes the work.
    let job = copy_volume(&c2, &src_a, &dst_a, Some(0), None).await;
    assert_eq!(wait_job(&c2, &job).await.status, JobStatus::Done);
    let i = dst_a.info(&c2).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
    assert!(same_bytes(&src_a.path, &dst_a.path));
    // Host 1 comes back, rejoins, and sees the finished volume with its lease free.
    h1.restart();
    let c1 = h1.client();
    let i = dst_a.info(&c1).await;
    assert!(i.lease.owners.is_empty());
    assert_eq!(i.generation, 1);
    drop(d2);
}
