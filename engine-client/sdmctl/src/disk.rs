//! `sdmctl disk move|copy|delete` and `sdmctl resume`: disk operations spread over every agent,
//! recorded in the engine journal, with a summary report.

use std::sync::Arc;

use anyhow::Context;
use sdm_client::journal::{read_entries, replay};
use sdm_client::{DeletePolicy, Disks, Journal, MovePolicy, OpKind, OpReport, Outcome};
use sdm_proto::Uuid;

use crate::cli::{size, uuid, DiskCmd, JournalArgs, ResumeArgs, TransferArgs};
use crate::ctx::Ctx;
use crate::fleet::Ui;
use crate::output::human_bytes;

fn open_journal(j: &JournalArgs) -> anyhow::Result<Arc<Journal>> {
    let path = j.path();
    let journal = Journal::open(&path).with_context(|| format!("journal {}", path.display()))?;
    Ok(Arc::new(journal))
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
    let disks = Disks::new(ctx.pool()?, open_journal(&journal)?);
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
        let entries = read_entries(args.j.path())?;
        let ops: Vec<_> = replay(&entries)
            .into_iter()
            .filter(|o| o.unfinished())
            .collect();
        if json {
            println!("{}", serde_json::to_string_pretty(&ops)?);
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
                println!("{} {} image {} ({stage})", o.op, o.kind, o.image);
            }
        }
        return Ok(Outcome::Committed);
    }
    let disks = Disks::new(ctx.pool()?, open_journal(&args.j)?);
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
