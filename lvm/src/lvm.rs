//! [`Lvm`]: the LVM commands a block domain needs, run through the real `lvm` binary.
//!
//! Every command is `lvm <cmd> --devices <set> --config '<one line>' …`: it sees only the
//! given devices, uses VDSM's settings (see [`LvmConfig::config_arg`]), has a deadline, and
//! on failure returns LVM's stderr inside the error. Writers add `--autobackup n`, as VDSM
//! does (metadata backups of shared VGs on one host's /etc would only go stale).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::config::{LvmConfig, ReportFormat};
use crate::error::{Failure, LvmError};
use crate::exec::{self, Output};
use crate::names::{check_name, Devices};
use crate::options::{LvCreate, LvSize, PvCreateOptions, VgCreateOptions};
use crate::report::{self, LvInfo, PvInfo, VgInfo, LV_FIELDS, PV_FIELDS, VG_FIELDS};
use crate::tags::check_tag;

pub(crate) const SEPARATOR: &str = "|";
const NO_BACKUP: [&str; 2] = ["--autobackup", "n"];

/// The LVM command runner. Cheap to clone; safe to share between threads.
#[derive(Debug, Clone)]
pub struct Lvm {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: LvmConfig,
    config_arg: String,
    autoactivation: OnceLock<bool>,
}

impl Lvm {
    /// Checks `cfg` (its `--config` text) and keeps it. Runs nothing.
    pub fn new(cfg: LvmConfig) -> Result<Lvm, LvmError> {
        let config_arg = cfg.config_arg()?;
        Ok(Lvm {
            inner: Arc::new(Inner {
                cfg,
                config_arg,
                autoactivation: OnceLock::new(),
            }),
        })
    }

    pub fn config(&self) -> &LvmConfig {
        &self.inner.cfg
    }

    /// `lvm version`'s first line, e.g. `LVM version: 2.03.16(2) (2022-05-18)`.
    pub fn version(&self) -> Result<String, LvmError> {
        let out = self.exec(&["version".to_string()])?;
        if !out.success() {
            return Err(LvmError::Command(out.failure()));
        }
        Ok(out.stdout.lines().next().unwrap_or("").trim().to_string())
    }

    /// Whether this lvm2 knows `vgcreate --setautoactivation` (2.03.12 and later). Asked
    /// once per [`Lvm`].
    pub fn supports_setautoactivation(&self) -> Result<bool, LvmError> {
        if let Some(known) = self.inner.autoactivation.get() {
            return Ok(*known);
        }
        let out = self.exec(&["vgcreate".to_string(), "--help".to_string()])?;
        let known = format!("{}{}", out.stdout, out.stderr).contains("--setautoactivation");
        Ok(*self.inner.autoactivation.get_or_init(|| known))
    }

    // ---- reports -------------------------------------------------------------------

    /// All PVs among `devs`.
    pub fn pvs(&self, devs: &Devices) -> Result<Vec<PvInfo>, LvmError> {
        let (argv, rows) = self.report("pvs", "pv", PV_FIELDS, devs, &[])?;
        report::pvs_from_rows(&argv.join(" "), &rows)
    }

    /// All VGs on `devs`.
    pub fn vgs(&self, devs: &Devices) -> Result<Vec<VgInfo>, LvmError> {
        let (argv, rows) = self.report("vgs", "vg", VG_FIELDS, devs, &[])?;
        report::vgs_from_rows(&argv.join(" "), &rows)
    }

    /// One VG; [`LvmError::NotFound`] when it is not on `devs`.
    pub fn vg(&self, devs: &Devices, vg: &str) -> Result<VgInfo, LvmError> {
        check_name("VG", vg)?;
        let (argv, rows) = self.report("vgs", "vg", VG_FIELDS, devs, &[vg.to_string()])?;
        let mut vgs = report::vgs_from_rows(&argv.join(" "), &rows)?;
        match vgs.len() {
            1 => Ok(vgs.remove(0)),
            0 => Err(not_in_report(argv, &format!("VG {vg}"))),
            n => Err(LvmError::Parse {
                argv: argv.join(" "),
                detail: format!("expected one VG named {vg}, got {n}"),
            }),
        }
    }

    /// The VGs on `devs` carrying `tag` (e.g. `RHAT_storage_domain`: the block domains).
    pub fn vgs_with_tag(&self, devs: &Devices, tag: &str) -> Result<Vec<VgInfo>, LvmError> {
        check_tag(tag)?;
        Ok(self
            .vgs(devs)?
            .into_iter()
            .filter(|vg| vg.has_tag(tag))
            .collect())
    }

    /// All LVs of `vg`, each with its segments.
    pub fn lvs(&self, devs: &Devices, vg: &str) -> Result<Vec<LvInfo>, LvmError> {
        check_name("VG", vg)?;
        let (argv, rows) = self.report("lvs", "lv", LV_FIELDS, devs, &[vg.to_string()])?;
        report::lvs_from_rows(&argv.join(" "), &rows)
    }

    /// One LV; [`LvmError::NotFound`] when it does not exist.
    pub fn lv(&self, devs: &Devices, vg: &str, lv: &str) -> Result<LvInfo, LvmError> {
        let target = lv_path(vg, lv)?;
        let (argv, rows) = self.report("lvs", "lv", LV_FIELDS, devs, &[target])?;
        let mut lvs = report::lvs_from_rows(&argv.join(" "), &rows)?;
        match lvs.len() {
            1 => Ok(lvs.remove(0)),
            0 => Err(not_in_report(argv, &format!("LV {vg}/{lv}"))),
            n => Err(LvmError::Parse {
                argv: argv.join(" "),
                detail: format!("expected one LV {vg}/{lv}, got {n}"),
            }),
        }
    }

    // ---- PVs and VGs ---------------------------------------------------------------

    /// Initialises each of `pvs` as a PV. Refuses anything that is not a block device
    /// before LVM sees it; a device in some VG fails with [`LvmError::InUse`].
    pub fn pvcreate(&self, pvs: &Devices, opts: &PvCreateOptions) -> Result<(), LvmError> {
        pvs.require_block_devices()?;
        let mut args = Vec::new();
        if opts.force {
            args.extend(["-y".to_string(), "-ff".to_string()]);
        }
        if opts.metadata_size_mib != 0 {
            args.extend([
                "--metadatasize".to_string(),
                format!("{}m", opts.metadata_size_mib),
                "--metadatacopies".to_string(),
                opts.metadata_copies.to_string(),
                "--metadataignore".to_string(),
                yn(opts.metadata_ignore).to_string(),
            ]);
        }
        args.extend(path_args(pvs.paths()));
        self.write(&format!("PV {pvs}"), "pvcreate", pvs, args)
    }

    /// `pvchange --metadataignore n <pv>`: VDSM enables the metadata areas of the first PV
    /// only, so the VG metadata lives there.
    pub fn pv_enable_metadata(&self, devs: &Devices, pv: &Path) -> Result<(), LvmError> {
        let mut args = no_backup();
        args.extend(["--metadataignore".to_string(), "n".to_string()]);
        args.extend(path_args(&[pv.to_path_buf()]));
        self.write(&format!("PV {}", pv.display()), "pvchange", devs, args)
    }

    /// Creates VG `vg` on `pvs` (already PVs, or plain devices LVM initialises with its
    /// defaults). Adds `--setautoactivation n` when this lvm2 knows it, so no host
    /// activates the domain's LVs at boot.
    pub fn vgcreate(
        &self,
        pvs: &Devices,
        vg: &str,
        opts: &VgCreateOptions,
    ) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        if opts.extent_size_mib == 0 {
            return Err(LvmError::InvalidArgument(
                "extent size must not be 0".into(),
            ));
        }
        let mut args = no_backup();
        if self.supports_setautoactivation()? {
            args.extend(["--setautoactivation".to_string(), "n".to_string()]);
        }
        args.extend([
            "--physicalextentsize".to_string(),
            format!("{}m", opts.extent_size_mib),
        ]);
        args.extend(tag_args("--addtag", &opts.tags)?);
        args.push(vg.to_string());
        args.extend(path_args(pvs.paths()));
        self.write(&format!("VG {vg}"), "vgcreate", pvs, args)
    }

    /// `vgremove -f`: removes the VG and all its LVs.
    pub fn vgremove(&self, devs: &Devices, vg: &str) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        self.write(
            &format!("VG {vg}"),
            "vgremove",
            devs,
            vec!["-f".into(), vg.into()],
        )
    }

    /// `pvremove -y -ff`: wipes the PV labels (after [`Lvm::vgremove`]).
    pub fn pvremove(&self, pvs: &Devices) -> Result<(), LvmError> {
        let mut args = vec!["-y".to_string(), "-ff".to_string()];
        args.extend(path_args(pvs.paths()));
        self.write(&format!("PV {pvs}"), "pvremove", pvs, args)
    }

    /// Deletes `del` and adds `add` in one `vgchange`, so a reader never sees half of it.
    /// Tags are already encoded; a tag in both lists is refused.
    pub fn change_vg_tags<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        del: &[S],
        add: &[S],
    ) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        let mut args = no_backup();
        args.extend(tag_change_args(del, add)?);
        if args.len() == NO_BACKUP.len() {
            return Ok(());
        }
        args.push(vg.to_string());
        self.write(&format!("VG {vg}"), "vgchange", devs, args)
    }

    // ---- LVs -----------------------------------------------------------------------

    /// Creates an inactive LV (`--activate n --zero n --wipesignatures n --contiguous n`):
    /// activation is only ever done through [`crate::Activator`], which counts users and
    /// records what it did. The new LV's first bytes are whatever the extents held.
    pub fn lvcreate(&self, devs: &Devices, vg: &str, lv: &LvCreate) -> Result<(), LvmError> {
        self.lvcreate_args(devs, vg, lv, None)
    }

    /// `lvcreate` with the LV's extents taken from one PV only: the `metadata` LV must start at
    /// extent 0 of the domain's first PV, and LVM would otherwise allocate from the VG's PVs in
    /// its own (device-name) order, which is not the order the devices were given.
    pub fn lvcreate_on(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &LvCreate,
        pv: &Path,
    ) -> Result<(), LvmError> {
        self.lvcreate_args(devs, vg, lv, Some(pv))
    }

    fn lvcreate_args(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &LvCreate,
        pv: Option<&Path>,
    ) -> Result<(), LvmError> {
        check_name("VG", vg)?;
        check_name("LV", &lv.name)?;
        let mut args = no_backup();
        args.extend(
            [
                "--activate",
                "n",
                "--zero",
                "n",
                "--wipesignatures",
                "n",
                "--contiguous",
                "n",
            ]
            .map(String::from),
        );
        args.extend(lv.size.args()?);
        args.extend(tag_args("--addtag", &lv.tags)?);
        args.extend(["--name".to_string(), lv.name.clone(), vg.to_string()]);
        if let Some(pv) = pv {
            // The PV is one of `devs`, which holds UTF-8 paths only.
            args.push(pv.to_string_lossy().into_owned());
        }
        self.write(&format!("LV {vg}/{}", lv.name), "lvcreate", devs, args)
    }

    /// `lvremove -f` of `lvs` in `vg`, in one command.
    pub fn lvremove<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
    ) -> Result<(), LvmError> {
        let mut args = vec!["-f".to_string()];
        args.extend(no_backup());
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvremove", devs, args)
    }

    /// Grows `lv` to at least `size`. Already that large (LVM refuses a no-op extend) is
    /// success, as in VDSM's `extendLV`; the VG lacking room is [`LvmError::NoSpace`].
    pub fn lvextend(
        &self,
        devs: &Devices,
        vg: &str,
        lv: &str,
        size: LvSize,
    ) -> Result<(), LvmError> {
        let target = lv_path(vg, lv)?;
        let mut args = no_backup();
        args.extend(size.args()?);
        args.push(target.clone());
        let what = format!("LV {target}");
        let out = self.run("lvextend", devs, args)?;
        if out.success() {
            self.warn_on_stderr(&out);
            return Ok(());
        }
        let err = LvmError::classify(&what, out.failure());
        if matches!(err, LvmError::Command(_)) {
            let now = self.lv(devs, vg, lv)?;
            if now.size >= size.bytes(now.extent_size) {
                return Ok(());
            }
        }
        Err(err)
    }

    /// Deletes `del` and adds `add` on each of `lvs`, in one `lvchange`. Tags are already
    /// encoded; a tag in both lists is refused.
    pub fn change_lv_tags<S: AsRef<str>, T: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
        del: &[T],
        add: &[T],
    ) -> Result<(), LvmError> {
        let mut args = no_backup();
        args.extend(tag_change_args(del, add)?);
        if args.len() == NO_BACKUP.len() {
            return Ok(());
        }
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvchange", devs, args)
    }

    /// `lvchange --activate y|n` (device-mapper mode only).
    pub fn lvchange_activate<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
        active: bool,
    ) -> Result<(), LvmError> {
        self.require_activation()?;
        let mut args = no_backup();
        args.extend(["--activate".to_string(), yn(active).to_string()]);
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvchange", devs, args)
    }

    /// `lvchange --refresh`: reloads active LVs' mappings from the (possibly changed on
    /// another host) metadata (device-mapper mode only).
    pub fn lvchange_refresh<S: AsRef<str>>(
        &self,
        devs: &Devices,
        vg: &str,
        lvs: &[S],
    ) -> Result<(), LvmError> {
        self.require_activation()?;
        let mut args = vec!["--refresh".to_string()];
        let targets = lv_paths(vg, lvs)?;
        args.extend(targets.iter().cloned());
        self.write(&targets.join(" "), "lvchange", devs, args)
    }

    // ---- plumbing ------------------------------------------------------------------

    fn require_activation(&self) -> Result<(), LvmError> {
        if self.inner.cfg.activation {
            Ok(())
        } else {
            Err(LvmError::InvalidArgument(
                "LVM activation is disabled (loop-mapped mode); use the Activator".into(),
            ))
        }
    }

    fn exec(&self, args: &[String]) -> Result<Output, LvmError> {
        exec::run(&self.inner.cfg.lvm_path, args, self.inner.cfg.timeout)
    }

    /// `lvm <cmd> --devices <devs> --config <cfg> <args…>`.
    fn run(&self, cmd: &str, devs: &Devices, args: Vec<String>) -> Result<Output, LvmError> {
        let mut argv = vec![
            cmd.to_string(),
            "--devices".to_string(),
            devs.arg(),
            "--config".to_string(),
            self.inner.config_arg.clone(),
        ];
        argv.extend(args);
        self.exec(&argv)
    }

    fn write(
        &self,
        what: &str,
        cmd: &str,
        devs: &Devices,
        args: Vec<String>,
    ) -> Result<(), LvmError> {
        let out = self.run(cmd, devs, args)?;
        if !out.success() {
            return Err(LvmError::classify(what, out.failure()));
        }
        self.warn_on_stderr(&out);
        Ok(())
    }

    fn warn_on_stderr(&self, out: &Output) {
        if !out.stderr.is_empty() {
            tracing::warn!(argv = ?out.argv, stderr = %out.stderr, "lvm succeeded with warnings");
        }
    }

    fn report(
        &self,
        cmd: &str,
        kind: &str,
        fields: &[&str],
        devs: &Devices,
        targets: &[String],
    ) -> Result<(Vec<String>, Vec<report::Row>), LvmError> {
        let mut args = vec![
            "--units".to_string(),
            "b".to_string(),
            "--nosuffix".to_string(),
            "-o".to_string(),
            fields.join(","),
        ];
        let format = self.inner.cfg.report_format;
        match format {
            ReportFormat::Json => args.extend(["--reportformat".to_string(), "json".to_string()]),
            ReportFormat::Separated => args.extend([
                "--noheadings".to_string(),
                "--separator".to_string(),
                SEPARATOR.to_string(),
            ]),
        }
        args.extend(targets.iter().cloned());
        let out = self.run(cmd, devs, args)?;
        let text = out.argv.join(" ");
        if !out.success() {
            let what = if targets.is_empty() {
                format!("{cmd} report")
            } else {
                targets.join(" ")
            };
            return Err(LvmError::classify(&what, out.failure()));
        }
        self.warn_on_stderr(&out);
        let rows = match format {
            ReportFormat::Json => report::parse_json(&text, kind, &out.stdout)?,
            ReportFormat::Separated => report::parse_separated(&text, fields, &out.stdout)?,
        };
        Ok((out.argv, rows))
    }
}

/// LVM exited 0 but did not list the object it was asked about.
fn not_in_report(argv: Vec<String>, what: &str) -> LvmError {
    LvmError::NotFound {
        what: what.to_string(),
        failure: Failure {
            argv,
            status: Some(0),
            stderr: format!("{what} is not in the report"),
        },
    }
}

fn yn(b: bool) -> &'static str {
    if b {
        "y"
    } else {
        "n"
    }
}

fn no_backup() -> Vec<String> {
    NO_BACKUP.iter().map(|s| s.to_string()).collect()
}

fn path_args(paths: &[PathBuf]) -> impl Iterator<Item = String> + '_ {
    // `Devices` holds UTF-8 paths only.
    paths.iter().map(|p| p.to_string_lossy().into_owned())
}

fn lv_path(vg: &str, lv: &str) -> Result<String, LvmError> {
    check_name("VG", vg)?;
    check_name("LV", lv)?;
    Ok(format!("{vg}/{lv}"))
}

fn lv_paths<S: AsRef<str>>(vg: &str, lvs: &[S]) -> Result<Vec<String>, LvmError> {
    if lvs.is_empty() {
        return Err(LvmError::InvalidArgument("no LV given".into()));
    }
    lvs.iter().map(|lv| lv_path(vg, lv.as_ref())).collect()
}

fn tag_args<S: AsRef<str>>(flag: &str, tags: &[S]) -> Result<Vec<String>, LvmError> {
    let mut args = Vec::with_capacity(tags.len() * 2);
    for tag in tags {
        check_tag(tag.as_ref())?;
        args.extend([flag.to_string(), tag.as_ref().to_string()]);
    }
    Ok(args)
}

fn tag_change_args<S: AsRef<str>>(del: &[S], add: &[S]) -> Result<Vec<String>, LvmError> {
    if let Some(both) = del
        .iter()
        .find(|d| add.iter().any(|a| a.as_ref() == d.as_ref()))
    {
        return Err(LvmError::InvalidArgument(format!(
            "tag {:?} is both deleted and added",
            both.as_ref()
        )));
    }
    let mut args = tag_args("--deltag", del)?;
    args.extend(tag_args("--addtag", add)?);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in `lvm` that records its argv and hangs (only this test uses a fake: the
    /// timeout tests under tests/ hang the real lvm on a held VG lock).
    #[test]
    fn timeout_kills_a_hanging_lvm_and_argv_has_devices_and_config() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("lvm");
        let argv_file = dir.path().join("argv");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\necho waiting >&2\nexec sleep 30\n",
                argv_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lvm = Lvm::new(LvmConfig {
            lvm_path: fake,
            timeout: Duration::from_millis(500),
            ..LvmConfig::default()
        })
        .unwrap();
        let devs = Devices::new(["/dev/loop0", "/dev/loop1"]).unwrap();
        let started = Instant::now();
        // A thread of another test may fork while the script is still open for writing
        // (ETXTBSY); that is the spawn failing, not the timeout, so try again.
        let err = loop {
            match lvm.vgs(&devs) {
                Err(LvmError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) => {}
                other => break other.unwrap_err(),
            }
        };
        assert!(started.elapsed() < Duration::from_secs(10));
        match &err {
            LvmError::Timeout {
                stderr, timeout, ..
            } => {
                assert_eq!(stderr, "waiting");
                assert_eq!(*timeout, Duration::from_millis(500));
            }
            other => panic!("expected Timeout, got {other}"),
        }
        let argv = std::fs::read_to_string(argv_file).unwrap();
        let argv: Vec<&str> = argv.lines().collect();
        assert_eq!(
            &argv[..4],
            ["vgs", "--devices", "/dev/loop0,/dev/loop1", "--config"]
        );
        assert_eq!(argv[4], LvmConfig::default().config_arg().unwrap());
        assert!(argv.contains(&"--reportformat"));
    }

    #[test]
    fn tag_change_refuses_overlap_and_bad_tags() {
        assert_eq!(
            tag_change_args(&["a", "b"], &["b"]).unwrap_err().code(),
            "InvalidArgument"
        );
        assert!(tag_change_args(&["ok"], &["not ok"]).is_err());
        assert_eq!(
            tag_change_args(&["a"], &["b"]).unwrap(),
            ["--deltag", "a", "--addtag", "b"]
        );
    }

    #[test]
    fn lv_paths_refuse_empty_and_bad_names() {
        let none: [&str; 0] = [];
        assert!(lv_paths("vg", &none).is_err());
        assert!(lv_paths("vg", &["../x"]).is_err());
        assert_eq!(lv_paths("vg", &["a", "b"]).unwrap(), ["vg/a", "vg/b"]);
    }
}
