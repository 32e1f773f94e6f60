//! The scale run: agents with their own sanlock daemons over two shared domains, three engine
//! processes (`sdm_scale_engine`, built on `sdm-client`) on one PostgreSQL journal, many moves
//! of small multi-volume disks, and random kill -9 of agents and engines throughout. Then an
//! audit over the journal and the domains: no disk lost, none moved twice, no source deleted
//! before its destination committed, no leftovers once every agent restarted (its start-up
//! garbage collection ran).
//!
//! Quick form (CI): 3 agents, 60 moves. Full form: `SDM_FULL=1` — 8 agents, 500 moves.
//! `SDM_SCALE_LEASES=local` uses the agents' local leases instead of sanlock daemons.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sdm_tests::cluster::{create_disk, Cluster, TestDisk};
use sdm_tests::journals::Backend;
use sdm_tests::scale::{
    audit, pending_report, sanlock_cluster, SanlockCluster, ScaleEngine, QUEUE_SCHEMA,
};

struct Form {
    agents: usize,
    engines: usize,
    moves: usize,
    kill_every: Duration,
    limit: Duration,
}

/// Images that still need something: an unfinished operation, a move to start or retry.
const PENDING: &str = "SELECT count(*) FROM scale.queue q
    WHERE EXISTS (SELECT 1 FROM sdm.operations o WHERE o.image = q.image AND NOT o.ended)
       OR q.state = 'todo'
       OR (q.state = 'taken' AND NOT EXISTS (SELECT 1 FROM sdm.operations o WHERE o.image = q.image))
       OR (q.tries < 3 AND NOT EXISTS (SELECT 1 FROM sdm.operations o
                                       WHERE o.image = q.image AND o.outcome = 'committed'))";

/// Moves that did not happen (refused before they began, or rolled back: an agent died under
/// every attempt of a copy) go back to the queue, three times at most.
const REQUEUE_ERRORS: &str = "UPDATE scale.queue q SET state = 'todo', tries = tries + 1
    WHERE tries < 3
      AND NOT EXISTS (SELECT 1 FROM sdm.operations o
                      WHERE o.image = q.image AND (NOT o.ended OR o.outcome = 'committed'))
      AND (state IN ('error', 'done')
           OR (state = 'taken' AND EXISTS (SELECT 1 FROM sdm.operations o WHERE o.image = q.image)))";

/// Items killed engines had taken but not begun go back to the queue. Run on every round, not
/// only right after a kill: a take the engine sent just before it was killed may still be
/// committed by the server after that.
const REQUEUE_DEAD: &str = "UPDATE scale.queue q SET state = 'todo'
    WHERE state = 'taken' AND taken_by = ANY($1)
      AND NOT EXISTS (SELECT 1 FROM sdm.operations o WHERE o.image = q.image)";

enum Agents {
    Local(Cluster),
    Sanlock(SanlockCluster),
}

impl Agents {
    fn cluster(&self) -> &Cluster {
        match self {
            Agents::Local(c) => c,
            Agents::Sanlock(s) => &s.cluster,
        }
    }

    fn cluster_mut(&mut self) -> &mut Cluster {
        match self {
            Agents::Local(c) => c,
            Agents::Sanlock(s) => &mut s.cluster,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_run_engines_and_agents_killed_at_random() {
    let full = std::env::var("SDM_FULL").is_ok_and(|v| v == "1");
    let form = if full {
        Form {
            agents: 8,
            engines: 3,
            moves: 500,
            kill_every: Duration::from_secs(3),
            limit: Duration::from_secs(1800),
        }
    } else {
        Form {
            agents: 3,
            engines: 3,
            moves: 60,
            kill_every: Duration::from_secs(1),
            limit: Duration::from_secs(120),
        }
    };
    let Some(backend) = Backend::postgres_or_skip("scale_run") else {
        return;
    };
    let sanlock = match std::env::var("SDM_SCALE_LEASES").as_deref() {
        Ok("local") => Err("SDM_SCALE_LEASES=local".to_string()),
        _ => sdm_lease::test_support::sanlock_available(),
    };
    let mut agents = match &sanlock {
        Ok(()) => Agents::Sanlock(sanlock_cluster(form.agents).await),
        Err(why) => {
            eprintln!("scale run: local leases ({why})");
            Agents::Local(Cluster::start(form.agents).await)
        }
    };
    let leases = if sanlock.is_ok() { "sanlock" } else { "local" };
    let journal = backend.journal().await;
    let db = journal.db().await.expect("database");
    db.batch_execute(QUEUE_SCHEMA).await.expect("work table");

    let setup = Instant::now();
    let mut disks: Vec<TestDisk> = Vec::new();
    let (sd1, sd2) = (agents.cluster().sd1.clone(), agents.cluster().sd2.clone());
    for i in 0..form.moves {
        let d = create_disk(agents.cluster(), &sd1, 1 + i as u64 % 2, 1 + i % 2).await;
        db.execute(
            "INSERT INTO scale.queue (image, src, dst) VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid)",
            &[&d.img.as_str(), &sd1.as_str(), &sd2.as_str()],
        )
        .await
        .expect("queue a move");
        disks.push(d);
    }
    let volumes: usize = disks.iter().map(|d| d.volumes.len()).sum();
    eprintln!(
        "scale run: {} agents ({leases} leases), {} engines, {} disks ({volumes} volumes) ready in {:.1}s",
        form.agents,
        form.engines,
        form.moves,
        setup.elapsed().as_secs_f64()
    );

    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sdm_scale_engine"));
    let logs = tempfile::tempdir().unwrap();
    let urls = agents.cluster().urls();
    let mut engines: Vec<ScaleEngine> = (1..=form.engines)
        .map(|i| {
            ScaleEngine::start(
                &bin,
                &format!("engine-{i}"),
                &journal.url,
                &urls,
                logs.path(),
            )
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(
        std::env::var("SDM_SCALE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(17),
    );
    let (mut engine_kills, mut agent_kills, mut restarts) = (0usize, 0usize, 0usize);
    // What is down now: (is an engine, index, since).
    let mut down: Option<(bool, usize, Instant)> = None;
    let start = Instant::now();
    let mut next_kill = start + form.kill_every;
    let mut dead_engines: Vec<String> = Vec::new();
    loop {
        db.execute(REQUEUE_ERRORS, &[]).await.expect("requeue");
        db.execute(REQUEUE_DEAD, &[&dead_engines])
            .await
            .expect("requeue");
        let pending: i64 = db.query_one(PENDING, &[]).await.unwrap().get(0);
        let todo: i64 = db
            .query_one("SELECT count(*) FROM scale.queue WHERE state = 'todo'", &[])
            .await
            .unwrap()
            .get(0);
        if pending == 0 && down.is_none() {
            break;
        }
        if let Some((is_engine, i, since)) = down {
            if since.elapsed() >= Duration::from_secs(1) {
                if is_engine {
                    restarts += 1;
                    let id = format!("engine-{}-r{restarts}", i + 1);
                    engines[i] = ScaleEngine::start(&bin, &id, &journal.url, &urls, logs.path());
                } else {
                    agents.cluster_mut().agents[i].restart_same_port();
                }
                down = None;
            }
        } else if todo > 0 && Instant::now() >= next_kill {
            next_kill = Instant::now() + form.kill_every;
            if rng.random_bool(0.5) {
                let i = rng.random_range(0..engines.len());
                engines[i].kill9();
                dead_engines.push(engines[i].id.clone());
                db.execute(REQUEUE_DEAD, &[&dead_engines]).await.unwrap();
                engine_kills += 1;
                down = Some((true, i, Instant::now()));
            } else {
                let i = rng.random_range(0..form.agents);
                agents.cluster_mut().kill9(i);
                agent_kills += 1;
                down = Some((false, i, Instant::now()));
            }
        }
        if start.elapsed() >= form.limit {
            let stuck = pending_report(&db, agents.cluster()).await;
            let mut trail = unfinished_trail(&db, logs.path()).await;
            if let Agents::Sanlock(s) = &agents {
                trail.push_str(&lease_holders(&db, &s.daemons).await);
            }
            panic!(
                "scale run not done after {:?}: {pending} pending, {todo} to do\n{stuck}\n{trail}\n{}",
                form.limit,
                engines
                    .iter()
                    .map(|e| format!("--- {}\n{}", e.id, tail(&e.log_text())))
                    .collect::<String>()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = start.elapsed();
    drop(engines);

    // Jobs still running (a wipe, a late copy of a fenced attempt) end before the audit.
    let deadline = Instant::now() + Duration::from_secs(60);
    while agents
        .cluster()
        .jobs()
        .await
        .iter()
        .any(|(_, j)| j.status.is_active())
    {
        assert!(Instant::now() < deadline, "agents still busy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a = audit(&db, agents.cluster_mut(), &disks).await;
    let rollbacks: Vec<String> = db
        .query(
            "SELECT DISTINCT regexp_replace(entry->'rec'->>'reason', '[0-9a-f-]{36}', '<id>', 'g')
             FROM sdm.records WHERE entry->'rec'->>'type' = 'rollback'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let errors: Vec<String> = db
        .query(
            "SELECT image::text || ': ' || coalesce(note, '') FROM scale.queue q
             WHERE NOT EXISTS (SELECT 1 FROM sdm.operations o
                               WHERE o.image = q.image AND o.outcome = 'committed')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "scale run ({}): {} agents ({leases} leases) x {} engines x {} disks ({volumes} volumes)\n\
         moves finished: {} committed ({} on the destination), {} rolled back, {} left on the source\n\
         time: {:.1}s, {:.2} moves/s\n\
         kills: {engine_kills} engines, {agent_kills} agents; takeovers: {}\n\
         audit: {} lost, {} moved twice, {} sources deleted without a committed destination, {} leftovers, {} unfinished\n\
         given up (left on the source after 3 tries): {}\n\
         rollback reasons: {rollbacks:#?}",
        if full { "full" } else { "quick" },
        form.agents,
        form.engines,
        form.moves,
        a.ops_committed,
        a.moved,
        a.ops_rolled_back,
        a.on_source,
        elapsed.as_secs_f64(),
        a.ops_committed as f64 / elapsed.as_secs_f64(),
        a.takeovers,
        a.lost.len(),
        a.moved_twice.len(),
        a.deleted_before_commit.len(),
        a.leftovers.len(),
        a.ops_unfinished,
        errors.len(),
    );
    assert!(a.lost.is_empty(), "lost: {:?}", a.lost);
    assert!(a.moved_twice.is_empty(), "moved twice: {:?}", a.moved_twice);
    assert!(
        a.deleted_before_commit.is_empty(),
        "deleted before commit: {:?}",
        a.deleted_before_commit
    );
    if !a.leftovers_before_restart.is_empty() {
        eprintln!(
            "left for the agents' start-up garbage collection: {:#?}",
            a.leftovers_before_restart
        );
    }
    assert!(a.leftovers.is_empty(), "leftovers: {:?}", a.leftovers);
    assert_eq!(a.ops_unfinished, 0);
    assert_eq!(a.moved + a.on_source, form.moves);
    assert!(
        a.moved * 10 >= form.moves * 9,
        "most disks moved: {} of {} (given up: {errors:?})",
        a.moved,
        form.moves
    );
}

/// What every engine logged about the operations that have not ended.
async fn unfinished_trail(db: &tokio_postgres::Client, logs: &std::path::Path) -> String {
    let ops: Vec<String> = db
        .query("SELECT op::text FROM sdm.operations WHERE NOT ended", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let mut lines = Vec::new();
    for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| ops.iter().any(|op| l.contains(op.as_str())))
        {
            lines.push(format!("{name}: {l}"));
        }
    }
    // Lines start with the time after the engine's name.
    lines.sort_by(|a, b| {
        a.split_once(": ")
            .map(|x| x.1)
            .cmp(&b.split_once(": ").map(|x| x.1))
    });
    let skip = lines.len().saturating_sub(60);
    format!(
        "--- engine lines about unfinished operations (last 60)\n{}",
        lines[skip..].join("\n")
    )
}

/// What each host's sanlock daemon holds, and what its log says about the volumes of the
/// operations that have not ended.
async fn lease_holders(
    db: &tokio_postgres::Client,
    daemons: &[sdm_lease::test_support::SanlockDaemon],
) -> String {
    let vols: Vec<String> = db
        .query(
            "SELECT v->>'vol_id' FROM sdm.records r JOIN sdm.operations o ON o.op = r.op,
                    jsonb_array_elements(r.entry->'rec'->'volumes') v
             WHERE NOT o.ended AND r.seq = 0",
            &[],
        )
        .await
        .map(|rows| rows.iter().filter_map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let mut out = format!("--- sanlock, volumes {vols:?}\n");
    for (i, d) in daemons.iter().enumerate() {
        let status = d
            .client_command()
            .args(["client", "status"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.push_str(&format!("host {}: status\n{status}", i + 1));
        for l in d
            .log()
            .lines()
            .filter(|l| vols.iter().any(|v| l.contains(v.as_str())))
        {
            out.push_str(&format!("host {}: {l}\n", i + 1));
        }
    }
    out
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
