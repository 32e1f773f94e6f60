//! Argument builders shared by the commands; each checks names and tags before LVM sees
//! them.

use std::path::PathBuf;

use crate::error::LvmError;
use crate::names::check_name;
use crate::tags::check_tag;

pub(super) const NO_BACKUP: [&str; 2] = ["--autobackup", "n"];

pub(super) fn yn(b: bool) -> &'static str {
    if b {
        "y"
    } else {
        "n"
    }
}

pub(super) fn no_backup() -> Vec<String> {
    NO_BACKUP.iter().map(|s| s.to_string()).collect()
}

pub(super) fn path_args(paths: &[PathBuf]) -> impl Iterator<Item = String> + '_ {
    // `Devices` holds UTF-8 paths only.
    paths.iter().map(|p| p.to_string_lossy().into_owned())
}

pub(super) fn lv_path(vg: &str, lv: &str) -> Result<String, LvmError> {
    check_name("VG", vg)?;
    check_name("LV", lv)?;
    Ok(format!("{vg}/{lv}"))
}

pub(super) fn lv_paths<S: AsRef<str>>(vg: &str, lvs: &[S]) -> Result<Vec<String>, LvmError> {
    if lvs.is_empty() {
        return Err(LvmError::InvalidArgument("no LV given".into()));
    }
    lvs.iter().map(|lv| lv_path(vg, lv.as_ref())).collect()
}

pub(super) fn tag_args<S: AsRef<str>>(flag: &str, tags: &[S]) -> Result<Vec<String>, LvmError> {
    let mut args = Vec::with_capacity(tags.len() * 2);
    for tag in tags {
        check_tag(tag.as_ref())?;
        args.extend([flag.to_string(), tag.as_ref().to_string()]);
    }
    Ok(args)
}

pub(super) fn tag_change_args<S: AsRef<str>>(
    del: &[S],
    add: &[S],
) -> Result<Vec<String>, LvmError> {
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
