//! The PostgreSQL journal against a real server (started by the test): schema and migrations,
//! ownership, takeover after expiry, fencing of an owner that comes back, one active operation
//! per image, database restarts, and bad input. No agents: the records are written directly.

use std::time::{Duration, Instant};

use sdm_client::journal::{Journal, JournalError, JournalOptions, Record, SCHEMA_VERSION};
use sdm_client::op::{MovePolicy, OpKind, Outcome, VolumeSpec};
use sdm_proto::Uuid;
use sdm_tests::journals::test_journal_options;
use sdm_tests::postgres::{server_or_skip, TcpRelay};

fn begin(op: &Uuid, image: &Uuid) -> Record {
    Record::Begin {
        op: op.clone(),
        kind: OpKind::Move,
        image: image.clone(),
        src_sd: Uuid::new_v4(),
        dst_sd: Some(Uuid::new_v4()),
        policy: MovePolicy::default(),
        volumes: vec![VolumeSpec {
            vol_id: Uuid::new_v4(),
            parent: Uuid::blank(),
            format: sdm_proto::VolumeFormat::Raw,
            allocation: sdm_proto::Preallocation::Sparse,
            capacity: 1 << 20,
            description: "d".into(),
            bytes: 1 << 20,
            sequence: 0,
        }],
    }
}

fn opts(owner: &str) -> JournalOptions {
    JournalOptions {
        owner: Some(owner.into()),
        ..test_journal_options()
    }
}

async fn open(url: &str, owner: &str) -> Journal {
    Journal::open_url(url, &opts(owner)).await.expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_take_over_expired_operations_and_a_returning_owner_is_fenced() {
    let Some(pg) = server_or_skip("owners_take_over_expired_operations") else {
        return;
    };
    let url = pg.create_db("j").await;
    // Engine A reaches the database through a relay that can freeze its connection.
    let relay = TcpRelay::start(format!("127.0.0.1:{}", pg.port).parse().unwrap());
    let a = open(&pg.url_via(relay.addr, "j"), "engine-a").await;
    let b = open(&url, "engine-b").await;
    let (op, img) = (Uuid::new_v4(), Uuid::new_v4());
    a.append(begin(&op, &img)).await.unwrap();
    // A connection reset between two records: the next one goes through a new connection.
    relay.sever();
    a.append(Record::Cloned { op: op.clone() }).await.unwrap();

    // A renews while alive: B cannot take the operation, however long it waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(b.claimable().await.unwrap().is_empty());
    assert!(matches!(
        b.claim(&op).await,
        Err(JournalError::Busy { owner, .. }) if owner == "engine-a"
    ));
    // The same disk cannot be moved by another engine meanwhile.
    let other = Uuid::new_v4();
    match b.append(begin(&other, &img)).await {
        Err(JournalError::InProgress {
            owner, op: held, ..
        }) => {
            assert_eq!(owner, "engine-a");
            assert_eq!(held, op);
        }
        r => panic!("second begin of the image: {r:?}"),
    }

    // A is partitioned: its lease runs out by the database's clock, and B takes over.
    relay.freeze();
    let frozen_at = Instant::now();
    let claimed = loop {
        match b.claim(&op).await {
            Ok(c) => break c,
            Err(JournalError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("claim: {e}"),
        }
        assert!(frozen_at.elapsed() < Duration::from_secs(10), "no takeover");
    };
    eprintln!("taken over {:?} after the partition", frozen_at.elapsed());
    assert_eq!(claimed.previous_owner.as_deref(), Some("engine-a"));
    assert_eq!(claimed.epoch, 2);
    let st = b.op(&op).expect("replayed");
    assert!(st.cloned, "B sees what A recorded");
    b.append(Record::Commit { op: op.clone() }).await.unwrap();

    // A comes back: its next write is refused, and nothing of it is stored.
    relay.thaw();
    let r = a.append(Record::Rollback {
        op: op.clone(),
        reason: "stale".into(),
    });
    match r.await {
        Err(JournalError::Fenced { owner, epoch, .. }) => {
            assert_eq!(owner, "engine-b");
            assert_eq!(epoch, 2);
        }
        r => panic!("a stale owner's write: {r:?}"),
    }
    b.append(Record::End {
        op: op.clone(),
        outcome: Outcome::Committed,
        message: None,
    })
    .await
    .unwrap();

    let c = pg.client("j").await;
    let rows = c
        .query(
            "SELECT seq, epoch, owner, entry->'rec'->>'type' FROM sdm.records WHERE op = $1 ORDER BY seq",
            &[&uuid::Uuid::parse_str(op.as_str()).unwrap()],
        )
        .await
        .unwrap();
    let got: Vec<(i32, i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 1, "engine-a".into(), "begin".into()),
            (1, 1, "engine-a".into(), "cloned".into()),
            (2, 2, "engine-b".into(), "commit".into()),
            (3, 2, "engine-b".into(), "end".into()),
        ]
    );
    let row = c
        .query_one(
            "SELECT ended, outcome, takeovers FROM sdm.operations WHERE op = $1",
            &[&uuid::Uuid::parse_str(op.as_str()).unwrap()],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "committed");
    assert_eq!(row.get::<_, i32>(2), 1);
    // The image is free again.
    b.append(begin(&other, &img)).await.unwrap();
}

/// An owner partitioned inside a transaction (its phase's row update done, the record's
/// insert held by the network) leaves its session open on the server, holding the operation's
/// row lock, until TCP gives up. The journal's server-side session limits end that session, so
/// another engine takes the operation over once the lease runs out, and the owner's write,
/// retried when it comes back, is refused (CI once saw watchers wait on such a lock for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_partitioned_inside_a_transaction_does_not_hold_the_takeover() {
    let Some(pg) = server_or_skip("an_owner_partitioned_inside_a_transaction") else {
        return;
    };
    let url = pg.create_db("jtx").await;
    let relay = TcpRelay::start(format!("127.0.0.1:{}", pg.port).parse().unwrap());
    let a = std::sync::Arc::new(open(&pg.url_via(relay.addr, "jtx"), "engine-a").await);
    let b = open(&url, "engine-b").await;
    let (op, img) = (Uuid::new_v4(), Uuid::new_v4());
    a.append(begin(&op, &img)).await.unwrap();
    // A phase's append: the row update, then this insert, in one transaction.
    relay
        .freeze_when_sent(b"INSERT INTO sdm.records (op, seq, epoch, owner, entry) VALUES ($1, $2");
    let stale = {
        let (a, op) = (a.clone(), op.clone());
        tokio::spawn(async move { a.append(Record::Cloned { op }).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.trapped() {
        assert!(Instant::now() < deadline, "A never sent its record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = pg.client("jtx").await;
    let waiting = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = 'jtx' AND state = 'idle in transaction'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        waiting.get::<_, i64>(0),
        1,
        "A's transaction is open on the server"
    );

    let frozen_at = Instant::now();
    let claimed = loop {
        let r = tokio::time::timeout(Duration::from_secs(10), b.claim(&op)).await;
        match r.expect("the claim waited on the partitioned owner's lock") {
            Ok(c) => break c,
            Err(JournalError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("claim: {e}"),
        }
        assert!(frozen_at.elapsed() < Duration::from_secs(10), "no takeover");
    };
    eprintln!("taken over {:?} after the partition", frozen_at.elapsed());
    assert_eq!(claimed.epoch, 2);
    assert!(
        !b.op(&op).expect("replayed").cloned,
        "A's record was never committed"
    );

    relay.thaw();
    match stale.await.unwrap() {
        Err(JournalError::Fenced { owner, epoch, .. }) => {
            assert_eq!(owner, "engine-b");
            assert_eq!(epoch, 2);
        }
        r => panic!("the partitioned owner's write: {r:?}"),
    }
    let types: Vec<String> = c
        .query(
            "SELECT entry->'rec'->>'type' FROM sdm.records WHERE op = $1 ORDER BY seq",
            &[&uuid::Uuid::parse_str(op.as_str()).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["begin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_and_doubles_nothing() {
    let Some(pg) = server_or_skip("a_database_restart_loses_and_doubles_nothing") else {
        return;
    };
    let url = pg.create_db("j").await;
    let j = std::sync::Arc::new(open(&url, "engine-a").await);
    let op = Uuid::new_v4();
    j.append(begin(&op, &Uuid::new_v4())).await.unwrap();
    // Writes keep coming while the server goes down and up again.
    let writer = {
        let (j, op) = (j.clone(), op.clone());
        tokio::spawn(async move {
            for i in 0..40u32 {
                j.append(Record::Verified {
                    op: op.clone(),
                    vol: Uuid::new_v4(),
                    checksum: format!("{i}"),
                })
                .await
                .expect("append across a restart");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.kill9();
        std::thread::sleep(Duration::from_secs(2));
        pg.restart();
        pg
    })
    .await
    .unwrap();
    writer.await.unwrap();
    let c = pg.client("j").await;
    let rows = c
        .query(
            "SELECT seq, entry->'rec'->>'checksum' FROM sdm.records ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let seqs: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        seqs,
        (0..41).collect::<Vec<i32>>(),
        "no record lost or doubled"
    );
    let sums: Vec<String> = rows.iter().skip(1).map(|r| r.get(1)).collect();
    assert_eq!(sums, (0..40).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_credentials_and_newer_schemas_are_refused_cleanly() {
    let Some(pg) = server_or_skip("bad_urls_credentials_and_newer_schemas") else {
        return;
    };
    // Nothing listens on a freshly freed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let e = Journal::open_url(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        &test_journal_options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, JournalError::Connect { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    eprintln!("unreachable: {e}");

    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", pg.port);
    let e = Journal::open_url(&wrong, &test_journal_options())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, JournalError::Connect { .. }), "{e}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(
        !msg.contains("wrong"),
        "the password is not repeated: {msg}"
    );

    let e = Journal::open_url("mysql://h/db", &test_journal_options())
        .await
        .unwrap_err();
    assert!(matches!(e, JournalError::Url { .. }), "{e}");

    // A database migrated by a newer client: refused, nothing written.
    let url = pg.create_db("newer").await;
    let c = pg.client("newer").await;
    c.batch_execute(&format!(
        "CREATE SCHEMA sdm; CREATE TABLE sdm.schema_version (version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO sdm.schema_version (version, description) VALUES ({}, 'from the future');",
        SCHEMA_VERSION + 1
    ))
    .await
    .unwrap();
    let e = Journal::open_url(&url, &test_journal_options())
        .await
        .unwrap_err();
    assert!(
        matches!(e, JournalError::SchemaTooNew { found, known, .. } if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{e}"
    );
    eprintln!("newer schema: {e}");
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'sdm' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        vec!["schema_version".to_string()],
        "nothing written"
    );

    // A fresh database is migrated once, also by engines starting together.
    let url = pg.create_db("fresh").await;
    let o = test_journal_options();
    let (a, b) = tokio::join!(Journal::open_url(&url, &o), Journal::open_url(&url, &o));
    a.unwrap();
    b.unwrap();
    let c = pg.client("fresh").await;
    let versions: Vec<i32> = c
        .query("SELECT version FROM sdm.schema_version ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_operations_are_pruned_and_unfinished_ones_never() {
    let Some(pg) = server_or_skip("ended_operations_are_pruned") else {
        return;
    };
    let url = pg.create_db("prune").await;
    let j = open(&url, "engine-p").await;
    let (ended, open_op) = (Uuid::new_v4(), Uuid::new_v4());
    j.append(begin(&ended, &Uuid::new_v4())).await.unwrap();
    j.append(Record::End {
        op: ended.clone(),
        outcome: Outcome::Committed,
        message: None,
    })
    .await
    .unwrap();
    j.append(begin(&open_op, &Uuid::new_v4())).await.unwrap();
    let c = pg.client("prune").await;
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM sdm.operations").await, 2);

    // Too young to go.
    assert_eq!(j.prune(Duration::from_secs(86_400)).await.unwrap(), 0);
    assert_eq!(count("SELECT count(*) FROM sdm.operations").await, 2);

    // Through sdmctl, as an operator's cron job would: the ended one goes with its records.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = sdm_tests::sdmctl_cmd(&[])
        .args(["--json", "resume", "--journal", &url, "--prune", "0"])
        .output()
        .unwrap();
    sdm_tests::assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pruned"], 1, "{v}");
    assert_eq!(count("SELECT count(*) FROM sdm.operations").await, 1);
    let left: Vec<Uuid> = c
        .query("SELECT DISTINCT op FROM sdm.records", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Uuid::parse(&r.get::<_, uuid::Uuid>(0).to_string()).unwrap())
        .collect();
    assert_eq!(
        left,
        vec![open_op.clone()],
        "only the unfinished operation's records stay"
    );
    // The unfinished operation is still its owner's to finish.
    j.append(Record::End {
        op: open_op,
        outcome: Outcome::Committed,
        message: None,
    })
    .await
    .unwrap();
    assert_eq!(j.prune(Duration::ZERO).await.unwrap(), 1);
}
