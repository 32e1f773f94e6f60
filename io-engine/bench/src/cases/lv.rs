//! Block-domain data paths: copies between LVs, from a file to an LV and from an LV to a file,
//! and an LV wipe. The LVs live in a scratch VG (VDSM's 128 MiB extents) on a direct-IO loop
//! device over a sparse file in the bench directory, activated as the agent activates them
//! (`sdm_lvm::Activator`: device-mapper, or loop-mapped where the host has none). Peers:
//! `qemu-img convert` with VDSM's flags for a RAW block destination (`-t none -T none -n -W`),
//! `dd` direct, `blkdiscard -z`; the engine-shaped and fio IO ceilings over the same devices.
//! Root and lvm2 only: the cases say why they sit out otherwise.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sdm_lvm::{
    ActivationMode, Activator, ActiveLv, Devices, LvCreate, LvSize, Lvm, LvmConfig,
    PvCreateOptions, VgCreateOptions,
};

use super::Fixture;
use crate::bench::Bench;
use crate::image::{Loop, GIB, MIB};
use crate::tools::{copy_tools, s, sh, Tool};

/// A scratch VG with activated LVs; everything is undone on drop.
struct ScratchVg {
    lvm: Lvm,
    devs: Devices,
    name: String,
    active: Vec<ActiveLv>,
    _pv: Loop,
    file: PathBuf,
}

impl ScratchVg {
    /// LVs of `size` bytes each, named `lv0`, `lv1`, ...
    fn new(dir: &Path, count: usize, size: u64) -> Result<ScratchVg> {
        if !Path::new("/sbin/lvm").exists() {
            bail!("lvm2 is not installed");
        }
        let file = dir.join("pv.img");
        let _ = std::fs::remove_file(&file);
        // The LVs, two 128 MiB metadata areas, and room for rounding.
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(count as u64 * size + GIB))
            .context("PV file")?;
        let pv = Loop::attach(&file)?;
        let mode = ActivationMode::probe();
        let lvm = Lvm::new(LvmConfig {
            activation: mode.lvm_activation(),
            backup_dir: Some(dir.join("lvm")),
            ..LvmConfig::default()
        })?;
        let devs = Devices::new([&pv.0])?;
        let name = format!("sdm-bench-{}", std::process::id());
        let mut vg = ScratchVg {
            lvm,
            devs,
            name,
            active: Vec::new(),
            _pv: pv,
            file,
        };
        vg.lvm.pvcreate(&vg.devs, &PvCreateOptions::default())?;
        vg.lvm
            .vgcreate(&vg.devs, &vg.name, &VgCreateOptions::default())?;
        let activator = Activator::new(vg.lvm.clone(), mode, dir.join("activation"))?;
        for i in 0..count {
            let lv = format!("lv{i}");
            vg.lvm.lvcreate(
                &vg.devs,
                &vg.name,
                &LvCreate {
                    name: lv.clone(),
                    size: LvSize::Mib(size / MIB),
                    tags: Vec::new(),
                },
            )?;
            vg.active.push(activator.activate(&vg.devs, &vg.name, &lv)?);
        }
        eprintln!(
            "scratch VG {} on {}: {count} LVs of {} MiB, {} activation",
            vg.name,
            vg.devs,
            size / MIB,
            mode
        );
        Ok(vg)
    }

    fn lv(&self, i: usize) -> String {
        s(self.active[i].path())
    }
}

impl Drop for ScratchVg {
    fn drop(&mut self) {
        self.active.clear();
        if let Err(e) = self.lvm.vgremove(&self.devs, &self.name) {
            eprintln!("removing scratch VG {}: {e}", self.name);
        }
        let _ = self.lvm.pvremove(&self.devs);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The VG, or why the case sits out.
fn scratch(b: &Bench, count: usize, size: u64) -> Option<ScratchVg> {
    match ScratchVg::new(&b.dir, count, size) {
        Ok(vg) => Some(vg),
        Err(e) => {
            eprintln!("skipping the LV cases: {e:#} (they need root and lvm2)");
            None
        }
    }
}

/// Runs `dd` (untimed set-up), with direct IO on the output; `what` names it in the error.
fn dd(args: &[String], what: &str) -> Result<()> {
    let st = std::process::Command::new("dd")
        .args(args)
        .args(["oflag=direct", "status=none"])
        .status()
        .context("dd")?;
    if !st.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// Fills a device from the fixture's random image (untimed).
fn fill(dev: &str, fx: &Fixture) -> Result<()> {
    let args = [
        format!("if={}", fx.src_full.display()),
        format!("of={dev}"),
        "bs=4M".into(),
        "iflag=direct".into(),
    ];
    dd(&args, &format!("filling {dev}"))
}

/// Writes zeros over a destination LV once, untimed. The PV is a sparse file, so the first
/// write to each of its blocks allocates the block in the host's filesystem; a real LUN has no
/// such cost, and without this whichever tool ran first paid it alone.
fn allocate(dev: &str, n: u64) -> Result<()> {
    let args = [
        "if=/dev/zero".into(),
        format!("of={dev}"),
        format!("count={}", n.div_ceil(MIB)),
        "bs=1M".into(),
    ];
    dd(&args, &format!("writing zeros over {dev}"))
}

/// Copies onto a block device: sdm, qemu-img with VDSM's flags for a RAW block destination,
/// dd direct, and the IO ceilings.
fn to_block_tools(b: &Bench, src: &str, dst: &str, n: u64) -> Vec<Tool> {
    let synced = |cmd: String| sh(&format!("{cmd} && sync -d {dst}"));
    let d = PathBuf::from(dst);
    vec![
        Tool::new(
            "sdm copy",
            b.sdm("__copy", &[src.to_string(), dst.to_string()]),
            Some(&d),
            true,
        ),
        Tool::new(
            "qemu-img -t none -T none -n -W (VDSM)",
            synced(format!(
                "qemu-img convert -p -t none -T none -n -W -f raw -O raw {src} {dst}"
            )),
            Some(&d),
            false,
        ),
        Tool::new(
            "dd bs=4M direct",
            synced(format!(
                "dd if={src} of={dst} bs=4M iflag=direct oflag=direct status=none"
            )),
            Some(&d),
            false,
        ),
        Tool {
            reference: true,
            ..Tool::new(
                "ceiling: engine IO, read A + write B",
                sh(&b
                    .sdm("__ceiling", &[src.to_string(), dst.to_string()])
                    .join(" ")),
                Some(&d),
                false,
            )
        },
        // The device's own limit, whatever shape a copy has: the same streams with far more
        // bytes in flight (a copy at the defaults must come within 5 % of this too).
        Tool {
            reference: true,
            ..Tool::new(
                "ceiling: engine IO, 16 x 4 MiB",
                sh(&format!(
                    "{} __ceiling --qd 16 --chunk 4m {src} {dst}",
                    b.exe
                )),
                Some(&d),
                false,
            )
        },
        Tool {
            reference: true,
            ..Tool::new(
                "ceiling: fio read A + write B",
                sh(&format!(
                    "fio --output=/dev/null --direct=1 --ioengine=io_uring --bs=1M --iodepth=16 \
                     --name=rd --rw=read --filename={src} --size={n} \
                     --name=wr --rw=write --filename={dst} --size={n} && sync -d {dst}"
                )),
                Some(&d),
                false,
            )
        },
    ]
}

pub fn lv_to_lv(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let Some(vg) = scratch(b, 2, fx.n) else {
        return Ok(());
    };
    let (a, d) = (vg.lv(0), vg.lv(1));
    fill(&a, fx)?;
    allocate(&d, fx.n)?;
    let tools = to_block_tools(b, &a, &d, fx.n);
    b.case("LV -> LV copy", fx.n, tools, Some(&fx.src_full))
}

pub fn file_to_lv(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let Some(vg) = scratch(b, 1, fx.n) else {
        return Ok(());
    };
    allocate(&vg.lv(0), fx.n)?;
    let tools = to_block_tools(b, &s(&fx.src_full), &vg.lv(0), fx.n);
    b.case("file -> LV copy", fx.n, tools, Some(&fx.src_full))
}

pub fn lv_to_file(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let Some(vg) = scratch(b, 1, fx.n) else {
        return Ok(());
    };
    let a = vg.lv(0);
    fill(&a, fx)?;
    let mut tools = copy_tools(b, Path::new(&a), &fx.dst, true);
    // Sparse-aware copying has nothing to find on a device.
    tools.retain(|t| !t.name.starts_with("cp"));
    b.case("LV -> file copy", fx.n, tools, Some(&fx.src_full))
}

pub fn lv_wipe(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let Some(vg) = scratch(b, 1, fx.n) else {
        return Ok(());
    };
    let dev = vg.lv(0);
    let refill = sh(&format!(
        "dd if={} of={dev} bs=4M iflag=direct oflag=direct status=none",
        fx.src_full.display()
    ));
    let tools = vec![
        Tool {
            setup: Some(refill.clone()),
            check_zero: Some(PathBuf::from(&dev)),
            ..Tool::new(
                "sdm wipe",
                b.sdm("__wipe", std::slice::from_ref(&dev)),
                None,
                true,
            )
        },
        Tool {
            setup: Some(refill),
            ..Tool::new(
                "blkdiscard -z",
                vec!["blkdiscard".into(), "-z".into(), dev.clone()],
                None,
                false,
            )
        },
    ];
    b.case("LV wipe", fx.n, tools, None)
}
