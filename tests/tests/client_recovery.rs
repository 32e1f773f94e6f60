//! The engine's recovery table against real agent processes: a host killed mid-copy (fenced,
//! retried elsewhere), a host frozen with SIGSTOP (waited for while it holds the lease), and a
//! frozen host that then dies (fenced once its lease is gone).

use std::sync::Arc;
use std::time::Duration;

use sdm_client::{Disks, MovePolicy, OpReport, Outcome};
use sdm_proto::JobInfo;
use sdm_tests::cluster::*;

/// 1 MiB/s: a 6 MiB volume copies in about five seconds, long enough to interfere with even on
/// a busy machine.
const SLOW: Option<u64> = Some(1 << 20);

fn slow_policy() -> MovePolicy {
    MovePolicy {
        bandwidth_limit: SLOW,
        verify: true,
        ..Default::default()
    }
}

/// A slow move of a 6 MiB disk from `sd1` to `sd2`, caught mid-copy.
struct SlowMove {
    cluster: Cluster,
    disk: TestDisk,
    log: Arc<EventLog>,
    engine: Engine,
    /// The agent running the copy.
    host: usize,
    /// Its copy job.
    job: JobInfo,
}

/// The engine side of a [`SlowMove`]: the `Disks` (and the directory of its journal), and the
/// task running the move.
struct Engine {
    _dir: tempfile::TempDir,
    disks: Arc<Disks>,
    task: tokio::task::JoinHandle<Result<OpReport, sdm_client::Error>>,
}

impl Engine {
    /// The move's report, once it has ended (within a minute).
    async fn finished(&mut self) -> OpReport {
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

/// Starts `n` agents and a move of a new disk with [`slow_policy`] in a task; returns while one
/// agent's copy is under way.
async fn slow_move_mid_copy(n: usize) -> SlowMove {
    let cluster = Cluster::start(n).await;
    let disk = create_disk(&cluster, &cluster.sd1, 6, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let disks = Arc::new(engine(&cluster, &dir.path().join("journal")).await);
    let log = Arc::new(EventLog::default());
    let task = spawn_move(
        &disks,
        &log,
        &disk.img,
        &cluster.sd1,
        &cluster.sd2,
        slow_policy(),
    );
    let (host, job) = cluster
        .wait_running("copy_data", 0, Duration::from_secs(30))
        .await;
    // Mid-copy: the throttled copy runs for about five seconds.
    tokio::time::sleep(Duration::from_millis(700)).await;
    SlowMove {
        cluster,
        disk,
        log,
        engine: Engine {
            _dir: dir,
            disks,
            task,
        },
        host,
        job,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_copy_is_fenced_and_the_copy_retried_elsewhere() {
    let SlowMove {
        mut cluster,
        disk,
        log,
        mut engine,
        host: victim,
        job,
    } = slow_move_mid_copy(3).await;
    let victim_url = cluster.agents[victim].url.clone();
    cluster.kill9(victim);

    let report = engine.finished().await;

    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    let v = &report.volumes[0];
    assert_eq!(v.attempts.len(), 2, "{v:#?}");
    assert_eq!(v.attempts[0].job, job.id);
    assert_eq!(v.attempts[0].host, victim_url);
    assert_eq!(v.attempts[0].outcome, "fenced");
    assert_eq!(v.attempts[0].generation, 0);
    assert_ne!(v.attempts[1].host, victim_url, "retried on another host");
    assert_eq!(
        v.attempts[1].generation, 3,
        "the retry starts from the fenced generation"
    );
    assert_eq!(v.generation, Some(4));
    let decisions = log.decisions();
    for want in [
        "host_unreachable",
        "fencing",
        "fence_ended",
        "generation_fenced",
    ] {
        assert!(
            decisions.iter().any(|d| d == want),
            "{want} missing from {decisions:?}"
        );
    }
    assert!(
        !decisions.iter().any(|d| d == "lease_held"),
        "a dead host holds no lease: {decisions:?}"
    );
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    cluster.assert_clean().await;
    assert!(engine.disks.journal().unfinished().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_host_holding_the_lease_is_waited_for_not_fenced() {
    let SlowMove {
        cluster,
        disk,
        log,
        mut engine,
        host: frozen,
        job: _,
    } = slow_move_mid_copy(3).await;
    let vol = disk.volumes[0].vol.clone();
    cluster.freeze(frozen);

    // The client finds the host silent, reads the destination elsewhere: lease held, running.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log
        .decisions()
        .iter()
        .filter(|d| *d == "lease_held")
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no lease_held decisions: {:?}",
            log.decisions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = (frozen + 1) % 3;
    let c = cluster.client(other);
    let info = sdm_tests::volume_info(&c, &cluster.sd2, &disk.img, &vol).await;
    assert_eq!(
        info.generation, 0,
        "not fenced while the frozen host holds the lease"
    );
    assert!(!info.lease.owners.is_empty());
    assert!(!log.decisions().iter().any(|d| d == "fencing"));

    cluster.thaw(frozen);
    let report = engine.finished().await;

    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    let v = &report.volumes[0];
    assert_eq!(
        v.attempts.len(),
        1,
        "the frozen host's copy finished: {v:#?}"
    );
    assert_eq!(v.attempts[0].host, cluster.agents[frozen].url);
    assert_eq!(v.generation, Some(1));
    let decisions = log.decisions();
    assert!(
        decisions.iter().any(|d| d == "host_unreachable"),
        "{decisions:?}"
    );
    assert!(!decisions.iter().any(|d| d == "fencing"), "{decisions:?}");
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_host_that_dies_is_fenced_once_its_lease_is_gone() {
    let SlowMove {
        mut cluster,
        disk,
        log,
        mut engine,
        host: frozen,
        job: _,
    } = slow_move_mid_copy(2).await;
    let frozen_url = cluster.agents[frozen].url.clone();
    cluster.freeze(frozen);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !log.decisions().iter().any(|d| d == "lease_held") {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            log.decisions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!log.decisions().iter().any(|d| d == "fencing"));
    // SIGKILL reaches a stopped process; its OFD locks go with it.
    cluster.kill9(frozen);

    let report = engine.finished().await;

    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    let v = &report.volumes[0];
    assert_eq!(v.attempts.len(), 2, "{v:#?}");
    assert_eq!(v.attempts[0].host, frozen_url);
    assert_eq!(v.attempts[0].outcome, "fenced");
    assert_eq!(v.generation, Some(4));
    let decisions = log.decisions();
    let held = decisions.iter().position(|d| d == "lease_held").unwrap();
    let fencing = decisions.iter().position(|d| d == "fencing").unwrap();
    assert!(
        held < fencing,
        "waited while the lease was held, fenced after: {decisions:?}"
    );
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    cluster.assert_clean().await;
}
