//! Two-phase commit across engine crashes: the client is killed (a real `sdmctl` process, and
//! in-process at every phase), `resume()` finishes the operation, leaves nothing behind, and the
//! source is deleted only after the destination was verified and committed.
//!
//! Every test runs twice: on the file journal, and on the PostgreSQL journal (a private server;
//! the resuming engine is another owner, which takes the operation over once the crashed one's
//! lease is gone).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use sdm_client::journal::Record;
use sdm_client::{Event, MovePolicy, Outcome, SdmApiClient, Via};
use sdm_proto::Uuid;
use sdm_tests::cluster::*;
use sdm_tests::journals::{engine_on, Backend, TestJournal};

/// `$name_file` and `$name_postgres` running `$body(&Backend)`.
macro_rules! both_backends {
    ($file:ident, $pg:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $file() {
            $body(&Backend::File).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            if let Some(b) = Backend::postgres_or_skip(stringify!($pg)) {
                $body(&b).await;
            }
        }
    };
}

both_backends!(
    sdmctl_killed_mid_move_is_finished_by_resume_file,
    sdmctl_killed_mid_move_is_finished_by_resume_postgres,
    sdmctl_killed_mid_move_is_finished_by_resume
);
both_backends!(
    an_engine_crash_at_any_phase_is_finished_by_resume_file,
    an_engine_crash_at_any_phase_is_finished_by_resume_postgres,
    an_engine_crash_at_any_phase_is_finished_by_resume
);
both_backends!(
    an_undeletable_source_stays_illegal_and_pending_until_resume_file,
    an_undeletable_source_stays_illegal_and_pending_until_resume_postgres,
    an_undeletable_source_stays_illegal_and_pending_until_resume
);
both_backends!(
    a_crash_during_rollback_is_rolled_back_by_resume_file,
    a_crash_during_rollback_is_rolled_back_by_resume_postgres,
    a_crash_during_rollback_is_rolled_back_by_resume
);

/// Every source deletion in the journal comes after the commit, and the commit after every
/// volume's successful copy and verification.
fn assert_commit_order(entries: &[sdm_client::journal::Entry], src: &Uuid, volumes: usize) {
    let recs: Vec<&Record> = entries.iter().map(|e| &e.rec).collect();
    let commit = recs
        .iter()
        .position(|r| matches!(r, Record::Commit { .. }))
        .expect("commit recorded");
    let verified: Vec<usize> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::Verified { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(verified.len(), volumes, "{recs:#?}");
    assert!(verified.iter().all(|i| *i < commit));
    let copies_done = recs
        .iter()
        .filter(|r| matches!(r, Record::CopyEnd { done: true, .. }))
        .count();
    assert_eq!(copies_done, volumes);
    for (i, r) in recs.iter().enumerate() {
        if let Record::DeleteSubmit { sd, .. } = r {
            assert_eq!(sd, src, "only the source is deleted");
            assert!(
                i > commit,
                "source deletion submitted before the commit: {recs:#?}"
            );
        }
    }
    assert!(
        matches!(
            recs.last(),
            Some(Record::End {
                outcome: Outcome::Committed,
                ..
            })
        ),
        "{recs:#?}"
    );
}

async fn wait_idle(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster
        .jobs()
        .await
        .iter()
        .any(|(_, j)| j.status.is_active())
    {
        assert!(std::time::Instant::now() < deadline, "agents still busy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sdmctl_killed_mid_move_is_finished_by_resume(backend: &Backend) {
    let cluster = Cluster::start(3).await;
    let disk = create_disk(&cluster, &cluster.sd1, 4, 1).await;
    let journal = backend.journal().await;
    let mut cmd = sdm_tests::sdmctl_cmd(&cluster.urls());
    cmd.args([
        "disk",
        "move",
        disk.img.as_str(),
        "--from",
        cluster.sd1.as_str(),
        "--to",
        cluster.sd2.as_str(),
    ])
    .args(["--bandwidth", "1M"])
    .args(journal.sdmctl_args())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("sdmctl");

    cluster
        .wait_running("copy_data", 0, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // The journal shows an operation caught mid-copy.
    let entries = journal.entries().await;
    assert!(
        entries
            .iter()
            .any(|e| matches!(e.rec, Record::CopySubmit { .. })),
        "{entries:#?}"
    );
    assert!(!entries
        .iter()
        .any(|e| matches!(e.rec, Record::Commit { .. })));

    journal.wait_unowned(Duration::from_secs(10)).await;
    let disks = engine_on(&cluster.urls(), &journal).await;
    let log = EventLog::default();
    let reports = disks.resume(&log).await.unwrap();

    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.outcome, Outcome::Committed, "{r:#?}");
    assert!(r.resumed && r.deleted);
    for (v, want) in r.volumes.iter().zip(&disk.volumes) {
        assert_eq!(v.checksum.as_deref(), Some(want.sha256.as_str()));
    }
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    wait_idle(&cluster).await;
    cluster.assert_clean().await;
    assert_commit_order(&journal.entries().await, &cluster.sd1, disk.volumes.len());

    // Idempotent: nothing is left, a second resume does nothing, and sdmctl agrees.
    assert!(disks.resume(&log).await.unwrap().is_empty());
    drop(disks);
    let out = sdm_tests::sdmctl_cmd(std::slice::from_ref(&cluster.agents[0].url))
        .arg("resume")
        .args(journal.sdmctl_args())
        .output()
        .unwrap();
    sdm_tests::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to resume"));
}

/// What stopping at one event looks like: the event's name (and phase for `phase`).
fn matches_stop(e: &Event, stop: &str) -> bool {
    let v = serde_json::to_value(e).unwrap();
    match stop.split_once(':') {
        Some((name, phase)) => v["event"] == name && v["phase"] == phase,
        None => v["event"] == stop,
    }
}

/// Moves `disk` from `sd1` to `sd2` with an engine on `journal` and "crashes" the engine at the
/// first event matching `stop`: the operation's future is dropped at its next await after it.
async fn move_until_crash(
    cluster: &Cluster,
    disk: &TestDisk,
    journal: &TestJournal,
    policy: MovePolicy,
    stop: &str,
) {
    let disks = Arc::new(engine_on(&cluster.urls(), journal).await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let log = Arc::new(EventLog::with_channel(tx));
    let task = spawn_move(&disks, &log, &disk.img, &cluster.sd1, &cluster.sd2, policy);
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if matches_stop(&e, stop) {
            task.abort();
            break;
        }
    }
    let _ = task.await;
    drop(disks);
    // What the crashed engine had in flight lands before the journal is read; with a shared
    // journal its claim must be gone before another engine takes over.
    journal.wait_closed().await;
    journal.wait_unowned(Duration::from_secs(10)).await;
}

async fn an_engine_crash_at_any_phase_is_finished_by_resume(backend: &Backend) {
    let cluster = Cluster::start(2).await;
    let stops = [
        "phase:clone",
        "copy_submitted",
        "copy_ended",
        "verified",
        "target_ready",
        "delete_submitted",
        "delete_ended",
    ];
    for stop in stops {
        let disk = create_disk(&cluster, &cluster.sd1, 1, 1).await;
        let journal = backend.journal().await;
        move_until_crash(&cluster, &disk, &journal, MovePolicy::default(), stop).await;
        // Opening the journal again drops finished operations: keep what the crash left.
        let crashed = journal.entries().await;
        let names: Vec<&str> = crashed.iter().map(|e| e.rec.name()).collect();
        eprintln!("stopped at {stop}: journal {names:?}");

        let disks = engine_on(&cluster.urls(), &journal).await;
        let reports = disks.resume(&sdm_client::disk::NoEvents).await.unwrap();
        let finished_before = reports.is_empty();
        if !finished_before {
            assert_eq!(reports.len(), 1, "stop at {stop}");
            assert_eq!(
                reports[0].outcome,
                Outcome::Committed,
                "stop at {stop}: {:#?}",
                reports[0]
            );
            assert!(reports[0].deleted, "stop at {stop}");
        }
        assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
        wait_idle(&cluster).await;
        cluster.assert_clean().await;
        let all = if finished_before {
            crashed
        } else {
            journal.entries().await
        };
        assert_commit_order(&all, &cluster.sd1, disk.volumes.len());
        assert!(
            disks
                .resume(&sdm_client::disk::NoEvents)
                .await
                .unwrap()
                .is_empty(),
            "stop at {stop}"
        );
    }
}

async fn an_undeletable_source_stays_illegal_and_pending_until_resume(backend: &Backend) {
    // Agent 1 cannot finish deleting anything; agent 0 can.
    let cluster = Cluster::start_each(2, |i| {
        if i == 1 {
            vec![("FAILPOINTS", "sdm::image_delete::before_remove=panic")]
        } else {
            vec![]
        }
    })
    .await;
    let disk = create_disk(&cluster, &cluster.sd1, 2, 1).await;
    let journal = backend.journal().await;
    let broken_only = engine_on(std::slice::from_ref(&cluster.agents[1].url), &journal).await;
    let log = EventLog::default();

    let report = broken_only
        .move_disk(
            &disk.img,
            &cluster.sd1,
            &cluster.sd2,
            MovePolicy::default(),
            &log,
        )
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Pending, "{report:#?}");
    assert!(!report.deleted);
    assert!(
        report.target_ready_s.is_some(),
        "the destination was committed"
    );
    assert!(log.position("target_ready").is_some());
    assert_eq!(
        broken_only.journal().unfinished().len(),
        1,
        "kept for a later retry"
    );
    // The destination is complete and usable already.
    let c = cluster.client(0);
    for v in &disk.volumes {
        let info = sdm_tests::volume_info(&c, &cluster.sd2, &disk.img, &v.vol).await;
        assert_eq!(info.legality, sdm_proto::Legality::Legal);
        assert_eq!(
            sdm_tests::sha256sum(&cluster.volume_path(&cluster.sd2, &disk.img, &v.vol)),
            v.sha256
        );
    }
    // The source is out of use: every volume ILLEGAL, waiting as a deletion leftover.
    let leftover = cluster
        .dir1
        .join("images")
        .join(format!("_remove_me_{}", disk.img));
    assert!(leftover.is_dir(), "source kept as a deletion leftover");
    for v in &disk.volumes {
        let meta = std::fs::read_to_string(leftover.join(format!("{}.meta", v.vol))).unwrap();
        assert!(meta.contains("LEGALITY=ILLEGAL\n"), "{meta}");
    }
    // While it is pending, no other operation may take the image.
    let busy = broken_only
        .copy_disk(
            &disk.img,
            &cluster.sd2,
            &cluster.sd1,
            MovePolicy::default(),
            &log,
        )
        .await
        .unwrap_err();
    assert!(matches!(busy, sdm_client::Error::Usage(_)), "{busy}");
    drop(broken_only);

    // A later resume, with a host that can delete, finishes it.
    let disks = engine_on(std::slice::from_ref(&cluster.agents[0].url), &journal).await;
    let reports = disks.resume(&log).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Outcome::Committed, "{:#?}", reports[0]);
    assert!(reports[0].deleted);
    assert!(!leftover.exists());
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    wait_idle(&cluster).await;
    cluster.assert_clean().await;
    assert!(disks.resume(&log).await.unwrap().is_empty());
}

async fn a_crash_during_rollback_is_rolled_back_by_resume(backend: &Backend) {
    // Every copy fails, so the move rolls back; the engine "crashes" as the rollback starts.
    let cluster =
        Cluster::start_with(2, &[("FAILPOINTS", "sdm::copy_data::after_illegal=panic")]).await;
    let disk = create_disk(&cluster, &cluster.sd1, 1, 1).await;
    let journal = backend.journal().await;
    let policy = MovePolicy {
        max_attempts: 1,
        ..Default::default()
    };
    move_until_crash(&cluster, &disk, &journal, policy, "phase:rollback").await;
    let crashed = journal.entries().await;
    assert!(
        crashed
            .iter()
            .any(|e| matches!(e.rec, Record::Rollback { .. })),
        "{crashed:#?}"
    );

    let disks = engine_on(&cluster.urls(), &journal).await;
    let reports = disks.resume(&sdm_client::disk::NoEvents).await.unwrap();

    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Outcome::RolledBack, "{:#?}", reports[0]);
    let c = cluster.client(0);
    // An image a domain does not have has no volumes (VDSM's answer).
    let vols = c
        .api()
        .get_volumes(cluster.sd2.clone(), disk.img.clone())
        .await
        .via(&c)
        .unwrap();
    assert!(vols.is_empty(), "{vols:?}");
    assert_source_untouched(&c, &cluster, &disk, &cluster.sd1, &cluster.sd1).await;
    wait_idle(&cluster).await;
    cluster.assert_clean().await;
    assert!(disks
        .resume(&sdm_client::disk::NoEvents)
        .await
        .unwrap()
        .is_empty());
}
