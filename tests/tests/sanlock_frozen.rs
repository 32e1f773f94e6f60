//! A frozen sanlock daemon (SIGSTOP) must not hang the agent's jobs: every call into the
//! daemon made for a job has a bound (`lease/src/sanlock/bounded.rs`). One host with its own
//! daemon (io_timeout 1 s: a call waits at most 5 s, an acquire 10 s, the data path's grace
//! is 6 s). A copy under way fails with 651 soon after the daemon stops, not when it thaws;
//! a copy that must acquire while it is stopped fails too; the agent answers throughout; once
//! the daemon runs again and the lockspace is usable, the same copy succeeds.

use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::fencing::{eventually, sanlock_or_skip, signal, SanlockHost};
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn meta_of(v: &Vol) -> String {
    String::from_utf8(std::fs::read(v.path.with_extension("meta")).expect("read .meta"))
        .expect("utf-8 .meta")
}

/// SIGCONTs the daemon on drop, so a failed assertion never leaves it stopped (its own drop
/// then kills it by pid).
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal(pid, libc::SIGSTOP);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the daemon this test started and has not reaped.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// The job's info, as `Host.getJobs` reports it, once it is no longer active; `None` after
/// `limit`.
async fn ended_within(c: &AgentClient, job: &Uuid, limit: Duration) -> Option<JobInfo> {
    eventually(limit, Duration::from_millis(100), || async {
        let jobs = c
            .api()
            .get_jobs(None, Some(vec![job.clone()]))
            .await
            .via(c)
            .expect("Host.getJobs answers while the daemon is frozen");
        jobs.get(job).filter(|i| !i.status.is_active()).cloned()
    })
    .await
}

async fn get_jobs_answers_fast(c: &AgentClient) {
    let t = Instant::now();
    c.api()
        .get_jobs(None, None)
        .await
        .via(c)
        .expect("Host.getJobs");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_fails_the_job_instead_of_hanging_it() {
    if !sanlock_or_skip("a_frozen_daemon_fails_the_job_instead_of_hanging_it") {
        return;
    }
    let shared = tempfile::Builder::new()
        .prefix("sdm-frozen-")
        .tempdir()
        .expect("shared dir");
    let h = SanlockHost::start("frozen", 1, shared.path(), &[]);
    let c = h.agent.client();
    let sd = uuid();
    c.api()
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
        .via(&c)
        .expect("create the sanlock domain");
    let total = 8 * MIB;
    let src = new_volume(&c, &sd, total, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, total as usize, 77);
    let dst = new_volume(&c, &sd, total, VolumeFormat::Raw).await;
    let dst2 = new_volume(&c, &sd, total, VolumeFormat::Raw).await;

    // 16 s at 512 KiB/s: the daemon stops a second in.
    let job = copy_volume(&c, &src, &dst, Some(0), Some(MIB / 2)).await;
    wait_running(&c, &job).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frozen = Frozen::freeze(h.daemon.pid());
    let t = Instant::now();

    // Grace 6 s, a watcher check every 2 s that waits at most 5 s, a release that waits at
    // most 5 s: well under 20 s, and long before the 16 s copy could have finished with the
    // daemon thawed.
    let r = ended_within(&c, &job, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the job still runs {:?} after the daemon froze",
                t.elapsed()
            )
        });
    eprintln!(
        "copy under a frozen daemon ended after {:?}: {r:?}",
        t.elapsed()
    );
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    let e = r.error.as_ref().expect("an error");
    assert_eq!(e.code, 651, "{e:?}");
    assert!(
        e.message.contains("sanlock daemon") || e.message.contains("could not be confirmed"),
        "{e:?}"
    );
    assert!(r.bytes_done < total, "{r:?}");
    let md = meta_of(&dst);
    assert!(
        md.contains("LEGALITY=ILLEGAL") && md.contains("GEN=0"),
        "{md}"
    );
    get_jobs_answers_fast(&c).await;

    // Acquiring while the daemon is still stopped fails after a bounded time, with a code.
    let t = Instant::now();
    let job2 = copy_volume(&c, &src, &dst2, Some(0), None).await;
    let r2 = ended_within(&c, &job2, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the acquire still waits {:?} on", t.elapsed()));
    eprintln!(
        "copy started under a frozen daemon ended after {:?}: {r2:?}",
        t.elapsed()
    );
    assert_eq!(r2.status, JobStatus::Failed, "{r2:?}");
    let e2 = r2.error.as_ref().expect("an error");
    assert_eq!(e2.code, 651, "{e2:?}");
    assert!(e2.message.contains("sanlock daemon"), "{e2:?}");
    assert!(
        meta_of(&dst2).contains("LEGALITY=LEGAL"),
        "nothing was written"
    );
    get_jobs_answers_fast(&c).await;
    assert!(
        h.agent_alive(),
        "the agent runs on while its daemon is stopped"
    );

    drop(frozen);
    // Frozen for more than 8 io_timeouts, the daemon fails the lockspace when it runs again;
    // the agent held nothing in it any more (its registrations were shut down), so it is not
    // killed. Until the lockspace is usable again a copy fails with a code; detaching and
    // attaching the domain joins it again.
    let done = eventually(Duration::from_secs(90), Duration::from_secs(1), || async {
        let job = copy_volume(&c, &src, &dst, Some(0), None).await;
        let r = wait_job(&c, &job).await;
        if r.status == JobStatus::Done {
            return Some(r);
        }
        let e = r.error.as_ref().expect("a failed job has an error");
        assert!(e.code != 0 && !e.message.is_empty(), "{r:?}");
        eprintln!("copy after the thaw: {} {}", e.code, e.message);
        let dir = shared.path().join(sd.as_str());
        let _ = c.api().detach_domain(sd.clone()).await.via(&c);
        let _ = c
            .api()
            .attach_domain(dir.to_string_lossy().into(), None, None, None, None)
            .await
            .via(&c);
        None
    })
    .await;
    assert!(
        h.agent_alive(),
        "the agent survived the daemon's thaw: {}",
        h.daemon.log()
    );
    let r = done.expect("a copy succeeds once the daemon runs again");
    assert_eq!(r.status, JobStatus::Done, "{r:?}");
    let md = meta_of(&dst);
    assert!(md.contains("LEGALITY=LEGAL"), "{md}");
    let out = std::process::Command::new("cmp")
        .arg(&src.path)
        .arg(&dst.path)
        .output()
        .expect("run cmp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
