//! Several engine processes on one PostgreSQL journal: `sdmctl disk move` killed -9 at every
//! phase while two `sdmctl resume --watch` daemons wait to take over; a mover partitioned from
//! the database (its connection frozen by a relay) that comes back after the takeover; the
//! database restarted under two movers; two engines asked to move the same disk.

use std::time::{Duration, Instant};

use sdm_client::{SdmApiClient, Via};
use sdm_tests::cluster::*;
use sdm_tests::engines::{expiry_of, op_of, wait_ended, wait_record, EngineProc};
use sdm_tests::journals::{Backend, TestJournal};
use sdm_tests::postgres::TcpRelay;

/// Where the mover is killed: after which record (a failpoint holds it there), or mid-copy.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Right after this record is stored.
    After(&'static str),
    /// While a bandwidth-limited copy runs.
    MidCopy,
}

async fn wait_idle(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster
        .jobs()
        .await
        .iter()
        .any(|(_, j)| j.status.is_active())
    {
        assert!(Instant::now() < deadline, "agents still busy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills a mover at `at` and checks that a watcher ends the operation within 10 s of the
/// dead mover's lease expiry, leaving the disk `rolled_back` or fully moved.
async fn kill_mover_at(
    cluster: &Cluster,
    journal: &TestJournal,
    db: &tokio_postgres::Client,
    at: KillAt,
    rolled_back: bool,
) {
    let disk = create_disk(cluster, &cluster.sd1, 4, 1).await;
    let name = format!("mover-{at:?}");
    let failpoint;
    let (extra, env): (Vec<&str>, Vec<(&str, &str)>) = match at {
        KillAt::After(rec) => {
            failpoint = format!("sdm_client::journal::after_{rec}=sleep(60000)");
            (
                vec!["--max-attempts", "1"],
                vec![("FAILPOINTS", failpoint.as_str())],
            )
        }
        KillAt::MidCopy => (vec!["--bandwidth", "1M"], vec![]),
    };
    let mut mover = EngineProc::mover(
        &name,
        &cluster.urls(),
        &journal.sdmctl_args(),
        &disk.img,
        &cluster.sd1,
        &cluster.sd2,
        &extra,
        &env,
    );
    match at {
        KillAt::After(rec) => wait_record(db, &disk.img, rec, Duration::from_secs(60)).await,
        KillAt::MidCopy => {
            cluster
                .wait_running("copy_data", 0, Duration::from_secs(30))
                .await;
        }
    }
    mover.kill9();
    let (expires_ms, now_ms) = expiry_of(db, &disk.img).await;
    let before = op_of(db, &disk.img).await.expect("operation recorded");
    eprintln!(
        "{at:?}: mover killed at {:?}, lease expires in {} ms",
        before.last,
        expires_ms - now_ms
    );
    let ended = wait_ended(db, &disk.img, Duration::from_secs(60)).await;
    let after_expiry = ended.updated_ms - expires_ms;
    eprintln!(
        "{at:?}: {} by {} (epoch {}, {} takeover) {after_expiry} ms after the lease expiry",
        ended.outcome.as_deref().unwrap_or("?"),
        ended.owner,
        ended.epoch,
        ended.takeovers
    );
    assert!(
        ended.owner.starts_with("watch-"),
        "{at:?}: a watcher finished it: {ended:?}"
    );
    assert!(ended.takeovers >= 1 && ended.epoch >= 2, "{ended:?}");
    assert!(
        after_expiry <= 10_000,
        "{at:?}: ended {after_expiry} ms after the lease expiry"
    );
    if rolled_back {
        assert_eq!(ended.outcome.as_deref(), Some("rolled back"), "{ended:?}");
        let c = cluster.client(0);
        assert_source_untouched(&c, cluster, &disk, &cluster.sd1, &cluster.sd1).await;
        let images = c
            .api()
            .get_images(cluster.sd2.clone())
            .await
            .via(&c)
            .unwrap();
        assert!(!images.contains(&disk.img), "destination deleted");
    } else {
        assert_eq!(ended.outcome.as_deref(), Some("committed"), "{ended:?}");
        assert_moved(cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    }
    wait_idle(cluster).await;
    cluster.assert_clean().await;
}

/// Two takeover daemons on `journal`, for the agents of `cluster`.
fn watchers(cluster: &Cluster, journal: &TestJournal, n: usize) -> Vec<EngineProc> {
    (1..=n)
        .map(|i| {
            EngineProc::watch(
                &format!("watch-{i}"),
                &cluster.urls(),
                &journal.sdmctl_args(),
                0.5,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_at_any_phase_is_finished_by_another_engine() {
    let Some(backend) = Backend::postgres_or_skip("a_mover_killed_at_any_phase") else {
        return;
    };
    let journal = backend.journal().await;
    let db = journal.db().await.expect("database");
    let cluster = Cluster::start(2).await;
    let mut w = watchers(&cluster, &journal, 2);
    for at in [
        KillAt::After("begin"),
        KillAt::MidCopy,
        KillAt::After("commit"),
        KillAt::After("delete_submit"),
    ] {
        kill_mover_at(&cluster, &journal, &db, at, false).await;
    }
    for e in &mut w {
        assert!(
            e.terminate().is_some_and(|s| s.success()),
            "{}",
            e.log_text()
        );
    }
    drop(cluster);

    // Mid-rollback: every copy fails, so the mover rolls back, and dies doing it.
    let failing =
        Cluster::start_with(2, &[("FAILPOINTS", "sdm::copy_data::after_illegal=panic")]).await;
    let _w = watchers(&failing, &journal, 2);
    kill_mover_at(&failing, &journal, &db, KillAt::After("rollback"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_mover_that_comes_back_changes_nothing() {
    let Some(backend) = Backend::postgres_or_skip("a_partitioned_mover") else {
        return;
    };
    let Backend::Postgres(pg) = &backend else {
        unreachable!()
    };
    let journal = backend.journal().await;
    let db = journal.db().await.expect("database");
    let cluster = Cluster::start(2).await;
    let disk = create_disk(&cluster, &cluster.sd1, 4, 1).await;
    // The mover reaches the database through a relay; the watchers do not.
    let relay = TcpRelay::start(format!("127.0.0.1:{}", pg.port).parse().unwrap());
    let db_name = journal.url.rsplit('/').next().unwrap().to_string();
    let mut args = journal.sdmctl_args();
    args[1] = pg.url_via(relay.addr, &db_name);
    let mut mover = EngineProc::mover(
        "mover",
        &cluster.urls(),
        &args,
        &disk.img,
        &cluster.sd1,
        &cluster.sd2,
        &["--bandwidth", "1M"],
        &[],
    );
    cluster
        .wait_running("copy_data", 0, Duration::from_secs(30))
        .await;
    relay.freeze();
    let frozen = Instant::now();
    let _w = watchers(&cluster, &journal, 2);
    let ended = wait_ended(&db, &disk.img, Duration::from_secs(60)).await;
    eprintln!(
        "partitioned mover: {} by {} after {:?}",
        ended.outcome.as_deref().unwrap_or("?"),
        ended.owner,
        frozen.elapsed()
    );
    assert_eq!(ended.outcome.as_deref(), Some("committed"));
    assert!(ended.owner.starts_with("watch-"));
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;

    // The mover comes back: its next write is refused and it stops.
    relay.thaw();
    let st = mover
        .wait_exit(Duration::from_secs(90))
        .expect("the fenced mover exits");
    let log = mover.log_text();
    assert!(!st.success(), "{log}");
    assert!(log.contains("was taken over by engine watch-"), "{log}");
    // Nothing of the mover was stored after the takeover, and no phase is doubled.
    let op = uuid::Uuid::parse_str(&ended.op).unwrap();
    let rows = db
        .query(
            "SELECT seq, epoch, owner, entry->'rec'->>'type' FROM sdm.records WHERE op = $1 ORDER BY seq",
            &[&op],
        )
        .await
        .unwrap();
    let recs: Vec<(i32, i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let first_new = recs
        .iter()
        .position(|r| r.1 > 1)
        .expect("records after takeover");
    assert!(
        recs[first_new..].iter().all(|r| r.2 != "mover"),
        "{recs:#?}"
    );
    for once in ["begin", "commit", "source_illegal", "end"] {
        assert_eq!(
            recs.iter().filter(|r| r.3 == once).count(),
            1,
            "{once}: {recs:#?}"
        );
    }
    wait_idle(&cluster).await;
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movers_survive_a_database_restart_and_the_same_disk_is_refused() {
    let Some(backend) = Backend::postgres_or_skip("movers_survive_a_database_restart") else {
        return;
    };
    let journal = backend.journal().await;
    let db = journal.db().await.expect("database");
    let cluster = Cluster::start(3).await;
    let disks = [
        create_disk(&cluster, &cluster.sd1, 4, 1).await,
        create_disk(&cluster, &cluster.sd1, 4, 1).await,
    ];
    // Default leases: a 3 s outage must not cost the movers their operations.
    let mut args = journal.sdmctl_args();
    args.truncate(2);
    let mut movers: Vec<EngineProc> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            EngineProc::mover(
                &format!("mover-{i}"),
                &cluster.urls(),
                &args,
                &d.img,
                &cluster.sd1,
                &cluster.sd2,
                &["--bandwidth", "1M"],
                &[],
            )
        })
        .collect();
    for d in &disks {
        wait_record(&db, &d.img, "copy_submit", Duration::from_secs(30)).await;
    }
    // A second engine asked to move the same disk is told who has it.
    let mut second = EngineProc::mover(
        "intruder",
        &cluster.urls(),
        &args,
        &disks[0].img,
        &cluster.sd1,
        &cluster.sd2,
        &[],
        &[],
    );
    let st = second.wait_exit(Duration::from_secs(30)).expect("refused");
    let log = second.log_text();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("already in progress by engine mover-0"),
        "{log}"
    );

    // The database goes down for 3 s in the middle of both copies.
    let Backend::Postgres(pg) = &backend else {
        unreachable!()
    };
    let pg = pg.clone();
    drop(db);
    let server = pg.clone();
    tokio::task::spawn_blocking(move || {
        server.stop();
        std::thread::sleep(Duration::from_secs(3));
        server.restart();
    })
    .await
    .unwrap();
    for m in &mut movers {
        let st = m.wait_exit(Duration::from_secs(120)).expect("mover ends");
        assert!(st.success(), "{}", m.log_text());
    }
    let db = pg.client(journal.url.rsplit('/').next().unwrap()).await;
    for d in &disks {
        assert_moved(&cluster, d, &cluster.sd1, &cluster.sd2).await;
        let row = op_of(&db, &d.img).await.unwrap();
        assert_eq!(row.outcome.as_deref(), Some("committed"));
        assert_eq!(row.epoch, 1, "no takeover needed: {row:?}");
        let op = uuid::Uuid::parse_str(&row.op).unwrap();
        let recs: Vec<(i32, String)> = db
            .query(
                "SELECT seq, entry->'rec'->>'type' FROM sdm.records WHERE op = $1 ORDER BY seq",
                &[&op],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let seqs: Vec<i32> = recs.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (0..recs.len() as i32).collect::<Vec<_>>());
        for once in ["begin", "cloned", "commit", "source_illegal", "end"] {
            assert_eq!(
                recs.iter().filter(|r| r.1 == once).count(),
                1,
                "{once}: {recs:?}"
            );
        }
        assert_eq!(
            recs.iter().filter(|r| r.1 == "copy_end").count(),
            d.volumes.len(),
            "{recs:?}"
        );
    }
    wait_idle(&cluster).await;
    cluster.assert_clean().await;
}
