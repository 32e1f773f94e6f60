//! `sdm-agent` binary: flags, logging, start-up, readiness, signals.
//!
//! Under systemd (`Type=notify`, see `packaging/sdm-agent.service`) the agent reports its state
//! to the service manager: STATUS lines while it starts, READY=1 once the socket is bound and
//! the domains are attached, WATCHDOG=1 at half the `WatchdogSec=` interval, and STOPPING=1 on
//! SIGTERM. Outside systemd `NOTIFY_SOCKET` is unset and every notification is a no-op.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sd_notify::NotifyState;
use sdm_agent::config::{Config, ConfigError, Overrides};
use sdm_agent::{ops, rpc, Agent};
use sdm_proto::ApiError;

/// Exit status for a configuration that was refused (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

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

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    #[cfg(feature = "failpoints")]
    let _failpoints = {
        // Development and test builds (default features) only: failpoints from the
        // FAILPOINTS environment variable; none are active without it.
        if let Ok(fp) = std::env::var("FAILPOINTS") {
            tracing::warn!(failpoints = %fp, "failpoints enabled (test build)");
        }
        fail::FailScenario::setup()
    };

    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One error line (priority err in the journal), and the reason as the unit's status
            // text, which `systemctl status sdm-agent` keeps showing after the failed start.
            tracing::error!("cannot run: {e:#}");
            notify(&[NotifyState::Status(&format!("failed: {e:#}"))]);
            if e.downcast_ref::<ConfigError>().is_some() {
                // EX_CONFIG: the unit's RestartPreventExitStatus; retrying cannot help.
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
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
    // Started first: joining sanlock lockspaces can take tens of seconds per domain, and the
    // service manager must not take that for a hang.
    let watchdog = spawn_watchdog();

    notify(&[NotifyState::Status("attaching storage domains")]);
    let agent = Agent::start(cfg).map_err(|e| anyhow::anyhow!("{}", ApiError::from(e)))?;
    ops::gc::collect_all(&agent);
    let (addr, handle) = rpc::serve(agent.clone())
        .await
        .with_context(|| format!("cannot listen on {}", agent.cfg.listen))?;
    let domains = agent.list_domains();
    for d in &domains {
        tracing::info!(sd_id = %d.sd_id, path = %d.path, lease_backend = %d.lease_backend, "domain ready");
    }
    tracing::info!("sdm-agent ready on {addr}");
    // Also on stdout, unadorned, for scripts and tests that wait for it.
    println!("sdm-agent ready on {addr}");
    let status = format!("serving on {addr}, {} domains", domains.len());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    let (running, pending) = agent.jobs.counts();
    let status = format!("stopping: aborting {running} running and {pending} pending jobs");
    notify(&[NotifyState::Stopping, NotifyState::Status(&status)]);
    // Stop taking requests, abort jobs (their volumes stay ILLEGAL, leases are released as the
    // jobs unwind), give them a few seconds, then leave.
    let _ = handle.stop();
    agent.jobs.abort_all();
    if !agent.jobs.wait_idle(Duration::from_secs(8)).await {
        tracing::warn!("some jobs did not stop in time; their volumes stay ILLEGAL");
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("sdm-agent stopped");
    Ok(())
}

/// Sends `states` to the service manager; a no-op outside systemd. A failure is only logged:
/// the agent works the same without a service manager.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Pings the systemd watchdog at half its interval when `WatchdogSec=` is set. The pings come
/// from a runtime task, so a runtime that stops scheduling tasks stops them too.
fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(
        interval_s = interval.as_secs_f64(),
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}

/// Logs go to stderr, filtered by `SDM_LOG` (tracing `EnvFilter` syntax, default `info`).
///
/// When stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and inode), lines
/// carry no timestamp or colours, since the journal adds its own, and start with a `<N>`
/// syslog priority so that `journalctl -p warning` works.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SDM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        builder
            .with_ansi(false)
            .event_format(journal::PriorityPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false),
            ))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// True when fd 2 is the stream named by `JOURNAL_STREAM` (`<device>:<inode>`).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    want.to_str() == Some(format!("{}:{}", meta.dev(), meta.ino()).as_str())
}

mod journal {
    use std::fmt;

    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    /// Starts each event with its syslog priority (`<3>` error … `<7>` debug), which the
    /// journal strips and records as the entry's priority, then the level name.
    pub struct PriorityPrefix<F>(pub F);

    impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let level = *event.metadata().level();
            let priority = match level {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                Level::DEBUG | Level::TRACE => 7,
            };
            write!(writer, "<{priority}>{level} ")?;
            self.0.format_event(ctx, writer, event)
        }
    }
}
