//! Agent configuration: the embedded default, the TOML file, and command-line overrides.
//!
//! Without `--config` the agent runs on an embedded default meant for trying it out: loopback,
//! state under `./var/sdm`, host id 1, local leases, and two local file domains created on first
//! start. A packaged agent reads `/etc/sdm/agent.toml` (see `packaging/agent.toml`, which
//! documents every key). A bad file is refused at start naming the file, the key and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:54321";
/// Default state directory of the embedded configuration.
pub const DEFAULT_STATE_DIR: &str = "./var/sdm";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// What TOML said (it names the key and line).
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("config {file}: key `{key}`: {why}")]
    Invalid {
        /// The file, or "command line".
        file: String,
        /// The key.
        key: &'static str,
        /// Why.
        why: String,
    },
}

/// Lease backend names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseBackendKind {
    /// OFD locks on `<vol>.lease`; single-host domains.
    #[default]
    Local,
    /// sanlock paxos leases; shared storage.
    Sanlock,
}

impl From<sdm_proto::LeaseBackendName> for LeaseBackendKind {
    fn from(n: sdm_proto::LeaseBackendName) -> LeaseBackendKind {
        match n {
            sdm_proto::LeaseBackendName::Local => LeaseBackendKind::Local,
            sdm_proto::LeaseBackendName::Sanlock => LeaseBackendKind::Sanlock,
        }
    }
}

impl LeaseBackendKind {
    /// Config/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseBackendKind::Local => "local",
            LeaseBackendKind::Sanlock => "sanlock",
        }
    }
}

/// A domain attached at start.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// The domain directory (`.../<sd_id>`).
    pub path: PathBuf,
    /// Expected lease backend of its volumes: the attach is refused when the domain was
    /// formatted for the other one. Default: the one the domain records.
    #[serde(default)]
    pub lease_backend: Option<LeaseBackendKind>,
    /// Attach a `local` domain even on a network file system (refused otherwise: OFD locks do
    /// not reach other hosts).
    #[serde(default)]
    pub force: bool,
    /// "file" (default) or "block"; a block domain's path is `/dev/<sd_id>`.
    #[serde(default)]
    pub kind: Option<sdm_proto::DomainKindName>,
}

/// `[block]`: block (LVM) domains.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    /// Devices that block domains may use and `StorageDomain.create` may format: absolute
    /// paths, or paths whose last component holds `*`/`?` wildcards (`/dev/mapper/3600*`).
    /// Empty (the default): no block domains. LVM only ever sees these devices.
    pub devices: Vec<String>,
    /// "auto" (device-mapper where `/dev/mapper/control` works, else loop-mapped),
    /// "device-mapper" or "loop-mapped".
    pub activation: String,
    /// Where activations are recorded, so mappings left by a killed agent are undone at the
    /// next start (default: `<state_dir>/activation`). One directory per agent.
    pub state_dir: Option<PathBuf>,
    /// How long an LVM metadata change waits for the domain's metadata-writer lease, seconds;
    /// more than sanlock's host-dead time (8 × io_timeout + 60), so that a dead holder's lease
    /// is taken over rather than reported busy.
    pub metadata_lease_timeout_s: u64,
    /// Deadline of every LVM command, seconds.
    pub lvm_timeout_s: u64,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            devices: Vec::new(),
            activation: "auto".into(),
            state_dir: None,
            metadata_lease_timeout_s: 180,
            lvm_timeout_s: 60,
        }
    }
}

/// TLS files (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) that sign client certificates (PEM).
    pub ca: PathBuf,
    /// This agent's certificate chain (PEM).
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
}

/// `[leases]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// Backend for domains that do not name one.
    pub default_backend: LeaseBackendKind,
    /// sanlock io_timeout for lockspaces this agent formats (seconds; oVirt uses 10).
    pub sanlock_io_timeout_s: u32,
    /// Run directory of the sanlock daemon (its socket); default: sanlock's own.
    pub sanlock_run_dir: Option<PathBuf>,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig {
            default_backend: LeaseBackendKind::Local,
            sanlock_io_timeout_s: 10,
            sanlock_run_dir: None,
        }
    }
}

/// `[io]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoConfig {
    /// "auto" (probe io_uring), "io_uring" or "sync".
    pub backend: String,
    /// Requests in flight per operation (0: the engine's measured default).
    pub queue_depth: u32,
    /// Bytes per request (0: the engine's measured default).
    pub chunk_size: usize,
    /// `queue_depth` of copies onto or off a block device (0: the engine's default).
    pub block_queue_depth: u32,
    /// `chunk_size` of copies onto or off a block device (0: the engine's default).
    pub block_chunk_size: usize,
    /// Jobs that run at once; more wait as pending.
    pub max_running_jobs: usize,
    /// Default bandwidth limit per job, bytes per second (0: none).
    pub bandwidth_limit: u64,
    /// Volumes of one image copied at once by `Image.move` / wiped by `Image.delete`.
    pub image_parallelism: usize,
    /// A copy checkpoints at most this many milliseconds apart (`ops::resume`)...
    pub checkpoint_interval_ms: u64,
    /// ...or after this many bytes, whichever comes first.
    pub checkpoint_bytes: u64,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            backend: "auto".into(),
            queue_depth: 0,
            chunk_size: 0,
            block_queue_depth: 0,
            block_chunk_size: 0,
            max_running_jobs: 8,
            bandwidth_limit: 0,
            image_parallelism: 2,
            checkpoint_interval_ms: 5000,
            checkpoint_bytes: 4 << 30,
        }
    }
}

/// `[jobs]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Seconds after which finished jobs are deleted; negative: never.
    pub autodelete_delay_s: i64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            autodelete_delay_s: 3600,
        }
    }
}

/// `[server]`: limits that keep one client from exhausting the agent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest request body, bytes.
    pub max_request_body_bytes: u32,
    /// Largest response body, bytes.
    pub max_response_body_bytes: u32,
    /// Open connections at once.
    pub max_connections: u32,
    /// Subscriptions per WebSocket connection.
    pub max_subscriptions_per_connection: u32,
    /// Calls in one batch request.
    pub max_batch_len: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 16 << 20,
            max_connections: 256,
            max_subscriptions_per_connection: 64,
            max_batch_len: 16,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// State directory (attached-domain list; embedded domains).
    pub state_dir: PathBuf,
    /// Host id in sanlock lockspaces, 1–2000.
    pub host_id: u64,
    /// Create and attach two local domains on first start, each under a root of its own
    /// (`<state_dir>/domains/1` and `…/2`).
    pub create_default_domains: bool,
    /// Directories under which `StorageDomain.create` may format new domains (besides
    /// `<state_dir>/domains`). Creation anywhere else is refused, so a client cannot make the
    /// agent write outside the storage it was given.
    pub domain_roots: Vec<PathBuf>,
    /// Mutual TLS; required on a non-loopback listener.
    pub tls: Option<TlsConfig>,
    /// Domains attached at start (besides those attached earlier through the API).
    pub domains: Vec<DomainConfig>,
    /// Lease settings.
    pub leases: LeasesConfig,
    /// Data-path settings.
    pub io: IoConfig,
    /// Job settings.
    pub jobs: JobsConfig,
    /// Server limits.
    pub server: ServerConfig,
    /// Block (LVM) domains.
    pub block: BlockConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default address parses"),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            host_id: 1,
            create_default_domains: true,
            domain_roots: Vec::new(),
            tls: None,
            domains: Vec::new(),
            leases: LeasesConfig::default(),
            io: IoConfig::default(),
            jobs: JobsConfig::default(),
            server: ServerConfig::default(),
            block: BlockConfig::default(),
        }
    }
}

/// Command-line overrides.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--host-id`.
    pub host_id: Option<u64>,
}

impl Config {
    /// Loads `file` (or the embedded default), applies overrides and validates.
    pub fn load(file: Option<&Path>, over: &Overrides) -> Result<Config, ConfigError> {
        let (mut cfg, origin) = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|source| ConfigError::Read {
                    file: f.to_path_buf(),
                    source,
                })?;
                (Self::parse(&text, f)?, f.display().to_string())
            }
            None => (Config::default(), "embedded default".to_string()),
        };
        if let Some(l) = over.listen {
            cfg.listen = l;
        }
        if let Some(s) = &over.state_dir {
            cfg.state_dir = s.clone();
        }
        if let Some(h) = over.host_id {
            cfg.host_id = h;
        }
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    /// Parses TOML text; a file config does not create default domains unless it says so.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        #[derive(Deserialize)]
        struct Probe {
            create_default_domains: Option<bool>,
        }
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let probe: Option<Probe> = toml::from_str(text).ok();
        cfg.create_default_domains = probe
            .and_then(|p| p.create_default_domains)
            .unwrap_or(false);
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, why: String| ConfigError::Invalid {
            file: origin.to_string(),
            key,
            why,
        };
        if !(1..=2000).contains(&self.host_id) {
            return Err(bad(
                "host_id",
                format!("{} is outside 1-2000", self.host_id),
            ));
        }
        if !["auto", "io_uring", "sync"].contains(&self.io.backend.as_str()) {
            return Err(bad(
                "io.backend",
                format!("{:?} is not auto, io_uring or sync", self.io.backend),
            ));
        }
        for (key, depth) in [
            ("io.queue_depth", self.io.queue_depth),
            ("io.block_queue_depth", self.io.block_queue_depth),
        ] {
            if depth > 1024 {
                return Err(bad(key, format!("{depth} is more than 1024")));
            }
        }
        for (key, chunk) in [
            ("io.chunk_size", self.io.chunk_size),
            ("io.block_chunk_size", self.io.block_chunk_size),
        ] {
            if chunk != 0 && (!chunk.is_multiple_of(4096) || !(4096..=(64 << 20)).contains(&chunk))
            {
                return Err(bad(
                    key,
                    "must be a multiple of 4096 between 4 KiB and 64 MiB".into(),
                ));
            }
        }
        if !(1..=256).contains(&self.io.max_running_jobs) {
            return Err(bad("io.max_running_jobs", "must be 1-256".into()));
        }
        if !(1..=64).contains(&self.io.image_parallelism) {
            return Err(bad("io.image_parallelism", "must be 1-64".into()));
        }
        if !(100..=3_600_000).contains(&self.io.checkpoint_interval_ms) {
            return Err(bad(
                "io.checkpoint_interval_ms",
                "must be 100-3600000".into(),
            ));
        }
        if self.io.checkpoint_bytes < 1 << 20 {
            return Err(bad("io.checkpoint_bytes", "must be at least 1 MiB".into()));
        }
        if !(1..=60).contains(&self.leases.sanlock_io_timeout_s) {
            return Err(bad("leases.sanlock_io_timeout_s", "must be 1-60".into()));
        }
        if self.server.max_request_body_bytes < 4096 {
            return Err(bad(
                "server.max_request_body_bytes",
                "must be at least 4096".into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(bad("server.max_connections", "must be at least 1".into()));
        }
        if !["auto", "device-mapper", "loop-mapped"].contains(&self.block.activation.as_str()) {
            return Err(bad(
                "block.activation",
                format!(
                    "{:?} is not auto, device-mapper or loop-mapped",
                    self.block.activation
                ),
            ));
        }
        if let Some(d) = self.block.devices.iter().find(|d| !d.starts_with('/')) {
            return Err(bad(
                "block.devices",
                format!("{d:?} is not an absolute path"),
            ));
        }
        if !(1..=3600).contains(&self.block.metadata_lease_timeout_s) {
            return Err(bad(
                "block.metadata_lease_timeout_s",
                "must be 1-3600".into(),
            ));
        }
        if !(1..=3600).contains(&self.block.lvm_timeout_s) {
            return Err(bad("block.lvm_timeout_s", "must be 1-3600".into()));
        }
        if !self.listen.ip().is_loopback() && self.tls.is_none() {
            return Err(bad(
                "listen",
                format!(
                    "{} is not a loopback address: a non-loopback listener requires mutual TLS ([tls] ca, cert, key)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Finished-job lifetime.
    pub fn autodelete(&self) -> Option<std::time::Duration> {
        u64::try_from(self.jobs.autodelete_delay_s)
            .ok()
            .map(std::time::Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_loopback_with_domains() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.create_default_domains);
        assert_eq!(c.leases.default_backend, LeaseBackendKind::Local);
    }

    #[test]
    fn packaged_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert!(!c.create_default_domains);
    }

    #[test]
    fn block_section_is_parsed_and_checked() {
        let p = Path::new("/etc/sdm/agent.toml");
        let c = Config::parse(
            "[block]\ndevices = [\"/dev/mapper/3600*\"]\nactivation = \"loop-mapped\"\n\n[[domains]]\npath = \"/dev/6e2d1b2a-0c6f-4b8e-9f3a-2d7c5e1f0a9b\"\nkind = \"block\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.block.devices, ["/dev/mapper/3600*"]);
        assert_eq!(c.block.metadata_lease_timeout_s, 180);
        assert_eq!(c.domains[0].kind, Some(sdm_proto::DomainKindName::Block));
        c.validate("test").unwrap();
        for (bad, key) in [
            ("[block]\nactivation = \"dm\"\n", "block.activation"),
            ("[block]\ndevices = [\"loop0\"]\n", "block.devices"),
            (
                "[block]\nmetadata_lease_timeout_s = 0\n",
                "block.metadata_lease_timeout_s",
            ),
        ] {
            let e = Config::parse(bad, p)
                .unwrap()
                .validate("test")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn block_io_shape_is_checked_like_the_file_one() {
        let p = Path::new("/etc/sdm/agent.toml");
        let c = Config::parse(
            "[io]\nblock_queue_depth = 32\nblock_chunk_size = 2097152\n",
            p,
        )
        .unwrap();
        c.validate("test").unwrap();
        assert_eq!(
            (c.io.block_queue_depth, c.io.block_chunk_size),
            (32, 2 << 20)
        );
        for (bad, key) in [
            ("[io]\nblock_queue_depth = 2000\n", "io.block_queue_depth"),
            ("[io]\nblock_chunk_size = 5000\n", "io.block_chunk_size"),
        ] {
            let e = Config::parse(bad, p)
                .unwrap()
                .validate("test")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let p = Path::new("/etc/sdm/agent.toml");
        let e = Config::parse("listen = \"127.0.0.1:1\"\nbogus = 1\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/sdm/agent.toml") && e.contains("bogus"),
            "{e}"
        );
        let e = Config::parse("[io]\nqueue_depth = \"x\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_depth"), "{e}");
        let over = Overrides {
            host_id: Some(0),
            ..Default::default()
        };
        let e = Config::load(None, &over).unwrap_err().to_string();
        assert!(e.contains("host_id"), "{e}");
        let over = Overrides {
            listen: Some("0.0.0.0:54321".parse().unwrap()),
            ..Default::default()
        };
        let e = Config::load(None, &over).unwrap_err().to_string();
        assert!(e.contains("TLS"), "{e}");
    }
}
