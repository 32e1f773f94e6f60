//! qemu-img on qcow2 volumes in place: the compat level (`amend`) and persistent dirty bitmaps
//! (`info`, `bitmap --add/--remove/--merge`), with VDSM's command lines. Every command runs in
//! the volume's directory, where its backing files resolve by bare UUID.

use std::path::Path;
use std::process::Command;

use super::{qemu, StorageError};

/// One persistent bitmap, as `qemu-img info` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Its name.
    pub name: String,
    /// Bytes per bit.
    pub granularity: u64,
    /// qemu's flags: `auto` (enabled), `in-use` (not stored cleanly).
    pub flags: Vec<String>,
}

impl Bitmap {
    /// Enabled and stored cleanly: usable for incremental backup (VDSM's `_valid`).
    pub fn is_valid(&self) -> bool {
        self.flags.iter().any(|f| f == "auto") && !self.flags.iter().any(|f| f == "in-use")
    }
}

fn in_dir(path: &Path) -> Command {
    let mut cmd = Command::new("qemu-img");
    if let Some(d) = path.parent() {
        cmd.current_dir(d);
    }
    cmd
}

/// The bitmaps of each image of the chain starting at `path` (top first), as
/// `qemu-img info --backing-chain` reports them.
pub fn chain_bitmaps(path: &Path) -> Result<Vec<Vec<Bitmap>>, StorageError> {
    let mut cmd = in_dir(path);
    cmd.args(["info", "--output=json", "--backing-chain", "-f", "qcow2"])
        .arg(path);
    let out = qemu::run(&mut cmd)?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| StorageError::QemuImg(format!("unexpected qemu-img info output: {e}")))?;
    let images = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    Ok(images.iter().map(bitmaps_of).collect())
}

/// The bitmaps of one image.
pub fn bitmaps(path: &Path) -> Result<Vec<Bitmap>, StorageError> {
    let mut cmd = in_dir(path);
    cmd.args(["info", "--output=json", "-f", "qcow2"]).arg(path);
    let out = qemu::run(&mut cmd)?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| StorageError::QemuImg(format!("unexpected qemu-img info output: {e}")))?;
    Ok(bitmaps_of(&v))
}

fn bitmaps_of(info: &serde_json::Value) -> Vec<Bitmap> {
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| Bitmap {
                    name: b["name"].as_str().unwrap_or_default().to_string(),
                    granularity: b["granularity"].as_u64().unwrap_or(0),
                    flags: b["flags"]
                        .as_array()
                        .map(|f| {
                            f.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `qemu-img bitmap --add --enable IMAGE NAME [-g GRANULARITY]`.
pub fn add_bitmap(
    path: &Path,
    name: &str,
    granularity: Option<u64>,
    stop: &dyn Fn() -> bool,
) -> Result<(), StorageError> {
    let mut cmd = in_dir(path);
    cmd.args(["bitmap", "--add", "--enable"])
        .arg(path)
        .arg(name);
    if let Some(g) = granularity.filter(|g| *g > 0) {
        cmd.arg("-g").arg(g.to_string());
    }
    qemu::run_stoppable(&mut cmd, stop).map(drop)
}

/// `qemu-img bitmap --remove IMAGE NAME`.
pub fn remove_bitmap(path: &Path, name: &str, stop: &dyn Fn() -> bool) -> Result<(), StorageError> {
    let mut cmd = in_dir(path);
    cmd.args(["bitmap", "--remove"]).arg(path).arg(name);
    qemu::run_stoppable(&mut cmd, stop).map(drop)
}

/// `qemu-img bitmap --merge NAME -F qcow2 -b SRC DST NAME`: ORs `src`'s bitmap into `dst`'s.
pub fn merge_bitmap(
    src: &Path,
    dst: &Path,
    name: &str,
    stop: &dyn Fn() -> bool,
) -> Result<(), StorageError> {
    let mut cmd = in_dir(src);
    cmd.args(["bitmap", "--merge", name, "-F", "qcow2", "-b"])
        .arg(src)
        .arg(dst)
        .arg(name);
    qemu::run_stoppable(&mut cmd, stop).map(drop)
}

/// `qemu-img amend -o compat=COMPAT IMAGE`.
pub fn amend_compat(
    path: &Path,
    compat: &str,
    stop: &dyn Fn() -> bool,
) -> Result<(), StorageError> {
    let mut cmd = in_dir(path);
    cmd.args(["amend", "-f", "qcow2", "-o"])
        .arg(format!("compat={compat}"))
        .arg(path);
    qemu::run_stoppable(&mut cmd, stop).map(drop)
}

/// `qemu-img info` of one qcow2 (its backing file is not opened).
fn info(path: &Path) -> Result<serde_json::Value, StorageError> {
    let mut cmd = in_dir(path);
    cmd.args(["info", "--output=json", "-f", "qcow2"]).arg(path);
    let out = qemu::run(&mut cmd)?;
    serde_json::from_str(&out)
        .map_err(|e| StorageError::QemuImg(format!("unexpected qemu-img info output: {e}")))
}

/// The compat level of a qcow2 (`"0.10"` or `"1.1"`).
pub fn compat(path: &Path) -> Result<String, StorageError> {
    Ok(info(path)?["format-specific"]["data"]["compat"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// What decides whether a qcow2 file may be copied as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// `"0.10"` or `"1.1"`.
    pub compat: String,
    /// It has persistent bitmaps.
    pub has_bitmaps: bool,
    /// Its data is encrypted, lives in an external data file, or qemu marks it corrupt.
    pub unusual: bool,
}

/// The [`Summary`] of one qcow2.
pub fn summary(path: &Path) -> Result<Summary, StorageError> {
    let v = info(path)?;
    let data = &v["format-specific"]["data"];
    Ok(Summary {
        compat: data["compat"].as_str().unwrap_or_default().to_string(),
        has_bitmaps: data["bitmaps"].as_array().is_some_and(|b| !b.is_empty()),
        unusual: v["encrypted"] == true
            || !data["data-file"].is_null()
            || !data["encrypt"].is_null()
            || data["corrupt"] == true,
    })
}
