//! The command line: every clap type of `sdmctl`, and the parsers that turn argument strings
//! into wire values (ids, `SD/IMG/VOL` endpoints, sizes).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sdm_proto::{Endpoint, Generation, Uuid};

#[derive(Parser, Debug)]
#[command(name = "sdmctl", version, about = "Control sdm storage agents")]
pub struct Cli {
    /// Agent URL (repeat for commands that use several agents).
    #[arg(long = "agent", global = true, env = "SDM_AGENT")]
    pub agents: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Call the (first) agent over STOMP, VDSM's transport, on the same port (`stomp://` for
    /// an `http://` agent, `stomps://` with mutual TLS for `https://`). An agent URL may also
    /// say `stomp://HOST:PORT` or `stomps://HOST:PORT` itself. Jobs are then followed by
    /// polling over STOMP; commands over several agents stay on HTTP.
    #[arg(long, global = true, env = "SDM_STOMP")]
    pub stomp: bool,
    /// CA certificate that signed the agents' certificates (mutual TLS, `https://` agents).
    #[arg(long, global = true, env = "SDM_CA")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (signed by the agents' CA).
    #[arg(long, global = true, env = "SDM_CERT")]
    pub cert: Option<PathBuf>,
    /// This client's private key.
    #[arg(long, global = true, env = "SDM_KEY")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Make a development CA, an agent certificate and a client certificate (not for production).
    Dev {
        /// Directory to write ca.pem, agent.pem, agent-key.pem, client.pem, client-key.pem.
        #[arg(long, default_value = "./sdm-certs")]
        dir: PathBuf,
        /// Names and addresses the agent certificate is valid for (repeatable).
        #[arg(long = "host", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Common name of the client certificate.
        #[arg(long, default_value = "sdm-engine")]
        client: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
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
    Disk(DiskCmd),
    /// Finish or roll back the disk operations an interrupted sdmctl left in the journal.
    Resume(ResumeArgs),
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Version, host id, io backend, lease backends, LV activation mode, domains.
    Caps,
    /// Load figures.
    Stats,
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Attached domains.
    List,
    /// Format a new file domain at PATH/<SD_ID>, or with --device a block domain (an LVM VG
    /// named SD_ID on the devices), and attach it.
    Create {
        /// Directory that will hold the domain directory (file domains).
        #[arg(required_unless_present = "device")]
        path: Option<String>,
        /// Domain id (default: a new one).
        #[arg(long)]
        sd_id: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Lease backend to format it for: local or sanlock (default: the agent's).
        #[arg(long)]
        lease_backend: Option<String>,
        /// Allow local leases on a network file system.
        #[arg(long)]
        force: bool,
        /// A block device of a new block domain (repeat for more; the agent's `[block]
        /// devices` must allow each).
        #[arg(long, conflicts_with = "path")]
        device: Vec<String>,
    },
    /// Attach the existing domain directory PATH (.../<sd_id>), or with --block the block
    /// domain whose id is PATH, with the lease backend it was formatted for.
    Attach {
        path: String,
        /// PATH is the id of a block domain, found on the agent's block devices.
        #[arg(long)]
        block: bool,
        /// Refuse unless the domain uses this lease backend: local or sanlock.
        #[arg(long)]
        lease_backend: Option<String>,
        /// Allow a local domain on a network file system.
        #[arg(long)]
        force: bool,
    },
    /// Detach a domain.
    Detach { sd_id: String },
    /// Images of a domain.
    Images { sd_id: String },
    /// A domain as VDSM describes it (StorageDomain.getInfo).
    Info { sd_id: String },
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
pub enum ImageCmd {
    /// Volumes of an image.
    Volumes { sd_id: String, img_id: String },
    /// Legality, generation and copy progress of an image's volumes, from storage alone
    /// (Image.getStatus): how far a copy got even when its host is gone.
    Status { sd_id: String, img_id: String },
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
pub enum VolumeCmd {
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
pub enum JobsCmd {
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
pub struct WaitArgs {
    /// Return as soon as the job is submitted.
    #[arg(long)]
    pub no_wait: bool,
    /// Job id to use (default: a new one).
    #[arg(long)]
    pub job_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Source as SD/IMG/VOL.
    #[arg(long)]
    pub src: String,
    /// Destination as SD/IMG/VOL.
    #[arg(long)]
    pub dst: String,
    /// Expected destination generation.
    #[arg(long)]
    pub generation: Option<u16>,
    /// Read back and compare.
    #[arg(long)]
    pub verify: bool,
    /// Bandwidth limit, bytes per second (suffixes K, M, G).
    #[arg(long)]
    pub bandwidth: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Volume as SD/IMG/VOL.
    pub volume: String,
    /// Current generation (must match).
    #[arg(long)]
    pub generation: u16,
    /// LEGAL or ILLEGAL.
    #[arg(long)]
    pub legality: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// New generation.
    #[arg(long)]
    pub new_generation: Option<u16>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

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
    pub from: String,
    /// Destination domain.
    #[arg(long)]
    pub to: String,
    /// Skip the checksum comparison of source and destination.
    #[arg(long)]
    pub no_verify: bool,
    /// Volumes copied at once (default: one per agent that sees both domains).
    #[arg(long, default_value_t = 0)]
    pub parallelism: usize,
    /// Bandwidth limit per copy, bytes per second (suffixes K, M, G).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// Attempts per volume before the operation is rolled back.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    #[command(flatten)]
    pub j: JournalArgs,
}

/// Where the engine journal lives, and how this engine holds operations in a shared one.
#[derive(Args, Debug, Clone)]
pub struct JournalArgs {
    /// Journal: a file (`PATH` or `file:PATH`) or a shared PostgreSQL journal
    /// (`postgres://USER:PASSWORD@HOST:PORT/DB`, plain TCP). Default: $SDM_JOURNAL, else
    /// $XDG_STATE_HOME/sdm/sdmctl.journal, else ~/.local/state/sdm/sdmctl.journal.
    #[arg(long, env = "SDM_JOURNAL")]
    pub journal: Option<String>,
    /// Shared journal: seconds an operation stays this engine's without renewal.
    #[arg(long, env = "SDM_JOURNAL_LEASE", default_value_t = 10.0)]
    pub journal_lease: f64,
    /// Shared journal: seconds between renewals (at most half the lease).
    #[arg(long, env = "SDM_JOURNAL_RENEW", default_value_t = 3.0)]
    pub journal_renew: f64,
    /// Shared journal: this engine's id, recorded as the owner of its operations (default:
    /// host name, pid and a random suffix). Never give two live processes the same id.
    #[arg(long, env = "SDM_ENGINE_ID")]
    pub engine_id: Option<String>,
}

impl JournalArgs {
    /// The journal URL (or path) to open.
    pub fn url(&self) -> String {
        if let Some(u) = &self.journal {
            return u.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("sdm")
            .join("sdmctl.journal")
            .display()
            .to_string()
    }

    /// The shared journal's settings.
    pub fn options(&self) -> anyhow::Result<sdm_client::journal::JournalOptions> {
        let secs = |v: f64, what: &str| {
            std::time::Duration::try_from_secs_f64(v)
                .map_err(|_| anyhow::anyhow!("{what}: {v} is not a duration in seconds"))
        };
        Ok(sdm_client::journal::JournalOptions {
            owner: self.engine_id.clone(),
            lease: secs(self.journal_lease, "--journal-lease")?,
            renew_every: secs(self.journal_renew, "--journal-renew")?,
            ..Default::default()
        })
    }
}

/// `sdmctl resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// Only list the unfinished operations (with their owners in a shared journal).
    #[arg(long, conflicts_with = "watch")]
    pub list: bool,
    /// Run as a takeover daemon: every --interval, take up the operations whose owner's lease
    /// expired and drive them to their end; stops on SIGTERM or SIGINT.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between looks for operations to take up (--watch).
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Operations driven at once (--watch).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Only forget operations that ended more than DAYS ago (a shared journal keeps them for
    /// audit until then; unfinished ones are never touched). Fractions allowed.
    #[arg(long, value_name = "DAYS", conflicts_with_all = ["list", "watch"])]
    pub prune: Option<f64>,
    #[command(flatten)]
    pub j: JournalArgs,
}

/// An id argument; `what` names it in the error.
pub fn uuid(s: &str, what: &str) -> anyhow::Result<Uuid> {
    Uuid::parse(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// An optional id argument, or a new id.
pub fn uuid_or_new(s: &Option<String>, what: &str) -> anyhow::Result<Uuid> {
    s.as_deref()
        .map(|s| uuid(s, what))
        .transpose()
        .map(|u| u.unwrap_or_else(Uuid::new_v4))
}

/// A size argument: plain bytes or a binary unit (`10G`, `512M`, `4K`, `1T`).
pub fn size(s: &str) -> anyhow::Result<u64> {
    sdm_proto::parse_human_size(s).map_err(anyhow::Error::msg)
}

/// A volume given as `SD/IMG/VOL`, with the generation it must have.
pub fn div(s: &str, generation: Option<u16>) -> anyhow::Result<Endpoint> {
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
