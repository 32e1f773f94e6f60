//! `sdmctl jobs list|abort|delete` (one agent) and `sdmctl jobs watch` (every agent).

use std::time::Duration;

use sdm_client::follow::{follow_plain, FollowOptions};
use sdm_client::{AgentClient, Via};
use sdm_proto::{JobInfo, SdmApiClient, Uuid};

use crate::cli::{uuid, JobsCmd};
use crate::ctx::Ctx;
use crate::exit::Exit;
use crate::fleet::{Ui, VOL_TEMPLATE};
use crate::output::{print, short};

/// `sdmctl jobs ...`.
pub async fn run(ctx: &Ctx, cmd: JobsCmd) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    match cmd {
        JobsCmd::List { ids } => {
            let ids: Vec<Uuid> = ids
                .iter()
                .map(|i| uuid(i, "job id"))
                .collect::<Result<_, _>>()?;
            let ids = (!ids.is_empty()).then_some(ids);
            let m = c.api().get_jobs(None, ids).await.via(c)?;
            print(json, &m, |m| {
                println!(
                    "{:<36}  {:<8}  {:<14}  {:>6}  ERROR",
                    "JOB", "STATUS", "DESCRIPTION", "DONE"
                );
                for j in m.values() {
                    let pct = j
                        .progress
                        .map(|p| format!("{p:.1}%"))
                        .unwrap_or_else(|| "-".into());
                    let err = j
                        .error
                        .as_ref()
                        .map(|e| format!("{} ({})", e.message, e.code))
                        .unwrap_or_default();
                    println!(
                        "{:<36}  {:<8}  {:<14}  {:>6}  {}",
                        j.id, j.status, j.description, pct, err
                    );
                }
            })?;
        }
        JobsCmd::Watch { job_ids } => {
            let ids = job_ids
                .iter()
                .map(|i| uuid(i, "job id"))
                .collect::<Result<Vec<_>, _>>()?;
            if !watch(ctx, ids).await? {
                return Err(Exit(1).into());
            }
        }
        JobsCmd::Abort { job_id } => {
            let id = uuid(&job_id, "job id")?;
            c.api().abort_job(id).await.via(c)?;
            print(json, &true, |_| println!("abort requested"))?;
        }
        JobsCmd::Delete { job_id } => {
            let id = uuid(&job_id, "job id")?;
            c.api().delete_job(id).await.via(c)?;
            print(json, &true, |_| println!("deleted"))?;
        }
    }
    Ok(())
}

/// `sdmctl jobs watch [JOB...]` over every agent: the given jobs, or every active one.
async fn watch(ctx: &Ctx, ids: Vec<Uuid>) -> anyhow::Result<bool> {
    let json = ctx.json;
    let pool = ctx.pool()?;
    let mut targets: Vec<(AgentClient, JobInfo)> = Vec::new();
    for url in pool.urls() {
        let Some(c) = pool.client(&url) else { continue };
        let filter = (!ids.is_empty()).then(|| ids.clone());
        match c.api().get_jobs(None, filter).await {
            Ok(m) => {
                for j in m.into_values() {
                    if !ids.is_empty() || j.status.is_active() {
                        targets.push((c.clone(), j));
                    }
                }
            }
            Err(e) => eprintln!("warning: {url}: {e}"),
        }
    }
    for id in &ids {
        anyhow::ensure!(
            targets.iter().any(|(_, j)| &j.id == id),
            "job {id} is not known to any agent"
        );
    }
    if targets.is_empty() {
        if !json {
            println!("no active jobs");
        }
        return Ok(true);
    }
    let ui = Ui::new(json);
    let opts = FollowOptions::default();
    let results = futures::future::join_all(targets.into_iter().map(|(c, j)| {
        let bar = ui.bar(j.bytes_total, VOL_TEMPLATE);
        bar.set_prefix(short(&j.id).to_string());
        bar.set_message(format!(
            "{} on {}",
            j.description,
            c.url().trim_start_matches("http://")
        ));
        let opts = opts.clone();
        async move {
            let on = |i: &JobInfo| {
                if i.bytes_total > 0 {
                    bar.set_length(i.bytes_total);
                }
                bar.set_position(i.bytes_done);
            };
            let r = follow_plain(&c, &j.id, &opts, Duration::from_secs(30), &on).await;
            bar.finish_and_clear();
            (j, r)
        }
    }))
    .await;
    ui.clear();
    let mut ok = true;
    let mut out = Vec::new();
    for (j, r) in results {
        match r {
            Ok(info) => {
                ok &= info.status == sdm_proto::JobStatus::Done;
                if !json {
                    let err = info
                        .error
                        .as_ref()
                        .map(|e| format!(": {} ({})", e.message, e.code))
                        .unwrap_or_default();
                    println!("job {} {} {}{err}", info.id, info.description, info.status);
                }
                out.push(serde_json::to_value(&info)?);
            }
            Err(e) => {
                ok = false;
                if !json {
                    println!("job {} {}: lost: {e}", j.id, j.description);
                }
                out.push(serde_json::json!({"id": j.id, "error": e.to_string()}));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ok)
}
