//! The bench cases, run in the order of [`CASES`].
//!
//! Adding a case: write `fn(&mut Bench, &Fixture) -> Result<()>` in a file of this directory
//! (build its inputs, describe its tools, call [`Bench::case`], clean up) and add one line to
//! [`CASES`]. Targets that judge it go in `report.rs`.

use anyhow::Result;

use crate::bench::Bench;
use crate::image::make_image;

mod agent;
mod checkpoint;
mod checksum;
mod concurrent;
mod copy;
mod lv;
mod qcow2;
mod wipe;

/// Inputs shared by the cases.
pub struct Fixture {
    /// Size of the main images.
    pub n: u64,
    /// A fully written random image of `n` bytes (exists while a case that needs it runs).
    pub src_full: std::path::PathBuf,
    /// The usual copy destination.
    pub dst: std::path::PathBuf,
}

pub struct Case {
    /// Name for `--only`.
    pub name: &'static str,
    /// Needs `Fixture::src_full`, which is built before the first such case and removed
    /// after the last.
    pub full_image: bool,
    pub run: fn(&mut Bench, &Fixture) -> Result<()>,
}

pub const CASES: &[Case] = &[
    Case {
        name: "full",
        full_image: true,
        run: copy::full,
    },
    Case {
        name: "sparse",
        full_image: false,
        run: copy::sparse,
    },
    Case {
        name: "empty",
        full_image: false,
        run: copy::empty,
    },
    Case {
        name: "checkpoint",
        full_image: true,
        run: checkpoint::run,
    },
    Case {
        name: "checksum",
        full_image: true,
        run: checksum::run,
    },
    Case {
        name: "wipe",
        full_image: true,
        run: wipe::file,
    },
    Case {
        name: "blkwipe",
        full_image: true,
        run: wipe::block,
    },
    Case {
        name: "lvcopy",
        full_image: true,
        run: lv::lv_to_lv,
    },
    Case {
        name: "file2lv",
        full_image: true,
        run: lv::file_to_lv,
    },
    Case {
        name: "lv2file",
        full_image: true,
        run: lv::lv_to_file,
    },
    Case {
        name: "lvwipe",
        full_image: true,
        run: lv::lv_wipe,
    },
    Case {
        name: "tmpfs",
        full_image: true,
        run: copy::tmpfs,
    },
    Case {
        name: "concurrent",
        full_image: false,
        run: concurrent::run,
    },
    Case {
        name: "raw2qcow2",
        full_image: true,
        run: qcow2::raw_to_qcow2,
    },
    Case {
        name: "qcow22raw",
        full_image: false,
        run: qcow2::qcow2_to_raw,
    },
    Case {
        name: "qcow2b",
        full_image: false,
        run: qcow2::top_only,
    },
    Case {
        name: "chain",
        full_image: false,
        run: qcow2::chain,
    },
    Case {
        name: "merge",
        full_image: false,
        run: qcow2::merge,
    },
    Case {
        name: "zlib",
        full_image: false,
        run: qcow2::compressed,
    },
    Case {
        name: "qcow2sparse",
        full_image: false,
        run: qcow2::sparse_qcow2,
    },
];

pub fn names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

/// Runs every case the bench wants, in order.
pub fn run_all(b: &mut Bench) -> Result<()> {
    let fx = Fixture {
        n: b.size(),
        src_full: b.dir.join("src_full.raw"),
        dst: b.dir.join("dst.raw"),
    };
    let wanted: Vec<&Case> = CASES.iter().filter(|c| b.wants(c.name)).collect();
    let last_full = wanted.iter().rposition(|c| c.full_image);
    if last_full.is_some() {
        eprintln!("building images ...");
        make_image(&fx.src_full, fx.n, 1, |_| true)?;
    }
    for (i, case) in wanted.iter().enumerate() {
        (case.run)(b, &fx)?;
        if Some(i) == last_full {
            let _ = std::fs::remove_file(&fx.src_full);
        }
    }
    let _ = std::fs::remove_file(&fx.dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique() {
        let mut n = names();
        n.sort_unstable();
        n.dedup();
        assert_eq!(n.len(), CASES.len());
    }
}
