//! Wipes of a fully written volume, refilled (untimed) before every run: a file, against dd
//! from /dev/zero, and a loop device, against `blkdiscard -z`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Fixture;
use crate::bench::Bench;
use crate::image::{Loop, MIB};
use crate::tools::{s, sh, Tool};

pub fn file(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let v = b.dir.join("wipe.raw");
    std::fs::copy(&fx.src_full, &v).context("copy wipe image")?;
    let refill = sh(&format!(
        "dd if={} of={} bs=4M iflag=direct oflag=direct conv=notrunc status=none",
        fx.src_full.display(),
        v.display()
    ));
    let dd = format!(
        "dd if=/dev/zero of={v} bs=4M count={} oflag=direct conv=notrunc status=none && sync -d {v}",
        fx.n / (4 * MIB),
        v = v.display()
    );
    let tools = vec![
        Tool {
            setup: Some(refill.clone()),
            check_zero: Some(v.clone()),
            ..Tool::new("sdm wipe", b.sdm("__wipe", &[s(&v)]), None, true)
        },
        Tool {
            setup: Some(refill),
            ..Tool::new("dd if=/dev/zero oflag=direct", sh(&dd), None, false)
        },
    ];
    b.case("wipe (file, real zero writes)", fx.n, tools, None)?;
    let _ = std::fs::remove_file(&v);
    Ok(())
}

pub fn block(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let v = b.dir.join("blkwipe.raw");
    std::fs::copy(&fx.src_full, &v).context("copy wipe image")?;
    let dev = Loop::attach(&v)?;
    let refill = sh(&format!(
        "dd if={} of={} bs=4M iflag=direct oflag=direct status=none",
        fx.src_full.display(),
        dev.0
    ));
    let tools = vec![
        Tool {
            setup: Some(refill.clone()),
            check_zero: Some(PathBuf::from(&dev.0)),
            ..Tool::new(
                "sdm wipe",
                b.sdm("__wipe", std::slice::from_ref(&dev.0)),
                None,
                true,
            )
        },
        Tool {
            setup: Some(refill.clone()),
            ..Tool::new(
                "blkdiscard -z",
                vec!["blkdiscard".into(), "-z".into(), dev.0.clone()],
                None,
                false,
            )
        },
        // One BLKZEROOUT for the whole device: how much the step size costs.
        Tool {
            setup: Some(refill),
            reference: true,
            sdm: false,
            ..Tool::new(
                "sdm wipe, one step (reference)",
                b.sdm(
                    "__wipe",
                    &["--step".into(), fx.n.to_string(), dev.0.clone()],
                ),
                None,
                true,
            )
        },
    ];
    b.case("wipe (loop device)", fx.n, tools, None)?;
    drop(dev);
    let _ = std::fs::remove_file(&v);
    Ok(())
}
