//! IO faults and contention through real agents: ENOSPC on a size-limited tmpfs and on a
//! loop-mounted ext4, EIO/short writes/fsync failures at the IO boundary (failpoints) and from
//! an external peer (nbdkit's error filter behind nbdfuse), racing writers, a stale job after
//! fencing, abort storms, and a lease holder frozen with SIGSTOP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdm_client::{SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

/// A mount, unmounted (lazily, by path) when dropped, also on panic.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?
            .success();
        ok.then(|| Mount(dir.to_path_buf()))
    }

    fn ext4(image: &Path, dir: &Path, size: u64) -> Option<(Mount, LoopDevice)> {
        std::fs::File::create(image).unwrap().set_len(size).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let lo = LoopDevice::attach(image)?;
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .arg(&lo.dev)
            .arg(dir)
            .status()
            .ok()?
            .success();
        ok.then(|| (Mount(dir.to_path_buf()), lo))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Copies 24 MiB of data into a domain on a file system with less room than that.
async fn enospc_case(agent: &AgentProc, root: &Path) {
    let c = agent.client();
    let (sd1, _, _, _) = default_domains(&c).await;
    let sd = uuid();
    c.api()
        .create_domain(
            sd.clone(),
            Some(root.to_string_lossy().into()),
            None,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    let src = new_volume(&c, &sd1, 24 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 24 * MIB as usize, 3);
    let other = new_volume(&c, &sd, MIB, VolumeFormat::Raw).await;
    let other_meta = std::fs::read(other.path.with_extension("meta")).unwrap();
    let dst = new_volume(&c, &sd, 24 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let f = wait_job(&c, &job).await;
    assert_eq!(f.status, JobStatus::Failed);
    let e = f.error.unwrap();
    assert_eq!(e.code, 397, "NoSpaceLeftOnDomain: {e:?}");
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    assert!(i.lease.owners.is_empty());
    assert_eq!(
        std::fs::read(other.path.with_extension("meta")).unwrap(),
        other_meta,
        "nothing else touched"
    );
    c.api().get_capabilities().await.via(&c).unwrap();
}

/// A second agent (host 2) with the domain directories `doms` attached, in that order.
async fn second_host(doms: &[&Path]) -> AgentProc {
    let b = AgentProc::start(AgentOptions {
        host_id: Some(2),
        ..Default::default()
    });
    let cb = b.client();
    for d in doms {
        cb.api()
            .attach_domain(d.to_string_lossy().into(), None, None, None, None)
            .await
            .via(&cb)
            .unwrap();
    }
    b
}

fn roots_config(root: &Path) -> Option<String> {
    Some(format!(
        "create_default_domains = true\ndomain_roots = [{root:?}]\n"
    ))
}

#[tokio::test]
async fn enospc_on_a_small_tmpfs_and_a_loop_mounted_ext4() {
    if !is_root() {
        eprintln!("skipping enospc test: mounting needs root");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("sdm-enospc-")
        .tempdir()
        .unwrap();
    let small = tmp.path().join("tmpfs");
    let Some(_m) = Mount::tmpfs(&small, "16m") else {
        eprintln!("skipping: cannot mount tmpfs");
        return;
    };
    let agent = AgentProc::start(AgentOptions {
        config: roots_config(&small),
        ..Default::default()
    });
    enospc_case(&agent, &small).await;
    drop(agent);

    let ext = tmp.path().join("ext4");
    let Some((_m2, _lo)) = Mount::ext4(&tmp.path().join("fs.img"), &ext, 16 * MIB) else {
        eprintln!("skipping ext4 part: cannot make a loop-mounted ext4");
        return;
    };
    let agent = AgentProc::start(AgentOptions {
        config: roots_config(&ext),
        ..Default::default()
    });
    enospc_case(&agent, &ext).await;
}

#[tokio::test]
async fn short_writes_complete_and_fsync_errors_fail() {
    let agent = AgentProc::start(AgentOptions {
        env: vec![("FAILPOINTS".into(), "sdm_io::write=10%return(short)".into())],
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 16 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 16 * MIB as usize, 5);
    let dst = new_volume(&c, &sd2, 16 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    assert_eq!(
        wait_job(&c, &job).await.status,
        JobStatus::Done,
        "short writes are continued"
    );
    assert_eq!(sha256sum(&src.path), sha256sum(&dst.path));
    drop(agent);

    let agent = AgentProc::start(AgentOptions {
        env: vec![("FAILPOINTS".into(), "sdm_io::fsync=return(EIO)".into())],
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 4 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 4 * MIB as usize, 6);
    let dst = new_volume(&c, &sd2, 4 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let f = wait_job(&c, &job).await;
    assert_eq!(f.status, JobStatus::Failed);
    assert_eq!(f.error.unwrap().code, 100);
    assert_eq!(
        dst.info(&c).await.legality,
        Legality::Illegal,
        "a failed fsync never becomes LEGAL"
    );
}

/// nbdkit with its error filter, mounted as a file by nbdfuse; killed and unmounted on drop.
struct NbdFile {
    child: Child,
    mnt: PathBuf,
}

impl NbdFile {
    fn start(mnt: &Path, size: &str, filter_args: &[&str]) -> Option<NbdFile> {
        if Command::new("nbdfuse").arg("--version").output().is_err() {
            eprintln!(
                "skipping nbdkit part: nbdfuse is not installed (apt-get install libnbd-bin)"
            );
            return None;
        }
        std::fs::create_dir_all(mnt).unwrap();
        let mut cmd = Command::new("nbdfuse");
        cmd.arg(mnt)
            .arg("--command")
            .arg("nbdkit")
            .arg("-s")
            .arg("--exit-with-parent")
            .arg("--filter=error")
            .arg("memory")
            .arg(size);
        cmd.args(filter_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().ok()?;
        let file = mnt.join("nbd");
        let t = Instant::now();
        while !file.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                eprintln!("skipping nbdkit part: nbdfuse did not come up");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(NbdFile {
            child,
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for NbdFile {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn eio_from_an_external_nbdkit_peer() {
    if !is_root() {
        eprintln!("skipping nbdkit test: FUSE mounts need root here");
        return;
    }
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, dom2) = default_domains(&c).await;
    // Mounted inside the destination domain: the agent refuses volumes that lead outside it.
    let Some(nbd) = NbdFile::start(
        &dom2.join("nbd"),
        "8M",
        &["error=EIO", "error-pwrite-rate=100%"],
    ) else {
        return;
    };
    let src = new_volume(&c, &sd1, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 8 * MIB as usize, 7);
    let dst = new_volume(&c, &sd2, 8 * MIB, VolumeFormat::Raw).await;
    // The destination's data is the nbdkit-backed file, linked as a block domain links an LV.
    let p = dst.path.clone();
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(nbd.mnt.join("nbd"), &p).unwrap();
    let job = copy_volume(&c, &src, &dst, Some(0), None).await;
    let f = wait_job(&c, &job).await;
    assert_eq!(f.status, JobStatus::Failed, "{f:?}");
    let e = f.error.unwrap();
    assert!(
        e.code == 100 && e.message.contains("Input/output error"),
        "{e:?}"
    );
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    c.api().get_capabilities().await.via(&c).unwrap();
}

#[tokio::test]
async fn racing_writers_stale_jobs_and_abort_storms() {
    // Two agents over one domain: exactly one of two racing copies writes the destination.
    let a = AgentProc::start(AgentOptions::default());
    let ca = a.client();
    let (sd1, sd2, dom1, dom2) = default_domains(&ca).await;
    let b = second_host(&[&dom2, &dom1]).await;
    let cb = b.client();
    let s1 = new_volume(&ca, &sd1, 8 * MIB, VolumeFormat::Raw).await;
    let s2 = new_volume(&ca, &sd1, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&s1.path, 0, 8 * MIB as usize, 1);
    write_pattern(&s2.path, 0, 8 * MIB as usize, 2);
    let dst = new_volume(&ca, &sd2, 8 * MIB, VolumeFormat::Raw).await;
    let ja = copy_volume(&ca, &s1, &dst, Some(0), Some(4 * MIB)).await;
    let jb = copy_volume(&cb, &s2, &dst, Some(0), Some(4 * MIB)).await;
    let (ra, rb) = (wait_job(&ca, &ja).await, wait_job(&cb, &jb).await);
    let done: Vec<_> = [&ra, &rb]
        .iter()
        .filter(|r| r.status == JobStatus::Done)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(done.len(), 1, "exactly one writer wins: {ra:?} {rb:?}");
    let loser = if ra.status == JobStatus::Done {
        &rb
    } else {
        &ra
    };
    let code = loser.error.as_ref().unwrap().code;
    assert!(
        code == 651 || code == 911,
        "the loser fails on the lease or the generation: {loser:?}"
    );
    let winner_src = if ra.status == JobStatus::Done {
        &s1
    } else {
        &s2
    };
    assert_eq!(sha256sum(&dst.path), sha256sum(&winner_src.path));
    assert_eq!(dst.info(&ca).await.generation, 1);

    // Duplicate job ids across the same agent: refused, nothing started twice.
    let e = ca
        .api()
        .copy_data(
            ja.clone(),
            s1.ep(None),
            dst.ep(Some(1)),
            None,
            None,
            None,
            None,
        )
        .await
        .via(&ca)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::JobExists));
    assert_eq!(dst.info(&ca).await.generation, 1);
}

#[tokio::test]
async fn a_fenced_job_that_starts_late_cannot_make_the_volume_legal() {
    let agent = AgentProc::start(AgentOptions {
        config: Some("create_default_domains = true\n[io]\nmax_running_jobs = 1\n".into()),
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let busy_src = new_volume(&c, &sd1, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&busy_src.path, 0, 8 * MIB as usize, 3);
    let busy_dst = new_volume(&c, &sd2, 8 * MIB, VolumeFormat::Raw).await;
    let blocker = copy_volume(&c, &busy_src, &busy_dst, None, Some(MIB)).await;
    wait_running(&c, &blocker).await;
    // The engine submits with G = 0; the job waits for a slot.
    let src = new_volume(&c, &sd1, MIB, VolumeFormat::Raw).await;
    let dst = new_volume(&c, &sd2, MIB, VolumeFormat::Raw).await;
    let stale = copy_volume(&c, &src, &dst, Some(0), None).await;
    // The engine loses track and fences: G -> G+3.
    let fence = VolumeAttributes {
        generation: Some(Generation(3)),
        ..Default::default()
    };
    // Fencing does not queue behind data jobs: it is done while the copy still waits.
    let f = update_volume(&c, dst.vref(Some(0)), fence).await;
    assert_eq!(f.status, JobStatus::Done, "{f:?}");
    c.api().abort_job(blocker.clone()).await.via(&c).unwrap();
    let s = wait_job(&c, &stale).await;
    let i = dst.info(&c).await;
    assert_eq!(i.generation, 3, "fenced");
    if s.status == JobStatus::Done {
        panic!("the stale job ran after the fence and succeeded: {s:?}");
    }
    assert_eq!(s.error.unwrap().code, 911);
    assert_eq!(
        i.legality,
        Legality::Legal,
        "the fenced volume was never touched by the stale job"
    );
}

#[tokio::test]
async fn abort_storm_leaves_no_lease_and_a_live_agent() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 4 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 4 * MIB as usize, 9);
    let mut jobs = Vec::new();
    let mut dsts = Vec::new();
    for _ in 0..12 {
        let d = new_volume(&c, &sd2, 4 * MIB, VolumeFormat::Raw).await;
        jobs.push(copy_volume(&c, &src, &d, Some(0), Some(MIB)).await);
        dsts.push(d);
    }
    // Several aborts per job, concurrently, while they start.
    let mut tasks = Vec::new();
    for round in 0..3 {
        for j in &jobs {
            let (c, j) = (c.clone(), j.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * round)).await;
                c.api()
                    .abort_job(j)
                    .await
                    .via(&c)
                    .map(|_| ())
                    .map_err(|e| e.code())
            }));
        }
    }
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) | Err(Some(ErrorCode::JobNotActive)) => {}
            Err(e) => panic!("unexpected abort answer {e:?}"),
        }
    }
    for (j, d) in jobs.iter().zip(&dsts) {
        let r = wait_job(&c, j).await;
        assert_eq!(r.status, JobStatus::Aborted, "{r:?}");
        assert_eq!(r.error.unwrap().code, 443);
        let i = d.info(&c).await;
        assert!(i.lease.owners.is_empty());
        assert_eq!(i.generation, 0);
    }
    let stats = c.api().get_stats().await.via(&c).unwrap();
    assert_eq!((stats.jobs_running, stats.jobs_pending), (0, 0));
}

#[tokio::test]
async fn a_frozen_lease_holder_keeps_its_lease() {
    // Local leases: the lock belongs to the stopped process; another writer is refused at once,
    // and the holder finishes after SIGCONT. (sanlock: see docs/reliability.md.)
    let a = AgentProc::start(AgentOptions::default());
    let ca = a.client();
    let (sd1, sd2, dom1, dom2) = default_domains(&ca).await;
    let b = second_host(&[&dom1, &dom2]).await;
    let cb = b.client();
    let src = new_volume(&ca, &sd1, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 8 * MIB as usize, 4);
    let dst = new_volume(&ca, &sd2, 8 * MIB, VolumeFormat::Raw).await;
    let job = copy_volume(&ca, &src, &dst, Some(0), Some(2 * MIB)).await;
    wait_running(&ca, &job).await;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(a.pid() as i32, libc::SIGSTOP) };
    let t = Instant::now();
    let other = copy_volume(&cb, &src, &dst, None, None).await;
    let r = wait_job(&cb, &other).await;
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(651), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        !dst.info(&cb).await.lease.owners.is_empty(),
        "the frozen holder still owns the lease"
    );
    // SAFETY: as above.
    unsafe { libc::kill(a.pid() as i32, libc::SIGCONT) };
    let done = wait_job(&ca, &job).await;
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(dst.info(&cb).await.generation, 1);
}

/// sanlock: a destination lease lost while the copy runs (released behind the agent's back, as
/// sanlock does when it revokes a lease) must stop the copy from declaring the volume good: the
/// job fails with AcquireLockFailure and the destination stays ILLEGAL at its old generation.
#[tokio::test]
async fn a_lease_lost_during_a_copy_keeps_the_destination_illegal() {
    use sdm_lease::test_support::{sanlock_available, sanlock_binary, SanlockDaemon};
    if let Err(why) = sanlock_available() {
        eprintln!("SKIPPED a_lease_lost_during_a_copy_keeps_the_destination_illegal: {why}");
        return;
    }
    let daemon = SanlockDaemon::start("sdm-lost-lease");
    let agent = AgentProc::start(AgentOptions {
        config: Some(format!(
            "create_default_domains = true\n[leases]\ndefault_backend = \"sanlock\"\n\
             sanlock_io_timeout_s = 1\nsanlock_run_dir = {:?}\n",
            daemon.run_dir()
        )),
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = new_volume(&c, &sd1, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 8 * MIB as usize, 9);
    let dst = new_volume(&c, &sd2, 8 * MIB, VolumeFormat::Raw).await;
    // 8 MiB at 2 MiB/s: about 4 s, time enough to take the lease away.
    let job = copy_volume(&c, &src, &dst, Some(0), Some(2 * MIB)).await;
    wait_running(&c, &job).await;
    let lease = dst.info(&c).await.lease;
    assert_eq!(lease.owners, vec![1], "the copy holds the lease");
    let out = std::process::Command::new(sanlock_binary().unwrap())
        .args(["client", "release", "-r"])
        .arg(format!(
            "{}:{}:{}:{}",
            dst.sd, dst.vol, lease.path, lease.offset
        ))
        .args(["-p", &agent.pid().to_string()])
        .env("SANLOCK_RUN_DIR", daemon.run_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sanlock client release: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let f = wait_job(&c, &job).await;
    assert_eq!(f.status, JobStatus::Failed, "{f:?}");
    let e = f.error.unwrap();
    assert_eq!(e.code, 651, "AcquireLockFailure: {e:?}");
    eprintln!("copy after its lease was taken away: {e:?}");
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    // Nothing stuck: the volume can be copied again, and this time it becomes LEGAL.
    let again = copy_volume(&c, &src, &dst, Some(0), None).await;
    assert_eq!(wait_job(&c, &again).await.status, JobStatus::Done);
    assert_eq!(dst.info(&c).await.generation, 1);
}
