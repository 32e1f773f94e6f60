//! An engine process of the scale run (`tests/tests/scale.rs`), built on `sdm-client` the way
//! an engine embeds it: it takes move requests from a work table in the journal's database
//! (`scale.queue`, one row per disk), moves up to `SCALE_PARALLEL` disks at once, and every
//! second takes over what dead engines left (`Disks::resume`). It runs until killed (the scale
//! run kills engines at random) or SIGTERM.
//!
//! Settings come from the environment: `SCALE_JOURNAL` (postgres URL), `SCALE_AGENTS`
//! (comma-separated agent URLs), `SCALE_ENGINE_ID`, `SCALE_PARALLEL` (default 4),
//! `SCALE_LEASE_MS` and `SCALE_RENEW_MS`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sdm_client::journal::JournalOptions;
use sdm_client::{Disks, Event, EventSink, Journal, MovePolicy};
use sdm_proto::Uuid;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn env_ms(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}"))?,
        Err(_) => default,
    }))
}

/// Writes every event but progress to stderr, one JSON line each with the time, so that a run
/// that does not finish shows where each operation stopped (the test prints the logs' tails).
struct Trail;

impl EventSink for Trail {
    fn event(&self, e: &Event) {
        if matches!(e, Event::CopyProgress { .. } | Event::DeleteProgress { .. }) {
            return;
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "{}.{:03} {}",
            at.as_secs(),
            at.subsec_millis(),
            serde_json::to_string(e).unwrap_or_default()
        );
    }
}

/// Takes the next disk to move from the work table, if any.
async fn take(db: &tokio_postgres::Client, me: &str) -> anyhow::Result<Option<(Uuid, Uuid, Uuid)>> {
    let row = db
        .query_opt(
            "UPDATE scale.queue SET state = 'taken', taken_by = $1, taken_at = now()
             WHERE image = (SELECT image FROM scale.queue WHERE state = 'todo'
                            ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING image::text, src::text, dst::text",
            &[&me],
        )
        .await?;
    Ok(row.map(|r| {
        let id = |i: usize| Uuid::parse(r.get::<_, &str>(i)).expect("uuid");
        (id(0), id(1), id(2))
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<std::convert::Infallible> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SDM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let url = env("SCALE_JOURNAL")?;
    let agents: Vec<String> = env("SCALE_AGENTS")?
        .split(',')
        .map(str::to_string)
        .collect();
    let me = env("SCALE_ENGINE_ID")?;
    let parallel: usize = std::env::var("SCALE_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let opts = JournalOptions {
        owner: Some(me.clone()),
        lease: env_ms("SCALE_LEASE_MS", 2000)?,
        renew_every: env_ms("SCALE_RENEW_MS", 500)?,
        ..Default::default()
    };
    let journal = Arc::new(Journal::open_url(&url, &opts).await?);
    let disks = Arc::new(
        Disks::new(sdm_tests::cluster::test_pool(&agents), journal)
            .with_follow_options(sdm_tests::cluster::test_follow()),
    );
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let db = Arc::new(db);

    // Takeover duty: what dead engines left, and pending operations anyone released.
    {
        let disks = disks.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = disks.resume_parallel(&Trail, 8).await {
                    eprintln!("{}: resume: {e:#}", disks.journal().owner());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < parallel {
            let Some((img, src, dst)) = take(&db, &me).await? else {
                break;
            };
            let (disks, db) = (disks.clone(), db.clone());
            running.spawn(async move {
                let policy = MovePolicy {
                    parallelism: 2,
                    ..Default::default()
                };
                let r = disks.move_disk(&img, &src, &dst, policy, &Trail).await;
                let (state, note) = match &r {
                    Ok(rep) => ("done", rep.outcome.to_string()),
                    // Moved by nobody: the disk goes back to the queue.
                    Err(sdm_client::Error::NoHost(m)) => ("todo", m.clone()),
                    Err(e) => ("error", format!("{e:#}")),
                };
                let _ = db
                    .execute(
                        "UPDATE scale.queue SET state = $2, note = $3 WHERE image = $1::text::uuid",
                        &[&img.as_str(), &state, &note],
                    )
                    .await;
            });
        }
        if running.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let _ = running.join_next().await;
    }
}
