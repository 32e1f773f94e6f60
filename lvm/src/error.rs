//! Errors of the LVM layer: commands, reports, names and tags.
//!
//! Callers branch on the variant (or on [`LvmError::code`], a stable string for the wire);
//! every variant that comes from a finished command keeps its argv, exit status and stderr,
//! so the message an engine sees says what LVM said.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What a failed command left behind: its argv, how it ended and its stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The full argv, program first.
    pub argv: Vec<String>,
    /// Exit status; `None` when a signal ended the command.
    pub status: Option<i32>,
    /// stderr, trimmed, with LVM's routine warnings (see `exec::NOISE`) removed.
    pub stderr: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ", self.argv.join(" "))?;
        match self.status {
            Some(code) => write!(f, "exited with status {code}")?,
            None => write!(f, "was killed by a signal")?,
        }
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr.replace('\n', "; "))?;
        }
        Ok(())
    }
}

/// Errors of [`crate::Lvm`] and the helpers around it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LvmError {
    /// A VG, LV or PV named in the command does not exist on the given devices.
    #[error("Not found: {what} ({failure})")]
    NotFound { what: String, failure: Failure },
    /// The VG or LV to create already exists.
    #[error("Already exists: {what} ({failure})")]
    Exists { what: String, failure: Failure },
    /// The device or LV is held by something else (another VG, an open LV).
    #[error("In use: {what} ({failure})")]
    InUse { what: String, failure: Failure },
    /// The VG has not enough free extents for `what`.
    #[error("Not enough free space for {what} ({failure})")]
    NoSpace { what: String, failure: Failure },
    /// The command did not finish in time; it was killed.
    #[error("`{}` timed out after {timeout:?} and was killed{}", argv.join(" "), stderr_suffix(stderr))]
    Timeout {
        argv: Vec<String>,
        timeout: Duration,
        stderr: String,
    },
    /// The command failed for a reason not classified above.
    #[error("Command failed: {0}")]
    Command(Failure),
    /// The program could not be started (missing binary, no permission).
    #[error("Cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The command's output is not what this crate understands.
    #[error("Cannot parse the output of `{argv}`: {detail}")]
    Parse { argv: String, detail: String },
    /// A device given as a PV is not a block device.
    #[error("Not a block device: {}", path.display())]
    NotBlockDevice { path: PathBuf },
    /// A device path could not be inspected.
    #[error("Cannot inspect device {}", path.display())]
    Device {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A name, tag, size or device list this crate refuses before running anything.
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    /// An encoded tag holds an escape that is no Unicode scalar value.
    #[error("Invalid tag encoding in {tag:?}: {detail}")]
    TagEncoding { tag: String, detail: String },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.replace('\n', "; "))
    }
}

impl LvmError {
    /// A stable name for the error kind, for logs and the agent's wire mapping.
    pub fn code(&self) -> &'static str {
        match self {
            LvmError::NotFound { .. } => "NotFound",
            LvmError::Exists { .. } => "Exists",
            LvmError::InUse { .. } => "InUse",
            LvmError::NoSpace { .. } => "NoSpace",
            LvmError::Timeout { .. } => "Timeout",
            LvmError::Command(_) => "Command",
            LvmError::Spawn { .. } => "Spawn",
            LvmError::Parse { .. } => "Parse",
            LvmError::NotBlockDevice { .. } => "NotBlockDevice",
            LvmError::Device { .. } => "Device",
            LvmError::InvalidArgument(_) => "InvalidArgument",
            LvmError::TagEncoding { .. } => "TagEncoding",
        }
    }

    /// The failed command's record, when the error came from a finished command.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            LvmError::NotFound { failure, .. }
            | LvmError::Exists { failure, .. }
            | LvmError::InUse { failure, .. }
            | LvmError::NoSpace { failure, .. }
            | LvmError::Command(failure) => Some(failure),
            _ => None,
        }
    }

    /// Sorts a failed LVM command by what its stderr says. LVM's exit status is 5 for
    /// nearly everything, so the text is the only signal; the tools run with `LC_ALL=C`.
    /// `what` names the object the caller was working on.
    pub(crate) fn classify(what: &str, failure: Failure) -> LvmError {
        let err = failure.stderr.as_str();
        let what = what.to_string();
        if err.contains("insufficient free space") || err.contains("Insufficient free space") {
            return LvmError::NoSpace { what, failure };
        }
        if err.contains("already exists") {
            return LvmError::Exists { what, failure };
        }
        const IN_USE: [&str; 6] = [
            "in use",
            "of volume group",
            "is used by a VG",
            "Can't initialize PV",
            "is already in volume group",
            "open and cannot be",
        ];
        if IN_USE.iter().any(|p| err.contains(p)) {
            return LvmError::InUse { what, failure };
        }
        // Not "Cannot process volume group": LVM also says that when it gave up on a lock.
        const NOT_FOUND: [&str; 5] = [
            "not found",
            "Failed to find logical volume",
            "Failed to find physical volume",
            "No device found for",
            "does not exist",
        ];
        if NOT_FOUND.iter().any(|p| err.contains(p)) {
            return LvmError::NotFound { what, failure };
        }
        LvmError::Command(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stderr: &str) -> Failure {
        Failure {
            argv: vec!["lvm".into(), "vgs".into()],
            status: Some(5),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn classify_maps_lvm_2_03_messages_to_kinds() {
        // Messages as Debian 12's lvm2 2.03.16 prints them.
        let cases = [
            ("  Volume group \"vg1\" not found\n  Cannot process volume group vg1", "NotFound"),
            ("  Failed to find logical volume \"vg/lv\"", "NotFound"),
            ("  A volume group called vg1 already exists.", "Exists"),
            ("  Logical Volume \"lv\" already exists in volume group \"vg\"", "Exists"),
            (
                "  Can't initialize physical volume \"/dev/loop0\" of volume group \"vg\" without -ff",
                "InUse",
            ),
            ("  PV /dev/loop1 is used by a VG but its metadata is missing.", "InUse"),
            (
                "  Volume group \"vg\" has insufficient free space (53 extents): 1024 required.",
                "NoSpace",
            ),
            ("  Logical volume vg/lv contains a filesystem in use.", "InUse"),
            ("  something else went wrong", "Command"),
            (
                "  Giving up waiting for lock.\n  Can't get lock for vg.\n  Cannot process volume group vg",
                "Command",
            ),
        ];
        for (stderr, code) in cases {
            assert_eq!(
                LvmError::classify("x", failed(stderr)).code(),
                code,
                "{stderr}"
            );
        }
    }

    #[test]
    fn failure_display_has_argv_status_and_stderr() {
        let text = LvmError::Command(failed("line one\nline two")).to_string();
        assert_eq!(
            text,
            "Command failed: `lvm vgs` exited with status 5: line one; line two"
        );
    }
}
