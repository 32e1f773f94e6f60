//! The host's block environment, shared by all its block domains: the LVM runner, the activator
//! (device-mapper or loop-mapped, chosen at start-up) and the devices `[block] devices` allows.

use std::fs;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sdm_lvm::{ActivationMode, Activator, CleanupReport, Devices, Lvm, LvmConfig};

use super::error::BlockError;
use crate::config::BlockConfig;

/// The block layer of this agent.
#[derive(Debug)]
pub struct BlockEnv {
    patterns: Vec<String>,
    lvm: Lvm,
    activator: Activator,
    links_root: PathBuf,
    lease_timeout: Duration,
}

impl BlockEnv {
    /// Sets up the block layer: the activation mode (probed unless configured), LVM with that
    /// mode's settings (metadata archives under `<state_dir>/lvm`), the activator recording in
    /// `[block] state_dir`. Runs no LVM command. Links to volumes made before a restart are
    /// removed: the mappings they led to are gone (or about to be, by
    /// [`cleanup_stale`](Self::cleanup_stale)), and a loop device number may name another LV
    /// by now.
    pub fn new(cfg: &BlockConfig, state_dir: &Path) -> Result<BlockEnv, BlockError> {
        let mode = match cfg.activation.as_str() {
            "auto" => ActivationMode::probe(),
            other => other
                .parse()
                .map_err(|e: sdm_lvm::ActivationError| BlockError::Unavailable(e.to_string()))?,
        };
        let lvm = Lvm::new(LvmConfig {
            activation: mode.lvm_activation(),
            timeout: Duration::from_secs(cfg.lvm_timeout_s),
            backup_dir: Some(state_dir.join("lvm")),
            ..LvmConfig::default()
        })?;
        let records = cfg
            .state_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("activation"));
        let activator =
            Activator::new(lvm.clone(), mode, &records).map_err(|e| BlockError::Activate {
                lv: format!("(state dir {})", records.display()),
                source: e,
            })?;
        let links_root = state_dir.join("block-links");
        match fs::remove_dir_all(&links_root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BlockError::Unavailable(format!(
                    "cannot clear {}: {e}",
                    links_root.display()
                )))
            }
        }
        Ok(BlockEnv {
            patterns: cfg.devices.clone(),
            lvm,
            activator,
            links_root,
            lease_timeout: Duration::from_secs(cfg.metadata_lease_timeout_s),
        })
    }

    /// Undoes the activations a killed agent left (its records in the state dir).
    pub fn cleanup_stale(&self) -> Result<CleanupReport, BlockError> {
        self.activator
            .cleanup_stale()
            .map_err(|e| BlockError::Activate {
                lv: "(stale activations)".into(),
                source: e,
            })
    }

    /// The activation mode.
    pub fn mode(&self) -> ActivationMode {
        self.activator.mode()
    }

    /// The LVM runner.
    pub fn lvm(&self) -> &Lvm {
        &self.lvm
    }

    /// The activator.
    pub fn activator(&self) -> &Activator {
        &self.activator
    }

    /// Where the links of domain `sd`'s prepared volumes live (`<dir>/<img>/<vol>`).
    pub fn links_dir(&self, sd: &str) -> PathBuf {
        self.links_root.join(sd)
    }

    /// How long a metadata change waits for the metadata-writer lease.
    pub fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    /// The block devices `[block] devices` names now, sorted.
    pub fn host_devices(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .patterns
            .iter()
            .flat_map(|p| expand(p))
            .filter(|p| is_block_device(p))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The host's allowed devices as an LVM device set.
    pub fn host_device_set(&self) -> Result<Devices, BlockError> {
        if self.patterns.is_empty() {
            return Err(BlockError::NotConfigured);
        }
        let found = self.host_devices();
        if found.is_empty() {
            return Err(BlockError::Unavailable(format!(
                "no block device matches `[block] devices` ({})",
                self.patterns.join(", ")
            )));
        }
        Ok(Devices::new(found)?)
    }

    /// Checks devices a client named for a new domain: each exists, is a block device and is
    /// allowed by `[block] devices` (compared after resolving links). Returns them as given,
    /// in order.
    pub fn check_new_devices(&self, devices: &[PathBuf]) -> Result<Vec<PathBuf>, BlockError> {
        if self.patterns.is_empty() {
            return Err(BlockError::NotConfigured);
        }
        let allowed: Vec<PathBuf> = self
            .host_devices()
            .iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        let mut seen = Vec::new();
        for d in devices {
            if !d.is_absolute() || !is_block_device(d) {
                return Err(BlockError::NotBlockDevice { path: d.clone() });
            }
            let real = d
                .canonicalize()
                .map_err(|_| BlockError::NotBlockDevice { path: d.clone() })?;
            if !allowed.contains(&real) {
                return Err(BlockError::DeviceNotAllowed {
                    path: d.clone(),
                    allowed: self.patterns.join(", "),
                });
            }
            if seen.contains(&real) {
                return Err(BlockError::Unavailable(format!(
                    "{} is named twice",
                    d.display()
                )));
            }
            seen.push(real);
        }
        Ok(devices.to_vec())
    }
}

/// Size of a block device in bytes.
pub fn device_size(path: &Path) -> Result<u64, BlockError> {
    fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| BlockError::Unavailable(format!("cannot size {}: {e}", path.display())))
}

fn is_block_device(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// The paths a pattern names: itself, or, when its last component holds `*` or `?`, the
/// entries of its directory that match.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return vec![p.to_path_buf()];
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| wildcard(name.as_bytes(), n.as_bytes()))
        })
        .map(|e| e.path())
        .collect()
}

/// Shell-style matching of `*` (any run) and `?` (one byte).
fn wildcard(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&pat[1..], s) || (!s.is_empty() && wildcard(pat, &s[1..])),
        (Some(b'?'), Some(_)) => wildcard(&pat[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => wildcard(&pat[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_the_shell() {
        assert!(wildcard(b"loop*", b"loop12"));
        assert!(wildcard(b"3600*", b"36001405abc"));
        assert!(wildcard(b"loop?", b"loop1"));
        assert!(!wildcard(b"loop?", b"loop12"));
        assert!(!wildcard(b"loop*", b"looq1"));
        assert!(wildcard(b"*", b""));
        assert!(wildcard(b"a*b*c", b"aXXbYc"));
    }

    #[test]
    fn patterns_expand_in_their_directory_only() {
        let d = tempfile::tempdir().unwrap();
        for n in ["disk1", "disk2", "other"] {
            fs::write(d.path().join(n), b"").unwrap();
        }
        let mut got = expand(&format!("{}/disk*", d.path().display()));
        got.sort();
        assert_eq!(got, [d.path().join("disk1"), d.path().join("disk2")]);
        assert_eq!(
            expand(&format!("{}/other", d.path().display())),
            [d.path().join("other")]
        );
        // Regular files are not block devices: an environment naming them offers none.
        let env = BlockEnv::new(
            &BlockConfig {
                devices: vec![format!("{}/*", d.path().display())],
                activation: "loop-mapped".into(),
                ..BlockConfig::default()
            },
            d.path(),
        )
        .unwrap();
        assert!(env.host_devices().is_empty());
        assert!(matches!(
            env.check_new_devices(&[d.path().join("disk1")]),
            Err(BlockError::NotBlockDevice { .. })
        ));
        assert!(matches!(
            env.host_device_set(),
            Err(BlockError::Unavailable(_))
        ));
    }
}
