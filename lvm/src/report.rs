//! `pvs`/`vgs`/`lvs` reports: the fields asked for, the two output formats, typed rows.
//!
//! Every report runs with `--units b --nosuffix`, so sizes are plain byte counts. LVM
//! prints one row per (VG, PV) for `vgs` with `pv_name` and one row per segment for `lvs`
//! with segment fields; the rows are folded back into one value per VG and per LV here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::LvmError;

/// One report row: field name → value as LVM printed it.
pub(crate) type Row = BTreeMap<String, String>;

/// What LVM prints for a PV it cannot find.
const UNKNOWN: &str = "[unknown]";

pub(crate) const PV_FIELDS: &[&str] = &[
    "pv_name",
    "pv_uuid",
    "vg_name",
    "vg_uuid",
    "pv_size",
    "dev_size",
    "pe_start",
    "pv_pe_count",
    "pv_pe_alloc_count",
    "pv_mda_count",
    "pv_mda_used_count",
    "pv_tags",
];

pub(crate) const VG_FIELDS: &[&str] = &[
    "vg_name",
    "vg_uuid",
    "vg_attr",
    "vg_size",
    "vg_free",
    "vg_extent_size",
    "vg_extent_count",
    "vg_free_count",
    "vg_tags",
    "vg_mda_size",
    "vg_mda_free",
    "lv_count",
    "pv_count",
    "pv_name",
];

pub(crate) const LV_FIELDS: &[&str] = &[
    "lv_name",
    "lv_uuid",
    "vg_name",
    "lv_attr",
    "lv_size",
    "lv_tags",
    "vg_extent_size",
    "seg_start_pe",
    "seg_size_pe",
    "segtype",
    "stripes",
    "seg_pe_ranges",
];

/// A physical volume (`pvs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvInfo {
    /// Device path as LVM knows it (one of the `--devices`).
    pub name: PathBuf,
    pub uuid: String,
    /// `None` for a PV in no VG.
    pub vg_name: Option<String>,
    pub vg_uuid: Option<String>,
    /// Usable size in bytes (`pe_count` × extent size once in a VG).
    pub size: u64,
    /// Size of the underlying device in bytes.
    pub dev_size: u64,
    /// Byte offset of the first physical extent on the device.
    pub pe_start: u64,
    pub pe_count: u64,
    pub pe_alloc_count: u64,
    /// Metadata areas on the PV, and how many of them are in use (not ignored).
    pub mda_count: u32,
    pub mda_used_count: u32,
    pub tags: Vec<String>,
}

/// A volume group (`vgs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgInfo {
    pub name: String,
    pub uuid: String,
    /// `vg_attr`, e.g. `wz--n-`.
    pub attr: String,
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
    pub extent_count: u64,
    pub free_count: u64,
    /// Raw (still encoded) tags, as LVM sorts them.
    pub tags: Vec<String>,
    pub mda_size: u64,
    pub mda_free: u64,
    pub lv_count: u64,
    pub pv_count: u64,
    /// The PVs LVM found, in its own order (not creation order); a missing PV is left out and
    /// makes the VG [`VgInfo::partial`].
    pub pv_names: Vec<PathBuf>,
}

impl VgInfo {
    /// Whether a PV of the VG is missing.
    pub fn partial(&self) -> bool {
        self.attr.as_bytes().get(3) == Some(&b'p')
    }

    /// Whether the VG is writable.
    pub fn writable(&self) -> bool {
        self.attr.as_bytes().first() == Some(&b'w')
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A run of physical extents on one PV: `pv:first-last` in `seg_pe_ranges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeRange {
    pub pv: PathBuf,
    /// First and last physical extent, inclusive.
    pub first: u64,
    pub last: u64,
}

/// One segment of an LV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvSegment {
    /// First logical extent of the segment within the LV (`seg_start_pe`).
    pub start_extent: u64,
    /// Length in extents (`seg_size_pe`).
    pub extent_count: u64,
    /// `linear`, `striped`, …
    pub segtype: String,
    pub stripes: u32,
    pub ranges: Vec<PeRange>,
}

/// A logical volume (`lvs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub name: String,
    pub uuid: String,
    pub vg_name: String,
    /// `lv_attr`, e.g. `-wi-a-----`.
    pub attr: String,
    pub size: u64,
    /// Raw (still encoded) tags, as LVM sorts them.
    pub tags: Vec<String>,
    /// The VG's extent size in bytes.
    pub extent_size: u64,
    /// Segments in logical order.
    pub segments: Vec<LvSegment>,
}

impl LvInfo {
    /// Device-mapper state from `lv_attr`: `Some(true)` active, `Some(false)` inactive,
    /// `None` unknown (LVM runs with activation disabled, the loop-mapped mode).
    pub fn dm_active(&self) -> Option<bool> {
        match self.attr.as_bytes().get(4) {
            Some(b'a') => Some(true),
            Some(b'-') => Some(false),
            _ => None,
        }
    }

    /// Whether the LV's device-mapper device is open (`lv_attr` column 6).
    pub fn dm_open(&self) -> bool {
        self.attr.as_bytes().get(5) == Some(&b'o')
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// Rows of a `--reportformat json` report of `kind` (`pv`, `vg`, `lv`). lvm2 2.03 prints
/// every value as a string; numbers are accepted too, for `json_std` in later versions.
pub(crate) fn parse_json(argv: &str, kind: &str, text: &str) -> Result<Vec<Row>, LvmError> {
    let bad = |detail: String| LvmError::Parse {
        argv: argv.to_string(),
        detail,
    };
    let doc: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let reports = doc
        .get("report")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"report\" array".into()))?;
    let mut rows = Vec::new();
    for report in reports {
        let Some(items) = report.get(kind) else {
            continue;
        };
        let items = items
            .as_array()
            .ok_or_else(|| bad(format!("\"{kind}\" is not an array")))?;
        for item in items {
            let obj = item
                .as_object()
                .ok_or_else(|| bad(format!("a \"{kind}\" row is not an object")))?;
            let mut row = Row::new();
            for (key, value) in obj {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => String::new(),
                    other => return Err(bad(format!("field {key} has value {other}"))),
                };
                row.insert(key.clone(), text);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Rows of a `--noheadings --separator |` report with exactly `fields`, in order.
pub(crate) fn parse_separated(
    argv: &str,
    fields: &[&str],
    text: &str,
) -> Result<Vec<Row>, LvmError> {
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split(super::lvm::SEPARATOR).collect();
        if values.len() != fields.len() {
            return Err(LvmError::Parse {
                argv: argv.to_string(),
                detail: format!(
                    "line {line:?} has {} fields, expected {}",
                    values.len(),
                    fields.len()
                ),
            });
        }
        let row = fields
            .iter()
            .zip(values)
            .map(|(f, v)| (f.to_string(), v.trim().to_string()))
            .collect();
        rows.push(row);
    }
    Ok(rows)
}

/// Typed access to a row, with errors naming the command.
struct Fields<'a> {
    argv: &'a str,
    row: &'a Row,
}

impl Fields<'_> {
    fn str(&self, name: &str) -> Result<String, LvmError> {
        self.row.get(name).cloned().ok_or_else(|| LvmError::Parse {
            argv: self.argv.to_string(),
            detail: format!("field {name} missing"),
        })
    }

    fn opt(&self, name: &str) -> Result<Option<String>, LvmError> {
        Ok(Some(self.str(name)?).filter(|s| !s.is_empty()))
    }

    fn u64(&self, name: &str) -> Result<u64, LvmError> {
        let text = self.str(name)?;
        text.parse().map_err(|_| LvmError::Parse {
            argv: self.argv.to_string(),
            detail: format!("field {name} = {text:?} is not a byte/extent count"),
        })
    }

    fn u32(&self, name: &str) -> Result<u32, LvmError> {
        let n = self.u64(name)?;
        u32::try_from(n).map_err(|_| LvmError::Parse {
            argv: self.argv.to_string(),
            detail: format!("field {name} = {n} is out of range"),
        })
    }

    fn tags(&self, name: &str) -> Result<Vec<String>, LvmError> {
        Ok(split_tags(&self.str(name)?))
    }
}

fn split_tags(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) fn pvs_from_rows(argv: &str, rows: &[Row]) -> Result<Vec<PvInfo>, LvmError> {
    let mut out = Vec::new();
    for row in rows {
        let f = Fields { argv, row };
        let name = f.str("pv_name")?;
        if name == UNKNOWN {
            continue;
        }
        out.push(PvInfo {
            name: PathBuf::from(name),
            uuid: f.str("pv_uuid")?,
            vg_name: f.opt("vg_name")?,
            vg_uuid: f.opt("vg_uuid")?,
            size: f.u64("pv_size")?,
            dev_size: f.u64("dev_size")?,
            pe_start: f.u64("pe_start")?,
            pe_count: f.u64("pv_pe_count")?,
            pe_alloc_count: f.u64("pv_pe_alloc_count")?,
            mda_count: f.u32("pv_mda_count")?,
            mda_used_count: f.u32("pv_mda_used_count")?,
            tags: f.tags("pv_tags")?,
        });
    }
    Ok(out)
}

pub(crate) fn vgs_from_rows(argv: &str, rows: &[Row]) -> Result<Vec<VgInfo>, LvmError> {
    let mut out: Vec<VgInfo> = Vec::new();
    for row in rows {
        let f = Fields { argv, row };
        let uuid = f.str("vg_uuid")?;
        let pv = f.str("pv_name")?;
        let index = match out.iter().position(|vg| vg.uuid == uuid) {
            Some(i) => i,
            None => {
                out.push(VgInfo {
                    name: f.str("vg_name")?,
                    uuid,
                    attr: f.str("vg_attr")?,
                    size: f.u64("vg_size")?,
                    free: f.u64("vg_free")?,
                    extent_size: f.u64("vg_extent_size")?,
                    extent_count: f.u64("vg_extent_count")?,
                    free_count: f.u64("vg_free_count")?,
                    tags: f.tags("vg_tags")?,
                    mda_size: f.u64("vg_mda_size")?,
                    mda_free: f.u64("vg_mda_free")?,
                    lv_count: f.u64("lv_count")?,
                    pv_count: f.u64("pv_count")?,
                    pv_names: Vec::new(),
                });
                out.len() - 1
            }
        };
        if !pv.is_empty() && pv != UNKNOWN {
            out[index].pv_names.push(PathBuf::from(pv));
        }
    }
    Ok(out)
}

pub(crate) fn lvs_from_rows(argv: &str, rows: &[Row]) -> Result<Vec<LvInfo>, LvmError> {
    let mut out: Vec<LvInfo> = Vec::new();
    for row in rows {
        let f = Fields { argv, row };
        let uuid = f.str("lv_uuid")?;
        let segment = LvSegment {
            start_extent: f.u64("seg_start_pe")?,
            extent_count: f.u64("seg_size_pe")?,
            segtype: f.str("segtype")?,
            stripes: f.u32("stripes")?,
            ranges: parse_pe_ranges(argv, &f.str("seg_pe_ranges")?)?,
        };
        let index = match out.iter().position(|lv| lv.uuid == uuid) {
            Some(i) => i,
            None => {
                out.push(LvInfo {
                    name: f.str("lv_name")?,
                    uuid,
                    vg_name: f.str("vg_name")?,
                    attr: f.str("lv_attr")?,
                    size: f.u64("lv_size")?,
                    tags: f.tags("lv_tags")?,
                    extent_size: f.u64("vg_extent_size")?,
                    segments: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[index].segments.push(segment);
    }
    for lv in &mut out {
        lv.segments.sort_by_key(|s| s.start_extent);
    }
    Ok(out)
}

/// `seg_pe_ranges`: space-separated `<pv>:<first>-<last>` (one per stripe/mirror leg).
fn parse_pe_ranges(argv: &str, text: &str) -> Result<Vec<PeRange>, LvmError> {
    text.split_whitespace()
        .map(|item| {
            let parsed = item.rsplit_once(':').and_then(|(pv, span)| {
                let (first, last) = span.split_once('-')?;
                Some(PeRange {
                    pv: PathBuf::from(pv),
                    first: first.parse().ok()?,
                    last: last.parse().ok()?,
                })
            });
            parsed.ok_or_else(|| LvmError::Parse {
                argv: argv.to_string(),
                detail: format!("seg_pe_ranges item {item:?} is not <pv>:<first>-<last>"),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
