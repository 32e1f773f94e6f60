//! Reports: `pvs`, `vgs` and `lvs` in either report format, parsed into typed rows.

use crate::config::ReportFormat;
use crate::error::{Failure, LvmError};
use crate::names::{check_name, Devices};
use crate::report::{self, LvInfo, PvInfo, VgInfo, LV_FIELDS, PV_FIELDS, VG_FIELDS};
use crate::tags::check_tag;

use super::args::lv_path;
use super::{Lvm, SEPARATOR};

impl Lvm {
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
