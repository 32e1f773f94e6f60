//! `sdmctl disk move|copy|delete` and `sdmctl resume`: disk operations spread over every agent,
//! recorded in the engine journal, with a summary report.

use std::sync::Arc;

use anyhow::Context;
use sdm_client::journal::{read_entries, replay, JournalUrl};
use sdm_client::{
    CopyStartReport, DeletePolicy, Disks, Journal, MovePolicy, OpKind, OpReport, Outcome,
};
use sdm_proto::Uuid;

use crate::cli::{size, uuid, DiskCmd, JournalArgs, ResumeArgs, TransferArgs};
use crate::ctx::Ctx;
use crate::fleet::Ui;
use crate::output::human_bytes;

async fn open_journal(j: &JournalArgs) -> anyhow::Result<Arc<Journal>> {
    let url = j.url();
    let journal = Journal::open_url(&url, &j.options()?)
        .await
        .with_context(|| format!("journal {}", redacted(&url)))?;
    Ok(Arc::new(journal))
}

/// A journal URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// `sdmctl disk ...`; returns the outcome for the exit code.
pub async fn run(ctx: &Ctx, cmd: DiskCmd) -> anyhow::Result<Outcome> {
    let json = ctx.json;
    let (kind, img, src, dst, policy, journal) = match cmd {
        DiskCmd::Move {
            img_id,
            t,
            wipe,
            discard,
        } => transfer(OpKind::Move, &img_id, t, wipe, discard)?,
        DiskCmd::Copy { img_id, t } => transfer(OpKind::Copy, &img_id, t, false, false)?,
        DiskCmd::Delete {
            img_id,
            sd,
            wipe,
            discard,
            j,
        } => {
            let p = MovePolicy {
                wipe,
                discard,
                ..Default::default()
            };
            (
                OpKind::Delete,
                uuid(&img_id, "image id")?,
                uuid(&sd, "sd id")?,
                None,
                p,
                j,
            )
        }
    };
    let disks = Disks::new(ctx.pool()?, open_journal(&journal).await?);
    let ui = Ui::new(json);
    let dst = dst.unwrap_or_else(Uuid::blank);
    let report = match kind {
        OpKind::Move => disks.move_disk(&img, &src, &dst, policy, &ui).await,
        OpKind::Copy => disks.copy_disk(&img, &src, &dst, policy, &ui).await,
        OpKind::Delete => {
            let p = DeletePolicy {
                wipe: policy.wipe,
                discard: policy.discard,
            };
            disks.delete_disk(&img, &src, p, &ui).await
        }
    };
    ui.clear();
    let report = report?;
    summary(json, std::slice::from_ref(&report))?;
    Ok(report.outcome)
}

/// What a move or copy needs: its kind, image, source, destination, policy and journal.
type Transfer = (OpKind, Uuid, Uuid, Option<Uuid>, MovePolicy, JournalArgs);

fn transfer(
    kind: OpKind,
    img_id: &str,
    t: TransferArgs,
    wipe: bool,
    discard: bool,
) -> anyhow::Result<Transfer> {
    let p = policy(&t, wipe, discard)?;
    let (src, dst) = (uuid(&t.from, "source sd")?, uuid(&t.to, "destination sd")?);
    Ok((kind, uuid(img_id, "image id")?, src, Some(dst), p, t.j))
}

fn policy(t: &TransferArgs, wipe: bool, discard: bool) -> anyhow::Result<MovePolicy> {
    Ok(MovePolicy {
        wipe,
        discard,
        verify: !t.no_verify,
        parallelism: t.parallelism,
        bandwidth_limit: t.bandwidth.as_deref().map(size).transpose()?,
        max_attempts: t.max_attempts.max(1),
    })
}

/// `sdmctl resume`; returns the worst outcome.
pub async fn resume(ctx: &Ctx, args: ResumeArgs) -> anyhow::Result<Outcome> {
    let json = ctx.json;
    if args.list {
        return list(json, &args).await;
    }
    if let Some(days) = args.prune {
        return prune(json, &args, days).await;
    }
    let disks = Disks::new(ctx.pool()?, open_journal(&args.j).await?);
    if args.watch {
        return watch(&disks, json, args.interval, args.parallel).await;
    }
    let ui = Ui::new(json);
    let reports = disks.resume(&ui).await;
    ui.clear();
    let reports = reports?;
    if reports.is_empty() && !json {
        println!("nothing to resume");
        return Ok(Outcome::Committed);
    }
    summary(json, &reports)?;
    let worst = reports
        .iter()
        .map(|r| r.outcome)
        .find(|o| !o.is_success())
        .unwrap_or(Outcome::Committed);
    Ok(worst)
}

/// `sdmctl resume --prune DAYS`.
async fn prune(json: bool, args: &ResumeArgs, days: f64) -> anyhow::Result<Outcome> {
    let older_than = std::time::Duration::try_from_secs_f64(days * 86_400.0)
        .map_err(|_| anyhow::anyhow!("--prune: {days} is not a number of days"))?;
    let journal = open_journal(&args.j).await?;
    let n = journal.prune(older_than).await?;
    if json {
        println!("{}", serde_json::json!({ "pruned": n }));
    } else {
        println!(
            "pruned {n} operations that ended more than {days} days ago from {}",
            journal.location()
        );
    }
    Ok(Outcome::Committed)
}

/// `sdmctl resume --list`: the file journal is read without taking its lock (an engine may be
/// running); a shared journal is asked for every unfinished operation and its owner.
async fn list(json: bool, args: &ResumeArgs) -> anyhow::Result<Outcome> {
    let url = args.j.url();
    let (owners, ops) = match JournalUrl::parse(&url)? {
        JournalUrl::File(path) => {
            let entries = read_entries(path)?;
            (Vec::new(), replay(&entries))
        }
        JournalUrl::Postgres(_) => open_journal(&args.j).await?.list().await?,
    };
    let ops: Vec<_> = ops.into_iter().filter(|o| o.unfinished()).collect();
    if json {
        let out: Vec<serde_json::Value> = ops
            .iter()
            .map(|o| {
                let mut v = serde_json::to_value(o).unwrap_or_default();
                if let Some(l) = owners.iter().find(|l| l.op == o.op) {
                    v["owner"] = serde_json::to_value(l).unwrap_or_default();
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if ops.is_empty() {
        println!("nothing to resume");
    } else {
        for o in &ops {
            let stage = if o.rollback.is_some() {
                "rolling back"
            } else if o.committed() {
                "committed, deleting source"
            } else if o.cloned {
                "copying"
            } else {
                "begun"
            };
            let owner = match owners.iter().find(|l| l.op == o.op) {
                Some(l) => match (&l.owner, l.expires_in_ms) {
                    (Some(w), Some(ms)) if ms > 0 => {
                        format!(
                            ", owner {w} epoch {} for {:.1}s",
                            l.epoch,
                            ms as f64 / 1000.0
                        )
                    }
                    (Some(w), _) => format!(", owner {w} epoch {} EXPIRED", l.epoch),
                    _ => String::new(),
                },
                None => String::new(),
            };
            println!("{} {} image {} ({stage}{owner})", o.op, o.kind, o.image);
        }
    }
    Ok(Outcome::Committed)
}

/// `sdmctl resume --watch`: a small takeover daemon. Every `interval` it takes up what it may
/// (expired or released operations) and drives each to its end, logging what it decided, until
/// SIGTERM or SIGINT; an operation it is driving then is released for another engine.
async fn watch(
    disks: &Disks,
    json: bool,
    interval: f64,
    parallel: usize,
) -> anyhow::Result<Outcome> {
    use tokio::signal::unix::{signal, SignalKind};
    let interval = std::time::Duration::try_from_secs_f64(interval)
        .map_err(|_| anyhow::anyhow!("--interval: {interval} is not a duration in seconds"))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let ui = Ui::new(json);
    eprintln!(
        "watch: engine {} on journal {}, every {:.1}s",
        disks.journal().owner(),
        disks.journal().location(),
        interval.as_secs_f64()
    );
    loop {
        let round = async {
            match disks.resume_parallel(&ui, parallel).await {
                Ok(reports) => {
                    for r in &reports {
                        eprintln!(
                            "watch: operation {} ({} of image {}) {}{}",
                            r.op,
                            r.kind,
                            r.image,
                            r.outcome,
                            r.message
                                .as_deref()
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default()
                        );
                    }
                    if json && !reports.is_empty() {
                        let _ = summary(true, &reports);
                    }
                }
                Err(e) => eprintln!("watch: {:#}", anyhow::Error::from(e)),
            }
            tokio::time::sleep(interval).await;
        };
        tokio::select! {
            _ = round => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    ui.clear();
    // What was being driven is released by its dropped driver: give those updates a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    eprintln!("watch: stopped");
    Ok(Outcome::Committed)
}

fn summary(json: bool, reports: &[OpReport]) -> anyhow::Result<()> {
    if json {
        if reports.len() == 1 {
            println!("{}", serde_json::to_string_pretty(&reports[0])?);
        } else {
            println!("{}", serde_json::to_string_pretty(reports)?);
        }
        return Ok(());
    }
    for r in reports {
        let rate = if r.elapsed_s > 0.0 {
            (r.bytes as f64 / r.elapsed_s) as u64
        } else {
            0
        };
        println!(
            "{} of image {} {}{} in {:.1}s{}",
            r.kind,
            r.image,
            r.outcome,
            if r.resumed { " (resumed)" } else { "" },
            r.elapsed_s,
            match (r.kind, r.target_ready_s) {
                (OpKind::Delete, _) => String::new(),
                (_, Some(t)) => format!(
                    ", destination ready after {t:.1}s, {} at {}/s",
                    human_bytes(r.bytes),
                    human_bytes(rate)
                ),
                (_, None) => String::new(),
            }
        );
        if r.kind != OpKind::Delete {
            println!(
                "  {:<36}  {:>10}  {:<22}  {:>4}  CHECKSUM",
                "VOLUME", "SIZE", "HOST (ATTEMPTS)", "GEN"
            );
            for v in &r.volumes {
                let host = v
                    .attempts
                    .last()
                    .map(|a| a.host.trim_start_matches("http://").to_string())
                    .unwrap_or_default();
                let fenced = v.attempts.iter().filter(|a| a.outcome == "fenced").count();
                let tries = match (v.attempts.len(), fenced) {
                    (n, 0) => format!("{n}"),
                    (n, f) => format!("{n}, {f} fenced"),
                };
                println!(
                    "  {:<36}  {:>10}  {:<22}  {:>4}  {}",
                    v.vol_id,
                    human_bytes(v.bytes),
                    format!("{host} ({tries})"),
                    v.generation
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                    v.checksum
                        .as_deref()
                        .map(|c| &c[..16.min(c.len())])
                        .unwrap_or("-")
                );
                // Where each attempt's copy started, once a volume was retried or resumed: the
                // user sees what a resume saved, not only the log.
                let resumed = v
                    .attempts
                    .iter()
                    .any(|a| matches!(a.start, Some(CopyStartReport::Resumed { .. })));
                if v.attempts.len() > 1 || resumed || r.resumed {
                    for a in &v.attempts {
                        if let Some(s) = &a.start {
                            println!(
                                "    attempt {} on {}: {s} ({})",
                                a.attempt,
                                a.host.trim_start_matches("http://"),
                                a.outcome
                            );
                        }
                    }
                }
            }
        }
        match r.kind {
            OpKind::Move | OpKind::Delete if r.deleted => println!("  source deleted"),
            OpKind::Move | OpKind::Delete => println!("  source NOT deleted yet"),
            OpKind::Copy => {}
        }
        if let Some(m) = &r.message {
            println!(
                "  {}: {m}",
                if r.outcome == Outcome::Pending {
                    "pending"
                } else {
                    "note"
                }
            );
        }
        if r.outcome == Outcome::Pending {
            println!("  the operation stays in the journal; run `sdmctl resume` to finish it");
        }
    }
    Ok(())
}
