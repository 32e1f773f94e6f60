//! The commands that use every `--agent` at once: `hosts`, `disk move|copy|delete`, `resume`
//! and `jobs watch`. They drive `sdm_client`'s pool, journal and disk operations, and show them
//! with one progress bar per volume plus a total.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sdm_client::disk::{DeletePolicy, MovePolicy, OpKind, OpReport, Outcome};
use sdm_client::follow::{follow_plain, FollowOptions};
use sdm_client::journal::{read_entries, replay};
use sdm_client::pool::{Health, HostPool};
use sdm_client::{Decision, Disks, Event, EventSink, Journal, SdmApiClient};
use sdm_proto::{JobInfo, Uuid};

use super::{human_bytes, parse_bytes, uuid};

/// Disk operations across the agents.
#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// Move a disk to another domain: copy every volume (spread over the agents), verify,
    /// commit, then delete the source.
    Move {
        /// Image id.
        img_id: String,
        #[command(flatten)]
        t: TransferArgs,
        /// Overwrite the source with zeros when deleting it.
        #[arg(long)]
        wipe: bool,
        /// Release the source's space after deleting it (best effort).
        #[arg(long)]
        discard: bool,
    },
    /// Copy a disk to another domain (same ids); the source is kept.
    Copy {
        /// Image id.
        img_id: String,
        #[command(flatten)]
        t: TransferArgs,
    },
    /// Delete a disk.
    Delete {
        /// Image id.
        img_id: String,
        /// Domain to delete it from.
        #[arg(long)]
        sd: String,
        /// Overwrite every byte with zeros first.
        #[arg(long)]
        wipe: bool,
        /// Release the space afterwards (best effort).
        #[arg(long)]
        discard: bool,
        #[command(flatten)]
        j: JournalArgs,
    },
}

/// Options shared by move and copy.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Source domain.
    #[arg(long)]
    from: String,
    /// Destination domain.
    #[arg(long)]
    to: String,
    /// Skip the checksum comparison of source and destination.
    #[arg(long)]
    no_verify: bool,
    /// Volumes copied at once (default: one per agent that sees both domains).
    #[arg(long, default_value_t = 0)]
    parallelism: usize,
    /// Bandwidth limit per copy, bytes per second (suffixes K, M, G).
    #[arg(long)]
    bandwidth: Option<String>,
    /// Attempts per volume before the operation is rolled back.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    #[command(flatten)]
    j: JournalArgs,
}

/// Where the engine journal lives.
#[derive(Args, Debug, Clone)]
pub struct JournalArgs {
    /// Journal file (default: $SDM_JOURNAL, else $XDG_STATE_HOME/sdm/sdmctl.journal, else
    /// ~/.local/state/sdm/sdmctl.journal).
    #[arg(long, env = "SDM_JOURNAL")]
    journal: Option<PathBuf>,
}

impl JournalArgs {
    fn path(&self) -> PathBuf {
        if let Some(p) = &self.journal {
            return p.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("sdm").join("sdmctl.journal")
    }
}

/// `sdmctl resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// Only list the unfinished operations.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    j: JournalArgs,
}

fn pool(agents: &[String]) -> anyhow::Result<Arc<HostPool>> {
    let opts = sdm_client::pool::PoolOptions {
        tls: super::client_options().tls,
        ..Default::default()
    };
    Ok(Arc::new(HostPool::with_options(
        agents,
        opts,
        Box::new(sdm_client::LeastLoaded),
    )?))
}

fn open_journal(j: &JournalArgs) -> anyhow::Result<Arc<Journal>> {
    let path = j.path();
    let journal = Journal::open(&path).with_context(|| format!("journal {}", path.display()))?;
    Ok(Arc::new(journal))
}

/// `sdmctl hosts`.
pub async fn hosts(agents: &[String], json: bool) -> anyhow::Result<()> {
    let pool = pool(agents)?;
    pool.refresh().await;
    let views = pool.hosts();
    if json {
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

/// `sdmctl disk ...`; returns the outcome for the exit code.
pub async fn disk(agents: &[String], json: bool, cmd: DiskCmd) -> anyhow::Result<Outcome> {
    let (kind, img, src, dst, policy, journal) = match cmd {
        DiskCmd::Move {
            img_id,
            t,
            wipe,
            discard,
        } => {
            let p = policy(&t, wipe, discard)?;
            let (src, dst) = (uuid(&t.from, "source sd")?, uuid(&t.to, "destination sd")?);
            (
                OpKind::Move,
                uuid(&img_id, "image id")?,
                src,
                Some(dst),
                p,
                t.j,
            )
        }
        DiskCmd::Copy { img_id, t } => {
            let p = policy(&t, false, false)?;
            let (src, dst) = (uuid(&t.from, "source sd")?, uuid(&t.to, "destination sd")?);
            (
                OpKind::Copy,
                uuid(&img_id, "image id")?,
                src,
                Some(dst),
                p,
                t.j,
            )
        }
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
    let disks = Disks::new(pool(agents)?, open_journal(&journal)?);
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

fn policy(t: &TransferArgs, wipe: bool, discard: bool) -> anyhow::Result<MovePolicy> {
    Ok(MovePolicy {
        wipe,
        discard,
        verify: !t.no_verify,
        parallelism: t.parallelism,
        bandwidth_limit: t.bandwidth.as_deref().map(parse_bytes).transpose()?,
        max_attempts: t.max_attempts.max(1),
    })
}

/// `sdmctl resume`; returns the worst outcome.
pub async fn resume(agents: &[String], json: bool, args: ResumeArgs) -> anyhow::Result<Outcome> {
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
    let disks = Disks::new(pool(agents)?, open_journal(&args.j)?);
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

fn short(u: &Uuid) -> &str {
    &u.as_str()[..8]
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

/// Progress display: a bar per volume and a total, on stderr; plain lines when stderr is not a
/// terminal; nothing but the final report with `--json`.
pub struct Ui {
    mp: MultiProgress,
    show: bool,
    plain: bool,
    state: Mutex<UiState>,
}

#[derive(Default)]
struct UiState {
    total: Option<ProgressBar>,
    vols: HashMap<Uuid, (ProgressBar, u64)>,
    delete: Option<ProgressBar>,
}

impl Ui {
    fn new(json: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let mp = MultiProgress::with_draw_target(if tty && !json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ui {
            mp,
            show: tty && !json,
            plain: !tty && !json,
            state: Mutex::new(UiState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UiState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn say(&self, line: String) {
        if self.show {
            self.mp.suspend(|| eprintln!("{line}"));
        } else if self.plain {
            eprintln!("{line}");
        }
    }

    fn bar(&self, len: u64, template: &str) -> ProgressBar {
        let b = self.mp.add(ProgressBar::new(len));
        b.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    }

    fn update_total(&self, st: &UiState) {
        if let Some(t) = &st.total {
            t.set_position(st.vols.values().map(|(_, done)| *done).sum());
        }
    }

    fn clear(&self) {
        let st = self.state();
        for (b, _) in st.vols.values() {
            b.finish_and_clear();
        }
        if let Some(t) = &st.total {
            t.finish_and_clear();
        }
        if let Some(d) = &st.delete {
            d.finish_and_clear();
        }
        let _ = self.mp.clear();
    }
}

const VOL_TEMPLATE: &str = "{prefix:>9} [{bar:30}] {percent:>3}% {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta:>4} {msg}";
const TOTAL_TEMPLATE: &str = "{prefix:>9} [{bar:30.bold}] {percent:>3}% {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta:>4} {msg}";

fn describe(d: &Decision) -> Option<String> {
    Some(match d {
        Decision::Job { .. } => return None,
        Decision::HostUnreachable { host, .. } => {
            format!("{host} does not answer; asking the volume")
        }
        Decision::JobMissing { host } => format!("{host} does not know the job; asking the volume"),
        Decision::NoObserver { error } => format!("cannot read the destination: {error}"),
        Decision::LeaseHeld { .. } => "lease held: still running".into(),
        Decision::GenerationDone { generation, .. } => format!("generation {generation}: done"),
        Decision::GenerationFenced { generation, .. } => {
            format!("generation {generation}: fenced, will retry")
        }
        Decision::Fencing { from, to, via, .. } => {
            format!("fencing generation {from} -> {to} via {via}")
        }
        Decision::FenceEnded { outcome, .. } => format!("fence {outcome}"),
        Decision::Aborting { host } => format!("aborting on {host}"),
    })
}

impl EventSink for Ui {
    fn event(&self, e: &Event) {
        let mut st = self.state();
        match e {
            Event::Started {
                kind,
                image,
                volumes,
                resumed,
                ..
            } => {
                self.say(format!(
                    "{}{kind} of image {image}: {} volume{}, {}",
                    if *resumed { "resuming " } else { "" },
                    volumes.len(),
                    if volumes.len() == 1 { "" } else { "s" },
                    human_bytes(volumes.iter().map(|v| v.bytes).sum())
                ));
                if *kind != OpKind::Delete {
                    for v in volumes {
                        let b = self.bar(v.bytes, VOL_TEMPLATE);
                        b.set_prefix(short(&v.vol_id).to_string());
                        b.set_message("waiting");
                        st.vols.insert(v.vol_id.clone(), (b, 0));
                    }
                    let t = self.bar(volumes.iter().map(|v| v.bytes).sum(), TOTAL_TEMPLATE);
                    t.set_prefix("total");
                    st.total = Some(t);
                }
            }
            Event::Phase { phase, .. } => {
                if let Some(t) = &st.total {
                    t.set_message(phase.to_string());
                }
            }
            Event::CopySubmitted {
                vol,
                host,
                attempt,
                generation,
                ..
            } => {
                if let Some((b, done)) = st.vols.get_mut(vol) {
                    b.reset();
                    *done = 0;
                    b.set_message(format!(
                        "copying on {} (attempt {attempt}, G={generation})",
                        host.trim_start_matches("http://")
                    ));
                }
                self.update_total(&st);
            }
            Event::CopyProgress {
                vol,
                bytes_done,
                bytes_total,
                ..
            } => {
                if let Some((b, done)) = st.vols.get_mut(vol) {
                    if *bytes_total > 0 {
                        b.set_length(*bytes_total);
                    }
                    b.set_position(*bytes_done);
                    *done = *bytes_done;
                }
                self.update_total(&st);
            }
            Event::Recovery { vol, decision, .. } => {
                if let Some(text) = describe(decision) {
                    if let Some((b, _)) = st.vols.get(vol) {
                        b.set_message(text.clone());
                    }
                    if !matches!(decision, Decision::LeaseHeld { .. }) {
                        self.say(format!("{}: {text}", short(vol)));
                    }
                }
            }
            Event::CopyEnded {
                vol,
                done,
                fenced,
                error,
                ..
            } => {
                if let Some((b, d)) = st.vols.get_mut(vol) {
                    if *done {
                        let len = b.length().unwrap_or(0);
                        b.set_position(len);
                        *d = len;
                        b.set_message("copied");
                    } else {
                        let why = if *fenced {
                            "lost and fenced".to_string()
                        } else {
                            error.clone().unwrap_or_default()
                        };
                        b.set_message(format!("attempt failed: {why}"));
                        self.say(format!("{}: attempt failed: {why}", short(vol)));
                    }
                }
                self.update_total(&st);
            }
            Event::Verified { vol, checksum, .. } => {
                if let Some((b, _)) = st.vols.get(vol) {
                    b.set_message(format!(
                        "verified sha256 {}",
                        &checksum[..12.min(checksum.len())]
                    ));
                }
            }
            Event::TargetReady { .. } => {
                self.say("destination committed: the disk is usable there".into());
                if let Some(t) = &st.total {
                    t.set_message("committed");
                }
            }
            Event::DeleteSubmitted { sd, host, .. } => {
                // Progress shows only once a wipe reports its size.
                let d = self.bar(0, "{prefix:>9} {msg}");
                d.set_prefix("delete");
                d.set_message(format!(
                    "{} on {}",
                    short(sd),
                    host.trim_start_matches("http://")
                ));
                if let Some(old) = st.delete.replace(d) {
                    old.finish_and_clear();
                }
            }
            Event::DeleteProgress {
                bytes_done,
                bytes_total,
                ..
            } => {
                if let (Some(d), true) = (&st.delete, *bytes_total > 0) {
                    if d.length() == Some(0) {
                        d.set_style(
                            ProgressStyle::with_template(VOL_TEMPLATE)
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                    }
                    d.set_length(*bytes_total);
                    d.set_position(*bytes_done);
                }
            }
            Event::DeleteEnded {
                sd, done, error, ..
            } => {
                if let Some(d) = &st.delete {
                    d.set_message(if *done {
                        "deleted".to_string()
                    } else {
                        "not deleted".to_string()
                    });
                }
                if !done {
                    self.say(format!(
                        "deletion from {} failed: {}",
                        short(sd),
                        error.clone().unwrap_or_default()
                    ));
                }
            }
            Event::Finished { .. } => {}
        }
    }
}

/// `sdmctl jobs watch [JOB...]` over every agent: the given jobs, or every active one.
pub async fn watch(agents: &[String], json: bool, ids: Vec<Uuid>) -> anyhow::Result<bool> {
    let pool = pool(agents)?;
    let mut targets: Vec<(sdm_client::AgentClient, JobInfo)> = Vec::new();
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
    let _ = ui.mp.clear();
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
