//! `sdmctl`: the operator's command line for sdm agents.
//!
//! Human output by default, `--json` for scripts. A failing command exits non-zero and prints
//! the agent's error name, code and message. Commands that start a job follow it with a
//! progress bar unless `--no-wait` is given. `hosts`, `disk`, `resume` and `jobs watch` use
//! every `--agent` given (see `fleet`).
//!
//! Exit codes: 0 success; 1 the agent refused or the operation failed or was rolled back;
//! 2 usage; 3 an agent could not be reached (or no agent could do the work); 4 the operation is
//! pending in the journal (`sdmctl resume` finishes it).

#[path = "sdmctl/fleet.rs"]
mod fleet;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sdm_client::{job_outcome, AgentClient, Error, SdmApiClient, Via, DEFAULT_AGENT};
use sdm_proto::*;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(name = "sdmctl", version, about = "Control sdm storage agents")]
struct Cli {
    /// Agent URL (repeat for commands that use several agents).
    #[arg(long = "agent", global = true, env = "SDM_AGENT")]
    agents: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// CA certificate that signed the agents' certificates (mutual TLS, `https://` agents).
    #[arg(long, global = true, env = "SDM_CA")]
    ca: Option<std::path::PathBuf>,
    /// This client's certificate (signed by the agents' CA).
    #[arg(long, global = true, env = "SDM_CERT")]
    cert: Option<std::path::PathBuf>,
    /// This client's private key.
    #[arg(long, global = true, env = "SDM_KEY")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// TLS settings from the global options, shared with the multi-agent commands.
static TLS: std::sync::OnceLock<Option<std::sync::Arc<rustls::ClientConfig>>> =
    std::sync::OnceLock::new();

/// Client options with the global TLS settings.
fn client_options() -> sdm_client::ClientOptions {
    sdm_client::ClientOptions {
        tls: TLS.get().cloned().flatten(),
        ..Default::default()
    }
}

fn tls_from(cli: &Cli) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    match (&cli.ca, &cli.cert, &cli.key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => {
            let files = sdm_client::tls::TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            Ok(Some(std::sync::Arc::new(sdm_client::tls::client_config(
                &files,
            )?)))
        }
        _ => anyhow::bail!("mutual TLS needs all of --ca, --cert and --key"),
    }
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Make a development CA, an agent certificate and a client certificate (not for production).
    Dev {
        /// Directory to write ca.pem, agent.pem, agent-key.pem, client.pem, client-key.pem.
        #[arg(long, default_value = "./sdm-certs")]
        dir: std::path::PathBuf,
        /// Names and addresses the agent certificate is valid for (repeatable).
        #[arg(long = "host", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Common name of the client certificate.
        #[arg(long, default_value = "sdm-engine")]
        client: String,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Certificates for mutual TLS.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Host information.
    #[command(subcommand)]
    Host(HostCmd),
    /// Storage domains.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Host jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Copy one volume's data into another (SDM.copy_data).
    Copy(CopyArgs),
    /// Change a volume's legality, description or generation (SDM.update_volume).
    UpdateVolume(UpdateArgs),
    /// Every agent's health, load and domains.
    Hosts,
    /// Disk operations spread over every agent, recorded in the engine journal.
    #[command(subcommand)]
    Disk(fleet::DiskCmd),
    /// Finish or roll back the disk operations an interrupted sdmctl left in the journal.
    Resume(fleet::ResumeArgs),
}

#[derive(Subcommand, Debug)]
enum HostCmd {
    /// Version, host id, io backend, lease backends, domains.
    Caps,
    /// Load figures.
    Stats,
}

#[derive(Subcommand, Debug)]
enum DomainCmd {
    /// Attached domains.
    List,
    /// Format a new file domain at PATH/<SD_ID> and attach it.
    Create {
        /// Directory that will hold the domain directory.
        path: String,
        /// Domain id (default: a new one).
        #[arg(long)]
        sd_id: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Attach the existing domain directory PATH (.../<sd_id>).
    Attach { path: String },
    /// Detach a domain.
    Detach { sd_id: String },
    /// Images of a domain.
    Images { sd_id: String },
    /// Leftovers and inconsistencies.
    Check { sd_id: String },
    /// Repair one finding of `domain check` (pass it as JSON, e.g. from `domain check --json`).
    Fix {
        sd_id: String,
        /// The Fix object as JSON.
        fix: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Volumes of an image.
    Volumes { sd_id: String, img_id: String },
    /// Copy every volume of an image to another domain (Image.move, copy mode).
    Move {
        img_id: String,
        /// Source domain.
        #[arg(long)]
        from: String,
        /// Destination domain.
        #[arg(long)]
        to: String,
        /// Replace an existing destination image.
        #[arg(long)]
        force: bool,
        /// Wipe a replaced destination image.
        #[arg(long)]
        post_zero: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete an image, optionally wiping its data first.
    Delete {
        sd_id: String,
        img_id: String,
        /// Overwrite every byte with zeros before removal.
        #[arg(long)]
        wipe: bool,
        /// Release the space afterwards (best effort).
        #[arg(long)]
        discard: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a volume.
    Create {
        sd_id: String,
        img_id: String,
        /// Volume id (default: a new one).
        #[arg(long)]
        vol_id: Option<String>,
        /// Capacity, e.g. 10G, 512M, 1073741824.
        #[arg(long)]
        size: String,
        /// raw or cow.
        #[arg(long, default_value = "raw")]
        format: String,
        /// Allocate all space now.
        #[arg(long)]
        preallocated: bool,
        /// Parent volume (COW only).
        #[arg(long)]
        parent: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Volume metadata, sizes and lease.
    Info {
        sd_id: String,
        img_id: String,
        vol_id: String,
    },
    /// SHA-256 of the volume's bytes.
    Checksum {
        sd_id: String,
        img_id: String,
        vol_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand, Debug)]
enum JobsCmd {
    /// All jobs (or those given).
    List { ids: Vec<String> },
    /// Follow jobs to their end with progress bars: the given ones (looked up on every
    /// agent), or every active job of every agent.
    Watch { job_ids: Vec<String> },
    /// Abort a job.
    Abort { job_id: String },
    /// Delete a finished job.
    Delete { job_id: String },
}

#[derive(Args, Debug, Clone)]
struct WaitArgs {
    /// Return as soon as the job is submitted.
    #[arg(long)]
    no_wait: bool,
    /// Job id to use (default: a new one).
    #[arg(long)]
    job_id: Option<String>,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// Source as SD/IMG/VOL.
    #[arg(long)]
    src: String,
    /// Destination as SD/IMG/VOL.
    #[arg(long)]
    dst: String,
    /// Expected destination generation.
    #[arg(long)]
    generation: Option<u16>,
    /// Read back and compare.
    #[arg(long)]
    verify: bool,
    /// Bandwidth limit, bytes per second (suffixes K, M, G).
    #[arg(long)]
    bandwidth: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Args, Debug)]
struct UpdateArgs {
    /// Volume as SD/IMG/VOL.
    volume: String,
    /// Current generation (must match).
    #[arg(long)]
    generation: u16,
    /// LEGAL or ILLEGAL.
    #[arg(long)]
    legality: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// New generation.
    #[arg(long)]
    new_generation: Option<u16>,
    #[command(flatten)]
    wait: WaitArgs,
}

fn main() -> ExitCode {
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
        Err(e) => match e.downcast_ref::<Error>() {
            Some(Error::NoHost(_)) => {
                eprintln!("error: {e:#}");
                ExitCode::from(3)
            }
            Some(Error::Api(api)) => {
                eprintln!(
                    "error: {} ({}): {}",
                    api.code.name(),
                    api.code.code(),
                    api.message
                );
                ExitCode::from(1)
            }
            Some(Error::Transport { .. }) => {
                eprintln!("error: {e:#}");
                ExitCode::from(3)
            }
            _ => match e.downcast_ref::<Exit>() {
                // The report already said why.
                Some(Exit(code)) => ExitCode::from(*code),
                None => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            },
        },
    }
}

/// A command that reported its own failure and only needs its exit code.
#[derive(Debug)]
struct Exit(u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn outcome_exit(o: sdm_client::Outcome) -> anyhow::Result<()> {
    match o {
        sdm_client::Outcome::Committed => Ok(()),
        sdm_client::Outcome::Pending => Err(Exit(4).into()),
        sdm_client::Outcome::RolledBack | sdm_client::Outcome::Failed => Err(Exit(1).into()),
    }
}

fn uuid(s: &str, what: &str) -> anyhow::Result<Uuid> {
    Uuid::parse(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn uuid_or_new(s: &Option<String>, what: &str) -> anyhow::Result<Uuid> {
    s.as_deref()
        .map(|s| uuid(s, what))
        .transpose()
        .map(|u| u.unwrap_or_else(Uuid::new_v4))
}

/// Parses `10G`, `512M`, `4K`, `1T` or plain bytes (binary units).
fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => anyhow::bail!("unknown size unit in {s:?}"),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

fn div(s: &str, generation: Option<u16>) -> anyhow::Result<Endpoint> {
    let parts: Vec<&str> = s.split('/').collect();
    anyhow::ensure!(parts.len() == 3, "{s:?}: expected SD/IMG/VOL");
    let generation = generation
        .map(|g| Generation::new(g as u64))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(Endpoint::div(
        uuid(parts[0], "sd")?,
        uuid(parts[1], "img")?,
        uuid(parts[2], "vol")?,
        generation,
    ))
}

fn human_bytes(b: u64) -> String {
    indicatif::BinaryBytes(b).to_string()
}

fn print<T: Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human(v);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli
        .agents
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_AGENT.to_string());
    let _ = TLS.set(tls_from(&cli)?);
    let client = AgentClient::with_options(&url, client_options())?;
    let c = &client;
    let json = cli.json;
    let agents = if cli.agents.is_empty() {
        vec![DEFAULT_AGENT.to_string()]
    } else {
        cli.agents.clone()
    };
    match cli.cmd {
        Cmd::Certs(CertsCmd::Dev { dir, hosts, client }) => {
            let made = sdm_client::certs::dev_certs(&dir, &hosts, &client)?;
            print(json, &made, |m| {
                println!("CA:     {}", m.ca.display());
                println!(
                    "agent:  {} {}",
                    m.agent_cert.display(),
                    m.agent_key.display()
                );
                println!(
                    "client: {} {}",
                    m.client_cert.display(),
                    m.client_key.display()
                );
                println!(
                    "agent.toml:\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}",
                    m.ca, m.agent_cert, m.agent_key
                );
                println!(
                    "sdmctl --ca {} --cert {} --key {} --agent https://HOST:54321 ...",
                    m.ca.display(),
                    m.client_cert.display(),
                    m.client_key.display()
                );
            })?;
        }
        Cmd::Hosts => fleet::hosts(&agents, json).await?,
        Cmd::Disk(d) => outcome_exit(fleet::disk(&agents, json, d).await?)?,
        Cmd::Resume(r) => outcome_exit(fleet::resume(&agents, json, r).await?)?,
        Cmd::Jobs(JobsCmd::Watch { job_ids }) => {
            let ids = job_ids
                .iter()
                .map(|i| uuid(i, "job id"))
                .collect::<Result<Vec<_>, _>>()?;
            if !fleet::watch(&agents, json, ids).await? {
                return Err(Exit(1).into());
            }
        }
        Cmd::Host(HostCmd::Caps) => {
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
        Cmd::Host(HostCmd::Stats) => {
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
        Cmd::Domain(d) => domain(c, json, d).await?,
        Cmd::Image(i) => image(c, json, i).await?,
        Cmd::Volume(v) => volume(c, json, v).await?,
        Cmd::Jobs(j) => jobs(c, json, j).await?,
        Cmd::Copy(a) => {
            let job_id = uuid_or_new(&a.wait.job_id, "job id")?;
            let src = div(&a.src, None)?;
            let dst = div(&a.dst, a.generation)?;
            let bw = a
                .bandwidth
                .as_deref()
                .map(parse_bytes)
                .transpose()?
                .map(Size);
            let verify = Some(Flag(a.verify));
            c.submit(&job_id, |h| {
                let (s, d, j) = (src.clone(), dst.clone(), job_id.clone());
                async move { h.copy_data(j, s, d, None, verify, bw).await }
            })
            .await?;
            follow(c, json, &job_id, &a.wait).await?;
        }
        Cmd::UpdateVolume(a) => {
            let job_id = uuid_or_new(&a.wait.job_id, "job id")?;
            let e = div(&a.volume, Some(a.generation))?;
            let vol = VolumeRef {
                sd_id: e.sd_id,
                img_id: e.img_id,
                vol_id: e.vol_id,
                generation: e.generation,
            };
            let attrs = VolumeAttributes {
                legality: a
                    .legality
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                description: a
                    .description
                    .as_deref()
                    .map(Description::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                generation: a
                    .new_generation
                    .map(|g| Generation::new(g as u64))
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                role: None,
            };
            c.submit(&job_id, |h| {
                let (v, at, j) = (vol.clone(), attrs.clone(), job_id.clone());
                async move { h.update_volume(j, v, at).await }
            })
            .await?;
            follow(c, json, &job_id, &a.wait).await?;
        }
    }
    Ok(())
}

async fn domain(c: &AgentClient, json: bool, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::List => {
            let list = c.api().list_domains().await.via(c)?;
            print(json, &list, |l| {
                println!(
                    "{:<36}  {:<8}  {:>10}  {:>10}  PATH",
                    "SD_ID", "LEASES", "SIZE", "FREE"
                );
                for d in l {
                    println!(
                        "{:<36}  {:<8}  {:>10}  {:>10}  {}",
                        d.sd_id,
                        d.lease_backend,
                        human_bytes(d.capacity.0),
                        human_bytes(d.free.0),
                        d.path
                    );
                }
            })?;
        }
        DomainCmd::Create {
            path,
            sd_id,
            description,
        } => {
            let sd = uuid_or_new(&sd_id, "sd id")?;
            let desc = Description::parse(&description).map_err(anyhow::Error::msg)?;
            c.api()
                .create_domain(sd.clone(), path.clone(), Some(desc))
                .await
                .via(c)?;
            print(json, &serde_json::json!({"sd_id": sd}), |_| {
                println!("{sd}")
            })?;
        }
        DomainCmd::Attach { path } => {
            let r = c.api().attach_domain(path).await.via(c)?;
            print(json, &r, |r| println!("{}", r.sd_id))?;
        }
        DomainCmd::Detach { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            c.api().detach_domain(sd).await.via(c)?;
            print(json, &true, |_| println!("detached"))?;
        }
        DomainCmd::Images { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            let l = c.api().get_images(sd).await.via(c)?;
            print(json, &l, |l| l.iter().for_each(|i| println!("{i}")))?;
        }
        DomainCmd::Check { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            let l = c.api().check_domain(sd).await.via(c)?;
            print(json, &l, |l| {
                if l.is_empty() {
                    println!("nothing to fix");
                }
                for f in l {
                    println!(
                        "[{}] {}\n    fix: sdmctl domain fix {sd_id} '{}'",
                        f.fix_type,
                        f.description,
                        f.data_json()
                    );
                }
            })?;
        }
        DomainCmd::Fix { sd_id, fix, wait } => {
            let sd = uuid(&sd_id, "sd id")?;
            let f: Fix = serde_json::from_str(&fix)
                .or_else(|_| {
                    // Accept the bare `data` object that `domain check` prints.
                    serde_json::from_str::<serde_json::Value>(&fix).map(|data| Fix {
                        fix_type: FixType::Clean,
                        description: String::new(),
                        data,
                    })
                })
                .context("fix must be JSON")?;
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            let r = c.api().fix_domain(sd, f, Some(job_id)).await.via(c)?;
            follow(c, json, &r.uuid, &wait).await?;
        }
    }
    Ok(())
}

trait FixJson {
    fn data_json(&self) -> String;
}

impl FixJson for Fix {
    fn data_json(&self) -> String {
        serde_json::to_string(&self.data).unwrap_or_default()
    }
}

async fn image(c: &AgentClient, json: bool, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Volumes { sd_id, img_id } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let l = c.api().get_volumes(sd, img).await.via(c)?;
            print(json, &l, |l| l.iter().for_each(|v| println!("{v}")))?;
        }
        ImageCmd::Move {
            img_id,
            from,
            to,
            force,
            post_zero,
            wait,
        } => {
            let (img, src, dst) = (
                uuid(&img_id, "image id")?,
                uuid(&from, "source sd")?,
                uuid(&to, "destination sd")?,
            );
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            let r = c
                .api()
                .move_image(
                    img,
                    src,
                    dst,
                    ImageOperation::Copy,
                    Some(Flag(post_zero)),
                    Some(Flag(force)),
                    None,
                    Some(job_id),
                )
                .await
                .via(c)?;
            follow(c, json, &r.uuid, &wait).await?;
        }
        ImageCmd::Delete {
            sd_id,
            img_id,
            wipe,
            discard,
            wait,
        } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            let r = c
                .api()
                .delete_image(
                    img,
                    sd,
                    Some(Flag(wipe)),
                    None,
                    Some(Flag(discard)),
                    Some(job_id),
                )
                .await
                .via(c)?;
            follow(c, json, &r.uuid, &wait).await?;
        }
    }
    Ok(())
}

async fn volume(c: &AgentClient, json: bool, cmd: VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create {
            sd_id,
            img_id,
            vol_id,
            size,
            format,
            preallocated,
            parent,
            description,
        } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let vol = uuid_or_new(&vol_id, "volume id")?;
            let cap = parse_bytes(&size)?;
            anyhow::ensure!(cap > 0, "size must be greater than 0");
            let format: VolumeFormat = format
                .to_ascii_uppercase()
                .parse()
                .map_err(anyhow::Error::msg)?;
            let parent = parent.as_deref().map(|p| uuid(p, "parent")).transpose()?;
            let prealloc = if preallocated {
                Preallocation::Preallocated
            } else {
                Preallocation::Sparse
            };
            let desc = Description::parse(&description).map_err(anyhow::Error::msg)?;
            c.api()
                .create_volume(
                    sd,
                    img,
                    vol.clone(),
                    Capacity(Size(cap)),
                    format,
                    prealloc,
                    parent,
                    Some(desc),
                )
                .await
                .via(c)?;
            print(json, &serde_json::json!({"vol_id": vol}), |_| {
                println!("{vol}")
            })?;
        }
        VolumeCmd::Info {
            sd_id,
            img_id,
            vol_id,
        } => {
            let (sd, img, vol) = (
                uuid(&sd_id, "sd id")?,
                uuid(&img_id, "image id")?,
                uuid(&vol_id, "volume id")?,
            );
            let i = c.api().get_volume_info(sd, img, vol).await.via(c)?;
            print(json, &i, |i| {
                println!("volume:      {}", i.uuid);
                println!("image:       {}", i.image);
                println!("domain:      {}", i.domain);
                println!("format:      {} {} {}", i.format, i.allocation, i.voltype);
                println!(
                    "capacity:    {} ({} bytes)",
                    human_bytes(i.capacity.0),
                    i.capacity
                );
                println!(
                    "size:        {} apparent, {} allocated",
                    human_bytes(i.apparentsize.0),
                    human_bytes(i.truesize.0)
                );
                println!("parent:      {}", i.parent);
                println!("legality:    {} (generation {})", i.legality, i.generation);
                println!("description: {}", i.description);
                let owners = if i.lease.owners.is_empty() {
                    "free".to_string()
                } else {
                    format!("held by host {:?}", i.lease.owners)
                };
                println!(
                    "lease:       {owners} ({}:{})",
                    i.lease.path, i.lease.offset
                );
            })?;
        }
        VolumeCmd::Checksum {
            sd_id,
            img_id,
            vol_id,
            wait,
        } => {
            let (sd, img, vol) = (
                uuid(&sd_id, "sd id")?,
                uuid(&img_id, "image id")?,
                uuid(&vol_id, "volume id")?,
            );
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            c.submit(&job_id, |h| {
                let (j, s, i, v) = (job_id.clone(), sd.clone(), img.clone(), vol.clone());
                async move {
                    h.checksum_volume(j, s, i, v, Some(ChecksumAlgorithm::Sha256))
                        .await
                }
            })
            .await?;
            follow(c, json, &job_id, &wait).await?;
        }
    }
    Ok(())
}

async fn jobs(c: &AgentClient, json: bool, cmd: JobsCmd) -> anyhow::Result<()> {
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
        JobsCmd::Watch { .. } => unreachable!("handled with every agent in run()"),
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

/// Follows a job with a progress bar (or prints its id with `--no-wait`), and fails when the
/// job fails.
async fn follow(c: &AgentClient, json: bool, job_id: &Uuid, wait: &WaitArgs) -> anyhow::Result<()> {
    if wait.no_wait {
        return print(json, &serde_json::json!({"job_id": job_id}), |_| {
            println!("{job_id}")
        });
    }
    let show = !json && std::io::stderr().is_terminal();
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:<12} [{bar:32}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let info = c
        .wait_job(job_id, |i| {
            bar.set_message(i.description.clone());
            if i.bytes_total > 0 {
                bar.set_length(i.bytes_total);
                bar.set_position(i.bytes_done.min(i.bytes_total));
            }
        })
        .await?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let rate = if secs > 0.0 {
            info.bytes_total as f64 / secs
        } else {
            0.0
        };
        let mut line = format!(
            "job {} {} {} in {secs:.1}s",
            info.id, info.description, info.status
        );
        if info.bytes_total > 0 {
            line.push_str(&format!(
                ", {} at {}/s",
                human_bytes(info.bytes_total),
                human_bytes(rate as u64)
            ));
        }
        println!("{line}");
        if let Some(r) = &info.result {
            println!("{}  ({:?})", r.checksum, r.algorithm);
        }
    }
    job_outcome(&info).map_err(|e| Error::Api(e).into())
}
