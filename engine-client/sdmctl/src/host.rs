//! `sdmctl host caps|stats` (one agent) and `sdmctl hosts` (every agent's health, load and
//! domains).

use sdm_client::pool::Health;
use sdm_client::Via;
use sdm_proto::{SdmApiClient, Uuid};

use crate::cli::HostCmd;
use crate::ctx::Ctx;
use crate::output::{human_bytes, print};

/// `sdmctl host ...`.
pub async fn run(ctx: &Ctx, cmd: HostCmd) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    match cmd {
        HostCmd::Caps => {
            let caps = c.api().get_capabilities().await.via(c)?;
            print(json, &caps, |c| {
                println!("version:        {}", c.version);
                println!("host id:        {}", c.host_id);
                println!(
                    "io backend:     {}",
                    if c.io_uring { "io_uring" } else { "sync" }
                );
                if let Some(r) = &c.io_fallback_reason {
                    println!("io fallback:    {r}");
                }
                println!("lease backends: {}", c.lease_backends.join(", "));
                if let Some(mode) = &c.block_activation {
                    println!("LV activation:  {mode}");
                }
                println!(
                    "domains:        {}",
                    c.domains
                        .iter()
                        .map(Uuid::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            })?;
        }
        HostCmd::Stats => {
            let s = c.api().get_stats().await.via(c)?;
            print(json, &s, |s| {
                println!(
                    "jobs running {} pending {} (max {})",
                    s.jobs_running, s.jobs_pending, s.max_running_jobs
                );
                println!(
                    "read {}/s write {}/s",
                    human_bytes(s.read_bps),
                    human_bytes(s.write_bps)
                );
                println!(
                    "uptime {}s rss {} fds {}",
                    s.uptime_s,
                    human_bytes(s.rss_bytes),
                    s.open_fds
                );
            })?;
        }
    }
    Ok(())
}

/// `sdmctl hosts`.
pub async fn hosts(ctx: &Ctx) -> anyhow::Result<()> {
    let pool = ctx.pool()?;
    pool.refresh().await;
    let views = pool.hosts();
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    println!(
        "{:<28} {:>4} {:<6} {:>4} {:>4} {:>5} {:>11} {:>11}  DOMAINS",
        "AGENT", "ID", "STATE", "RUN", "WAIT", "SLOTS", "READ/s", "WRITE/s"
    );
    for v in &views {
        let state = match &v.health {
            Health::Up => "up",
            Health::Down { .. } => "down",
            Health::Unknown => "?",
        };
        let (run, wait, slots, r, w) = v
            .stats
            .as_ref()
            .map(|s| {
                (
                    s.jobs_running.to_string(),
                    s.jobs_pending.to_string(),
                    s.max_running_jobs.to_string(),
                    human_bytes(s.read_bps),
                    human_bytes(s.write_bps),
                )
            })
            .unwrap_or_default();
        let domains: Vec<String> = v
            .domains
            .iter()
            .map(|d| d.as_str()[..8].to_string())
            .collect();
        println!(
            "{:<28} {:>4} {:<6} {:>4} {:>4} {:>5} {:>11} {:>11}  {}",
            v.url,
            v.host_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            state,
            run,
            wait,
            slots,
            r,
            w,
            domains.join(" ")
        );
        if let Health::Down { error } = &v.health {
            println!("    {error}");
        }
    }
    Ok(())
}
