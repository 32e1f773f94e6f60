//! `sdmctl`: the operator's command line for sdm agents.
//!
//! Human output by default, `--json` for scripts. A failing command exits non-zero and prints
//! the agent's error name, code and message (`exit.rs` has the codes). Commands that start a
//! job follow it with a progress bar unless `--no-wait` is given. `hosts`, `disk`, `resume` and
//! `jobs watch` use every `--agent` given.
//!
//! One file per command group: `host.rs`, `domain.rs`, `volume.rs` (with `copy` and
//! `update-volume`), `image.rs`, `jobs.rs`, `disk.rs` (with `resume`), `certs.rs`; the clap
//! types in `cli.rs`, the global options resolved in `ctx.rs`, printing in `output.rs`, the
//! multi-agent progress display in `fleet.rs`.

mod certs;
mod cli;
mod ctx;
mod disk;
mod domain;
mod exit;
mod fleet;
mod host;
mod image;
mod jobs;
mod output;
mod volume;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::ctx::Ctx;

fn main() -> ExitCode {
    init_logging();
    sdm_client::journal::failpoints_from_env();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}

/// What the library notices on its own (a journal database connection lost and retried, a
/// host marked down, a renewal that found its operation taken over) goes to stderr, beside the
/// command's output. Warnings and errors by default; `SDMCTL_LOG` takes a tracing filter
/// (`info`, `sdm_client=debug`, ...).
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SDMCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Making certificates needs no agent; over STOMP, making the context would connect to one.
    if let Cmd::Certs(c) = &cli.cmd {
        return certs::run(cli.json, c);
    }
    let ctx = Ctx::new(&cli).await?;
    match cli.cmd {
        Cmd::Certs(_) => Ok(()), // answered above, before any connection
        Cmd::Host(h) => host::run(&ctx, h).await,
        Cmd::Hosts => host::hosts(&ctx).await,
        Cmd::Domain(d) => domain::run(&ctx, d).await,
        Cmd::Image(i) => image::run(&ctx, i).await,
        Cmd::Volume(v) => volume::run(&ctx, v).await,
        Cmd::Copy(a) => volume::copy(&ctx, a).await,
        Cmd::UpdateVolume(a) => volume::update(&ctx, a).await,
        Cmd::Jobs(j) => jobs::run(&ctx, j).await,
        Cmd::Disk(d) => exit::outcome(disk::run(&ctx, d).await?),
        Cmd::Resume(r) => exit::outcome(disk::resume(&ctx, r).await?),
    }
}
