//! `sdm-agent` binary: flags, logging, start-up, readiness, signals.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sdm_agent::config::{Config, Overrides};
use sdm_agent::{rpc, Agent};

/// sdm-agent: storage data-path agent for virtualization hosts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (without it: the embedded default, for trying sdm out).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:54321 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// State directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Host id in sanlock lockspaces (1-2000).
    #[arg(long)]
    host_id: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SDM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();

    let over = Overrides {
        listen: args.listen,
        state_dir: args.state_dir,
        host_id: args.host_id,
    };
    let cfg = Config::load(args.config.as_deref(), &over)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sdm-rpc")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let agent = Agent::start(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (addr, handle) = rpc::serve(agent.clone())
        .await
        .with_context(|| format!("cannot listen on {}", agent.cfg.listen))?;
    for d in agent.list_domains() {
        tracing::info!(sd_id = %d.sd_id, path = %d.path, lease_backend = %d.lease_backend, "domain ready");
    }
    tracing::info!("sdm-agent ready on {addr}");
    // Also on stdout, unadorned, for scripts and tests that wait for it.
    println!("sdm-agent ready on {addr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    // Stop taking requests, abort jobs (their volumes stay ILLEGAL, leases are released as the
    // jobs unwind), give them a few seconds, then leave.
    let _ = handle.stop();
    agent.jobs.abort_all();
    if !agent.jobs.wait_idle(Duration::from_secs(8)).await {
        tracing::warn!("some jobs did not stop in time; their volumes stay ILLEGAL");
    }
    tracing::info!("sdm-agent stopped");
    Ok(())
}
