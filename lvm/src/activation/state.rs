//! Activation records: one small JSON file per active LV, so a successor process can undo
//! what a killed one mapped.
//!
//! Files are replaced by rename, never rewritten in place, so a reader sees the old or
//! the new record. They are not fsynced: they only have to outlive the process (kill -9),
//! and a host crash takes the loop devices and device-mapper tables with it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ActivationError;
use crate::names::Devices;

/// What the mapping of an LV is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Mapping {
    /// `lvchange -ay`.
    DeviceMapper,
    /// A loop device over `size` bytes of `pv` from `offset`.
    Loop { pv: PathBuf, offset: u64, size: u64 },
}

/// One activation, as written to `<state dir>/<vg>/<lv>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub vg: String,
    pub lv: String,
    /// The `--devices` the LV was activated with (device-mapper clean-up needs them).
    pub devices: Vec<PathBuf>,
    pub mapping: Mapping,
    /// The device, once made; a record without one was written just before attaching.
    pub device: Option<PathBuf>,
    /// Device size in bytes, once made.
    pub size: u64,
    /// The owner process, and its start time (clock ticks after boot, /proc/<pid>/stat
    /// field 22) so a reused pid is not mistaken for the owner.
    pub pid: u32,
    pub pid_start: u64,
}

impl Record {
    pub fn new(vg: &str, lv: &str, devs: &Devices, mapping: Mapping) -> Record {
        let pid = std::process::id();
        Record {
            vg: vg.to_string(),
            lv: lv.to_string(),
            devices: devs.paths().to_vec(),
            mapping,
            device: None,
            size: 0,
            pid,
            pid_start: process_start(pid).unwrap_or(0),
        }
    }

    /// Whether the process that wrote the record is alive and is not this one.
    fn owner_is_other_live_process(&self) -> bool {
        self.pid != std::process::id() && process_start(self.pid) == Some(self.pid_start)
    }
}

/// What [`super::Activator::cleanup_stale`] did.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Devices detached (loop) or LVs deactivated (`/dev/<vg>/<lv>`).
    pub removed: Vec<PathBuf>,
    /// Stale records cleared.
    pub records: usize,
    /// Records left alone because their owner process is alive.
    pub skipped: usize,
    /// Records that could not be undone (kept for the next try), with the reason.
    pub failed: Vec<(PathBuf, ActivationError)>,
}

#[derive(Debug)]
pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed.
    pub fn open(root: PathBuf) -> Result<StateDir, ActivationError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|source| ActivationError::State {
                path: root.clone(),
                source,
            })?;
        Ok(StateDir { root })
    }

    fn path(&self, vg: &str, lv: &str) -> PathBuf {
        self.root.join(vg).join(format!("{lv}.json"))
    }

    pub fn write(&self, record: &Record) -> Result<(), ActivationError> {
        let path = self.path(&record.vg, &record.lv);
        let err = |source| ActivationError::State {
            path: path.clone(),
            source,
        };
        let dir = path.parent().expect("record path has a parent");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(record)
            .map_err(io::Error::from)
            .map_err(err)?;
        fs::write(&tmp, text).map_err(err)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)
    }

    pub fn remove(&self, vg: &str, lv: &str) -> Result<(), ActivationError> {
        let path = self.path(vg, lv);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ActivationError::State { path, source }),
        }
        // Only succeeds once the VG has no records left; that is the point.
        let _ = fs::remove_dir(self.root.join(vg));
        Ok(())
    }

    fn read(path: &Path) -> Result<Record, ActivationError> {
        let text = fs::read(path).map_err(|source| ActivationError::State {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| ActivationError::BadRecord {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// All record files, and leftover temp files (removed on the way).
    fn record_paths(&self) -> Result<Vec<PathBuf>, ActivationError> {
        let list = |dir: &Path| -> Result<Vec<PathBuf>, ActivationError> {
            let entries = fs::read_dir(dir).map_err(|source| ActivationError::State {
                path: dir.to_path_buf(),
                source,
            })?;
            Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        };
        let mut out = Vec::new();
        for vg_dir in list(&self.root)?.into_iter().filter(|p| p.is_dir()) {
            for path in list(&vg_dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.contains(".json.tmp.") {
                    let _ = fs::remove_file(&path);
                } else if name.ends_with(".json") {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Undoes, through `undo`, every record not in `live` and not owned by another live
    /// process; removes the records undone.
    pub fn cleanup(
        &self,
        live: &[(String, String)],
        undo: impl Fn(&Record) -> Result<Vec<PathBuf>, ActivationError>,
    ) -> Result<CleanupReport, ActivationError> {
        let mut report = CleanupReport::default();
        for path in self.record_paths()? {
            let record = match Self::read(&path) {
                Ok(r) => r,
                Err(e) => {
                    report.failed.push((path, e));
                    continue;
                }
            };
            let key = (record.vg.clone(), record.lv.clone());
            if live.contains(&key) || record.owner_is_other_live_process() {
                report.skipped += 1;
                continue;
            }
            match undo(&record) {
                Ok(removed) => {
                    tracing::info!(vg = %record.vg, lv = %record.lv, ?removed, "stale activation undone");
                    report.removed.extend(removed);
                    self.remove(&record.vg, &record.lv)?;
                    report.records += 1;
                }
                Err(e) => {
                    tracing::error!(vg = %record.vg, lv = %record.lv, error = %e, "stale activation not undone");
                    report.failed.push((path, e));
                }
            }
        }
        Ok(report)
    }
}

/// Start time of process `pid` (field 22 of /proc/<pid>/stat), `None` if there is none.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last
    // ')' start with field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // A zombie has exited; its mappings are nobody's.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(vg: &str, lv: &str) -> Record {
        let devs = Devices::new(["/dev/loop9"]).unwrap();
        Record::new(
            vg,
            lv,
            &devs,
            Mapping::Loop {
                pv: "/dev/loop9".into(),
                offset: 1 << 20,
                size: 128 << 20,
            },
        )
    }

    #[test]
    fn write_read_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        let mut r = record("vg1", "lv1");
        state.write(&r).unwrap();
        r.device = Some("/dev/loop7".into());
        state.write(&r).unwrap();
        let paths = state.record_paths().unwrap();
        assert_eq!(paths.len(), 1);
        assert_eq!(StateDir::read(&paths[0]).unwrap(), r);
        state.remove("vg1", "lv1").unwrap();
        assert!(state.record_paths().unwrap().is_empty());
        assert!(!dir.path().join("state/vg1").exists());
    }

    #[test]
    fn cleanup_skips_live_and_other_live_owner_and_undoes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().to_path_buf()).unwrap();
        state.write(&record("vg", "mine-live")).unwrap();
        state.write(&record("vg", "mine-leaked")).unwrap();
        // pid 1 is alive and is not us: its record is its business.
        let mut other = record("vg", "other");
        other.pid = 1;
        other.pid_start = process_start(1).unwrap();
        state.write(&other).unwrap();
        // A dead owner (no such start time for pid 1).
        let mut dead = record("vg", "dead");
        dead.pid = 1;
        dead.pid_start = u64::MAX;
        state.write(&dead).unwrap();
        fs::write(dir.path().join("vg/broken.json"), "{").unwrap();

        let live = vec![("vg".to_string(), "mine-live".to_string())];
        let report = state
            .cleanup(&live, |r| Ok(vec![PathBuf::from(format!("/dev/{}", r.lv))]))
            .unwrap();
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(
            removed,
            [
                PathBuf::from("/dev/dead"),
                PathBuf::from("/dev/mine-leaked")
            ]
        );
        assert_eq!(report.records, 2);
        assert_eq!(report.skipped, 2);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].1.code(), "BadRecord");
        assert_eq!(state.record_paths().unwrap().len(), 3);
    }

    #[test]
    fn cleanup_keeps_records_it_could_not_undo() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().to_path_buf()).unwrap();
        state.write(&record("vg", "lv")).unwrap();
        let report = state
            .cleanup(&[], |_| Err(ActivationError::Losetup("busy".into())))
            .unwrap();
        assert_eq!(report.failed.len(), 1);
        assert_eq!(state.record_paths().unwrap().len(), 1);
    }

    #[test]
    fn process_start_of_self_is_known_and_of_nonexistent_is_none() {
        assert!(process_start(std::process::id()).is_some());
        assert_eq!(process_start(u32::MAX), None);
    }
}
