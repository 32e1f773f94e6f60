//! Eight copies at once in one engine against one copy alone: aggregate throughput and the
//! memory bound.

use anyhow::{Context, Result};

use super::Fixture;
use crate::bench::Bench;
use crate::image::{make_image, GIB, MIB};
use crate::tools::{s, Tool};

const COPIES: u64 = 8;

pub fn run(b: &mut Bench, _fx: &Fixture) -> Result<()> {
    let each = if b.quick { 256 * MIB } else { GIB };
    eprintln!("building {COPIES} images of {} MiB ...", each >> 20);
    let mut pairs = Vec::new();
    for i in 0..COPIES {
        let src = b.dir.join(format!("c_src{i}.raw"));
        make_image(&src, each, 10 + i, |_| true)?;
        pairs.push((src, b.dir.join(format!("c_dst{i}.raw"))));
    }
    let flat: Vec<String> = pairs.iter().flat_map(|(a, d)| [s(a), s(d)]).collect();
    let tools = vec![
        Tool::new(
            "1 copy alone",
            b.sdm("__copy", &flat[..2]),
            Some(&pairs[0].1),
            true,
        ),
        // Not `sdm`: the speed-up column compares one copy, not eight.
        Tool {
            outputs: pairs.iter().map(|p| p.1.clone()).collect(),
            create: true,
            sdm: false,
            bytes: Some(each.checked_mul(COPIES).context("image size overflows")?),
            ..Tool::new("8 concurrent copies", b.sdm("__multi", &flat), None, false)
        },
    ];
    let r = b.case("concurrency (disk)", each, tools, None);
    for (a, d) in &pairs {
        let _ = std::fs::remove_file(a);
        let _ = std::fs::remove_file(d);
    }
    r
}
