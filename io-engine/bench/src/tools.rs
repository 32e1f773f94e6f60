//! The contenders: how a tool is described, and the peers sdm's copy is compared with.

use std::path::{Path, PathBuf};

use crate::bench::Bench;

/// One contender in a case.
pub struct Tool {
    pub name: String,
    pub argv: Vec<String>,
    /// Output files: removed before each run (and created empty when `create`) and after the
    /// case. After sdm's first run the first one is compared with the case's source, if any.
    pub outputs: Vec<PathBuf>,
    pub create: bool,
    /// Whether this is the engine under test (ratios are against it).
    pub sdm: bool,
    /// Excluded from "best peer" (reference measurements such as the IO ceiling).
    pub reference: bool,
    /// Untimed command run before every run (e.g. refilling a volume before a wipe).
    pub setup: Option<Vec<String>>,
    /// After the first run this path must read as zeros over the case's bytes.
    pub check_zero: Option<PathBuf>,
    /// Bytes one run moves, when not the case's (the concurrent run copies eight images).
    pub bytes: Option<u64>,
    /// After the first run this command must succeed (e.g. `qemu-img compare` of an image
    /// output with its source), for sdm's runs and the peers' alike.
    pub verify: Option<Vec<String>>,
    /// A process outside the tool whose CPU time counts for it (the agent serving an RPC).
    pub extra_cpu_pid: Option<u32>,
}

impl Tool {
    /// A tool writing `dst` (if any); sdm's own runs get an empty destination created first.
    pub fn new(name: &str, argv: Vec<String>, dst: Option<&Path>, sdm: bool) -> Tool {
        Tool {
            name: name.to_string(),
            argv,
            outputs: dst.map(Path::to_path_buf).into_iter().collect(),
            create: sdm,
            sdm,
            reference: false,
            setup: None,
            check_zero: None,
            bytes: None,
            verify: None,
            extra_cpu_pid: None,
        }
    }
}

/// A path as an argument.
pub fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

/// `sh -c CMD`
pub fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.to_string()]
}

/// sdm against VDSM's qemu-img flags, the faster qemu-img flags, dd direct and cp; with the
/// IO ceilings (engine-shaped and fio) as references when `with_ceiling` and not on tmpfs.
pub fn copy_tools(b: &Bench, src: &Path, dst: &Path, with_ceiling: bool) -> Vec<Tool> {
    let (sp, dp) = (s(src), s(dst));
    let synced = |cmd: String| sh(&format!("{cmd} && sync -d {dp}"));
    let mut v = vec![
        Tool::new(
            "sdm copy",
            b.sdm("__copy", &[sp.clone(), dp.clone()]),
            Some(dst),
            true,
        ),
        Tool {
            sdm: false,
            ..Tool::new(
                "sdm copy (sync backend)",
                b.sdm(
                    "__copy",
                    &["--backend".into(), "sync".into(), sp.clone(), dp.clone()],
                ),
                Some(dst),
                true,
            )
        },
        Tool::new(
            "qemu-img -t none -T none (VDSM)",
            synced(format!(
                "qemu-img convert -p -t none -T none -f raw -O raw {sp} {dp}"
            )),
            Some(dst),
            false,
        ),
        Tool::new(
            "qemu-img ... -W -m 16",
            synced(format!(
                "qemu-img convert -p -t none -T none -W -m 16 -f raw -O raw {sp} {dp}"
            )),
            Some(dst),
            false,
        ),
        Tool::new(
            "dd bs=4M direct",
            synced(format!(
                "dd if={sp} of={dp} bs=4M iflag=direct oflag=direct status=none"
            )),
            Some(dst),
            false,
        ),
        Tool::new(
            "cp --sparse=always",
            synced(format!("cp --sparse=always {sp} {dp}")),
            Some(dst),
            false,
        ),
    ];
    if with_ceiling && !src.starts_with("/dev/shm") {
        let size = crate::image::size_of(src).unwrap_or(0);
        v.push(Tool {
            reference: true,
            ..Tool::new(
                "ceiling: engine IO, read A + write B",
                sh(&b
                    .sdm("__ceiling", &[sp.to_string(), dp.to_string()])
                    .join(" ")),
                Some(dst),
                false,
            )
        });
        if src.starts_with("/dev/") {
            // A block device: also the device's own limit (see cases/lv.rs).
            v.push(Tool {
                reference: true,
                ..Tool::new(
                    "ceiling: engine IO, 16 x 4 MiB",
                    sh(&format!("{} __ceiling --qd 16 --chunk 4m {sp} {dp}", b.exe)),
                    Some(dst),
                    false,
                )
            });
        }
        v.push(Tool {
            reference: true,
            ..Tool::new(
                "ceiling: fio read A + write B",
                sh(&format!(
                    "fio --output=/dev/null --direct=1 --ioengine=io_uring --bs=1M --iodepth=16 --fallocate=none \
                     --name=rd --rw=read --filename={sp} --size={size} \
                     --name=wr --rw=write --filename={dp} --size={size} && sync -d {dp}"
                )),
                Some(dst),
                false,
            )
        });
    }
    v
}
