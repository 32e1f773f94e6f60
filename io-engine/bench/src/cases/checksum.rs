//! SHA-256 of the full image: sdm against sha256sum.

use anyhow::Result;

use super::Fixture;
use crate::bench::Bench;
use crate::tools::{s, Tool};

pub fn run(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let tools = vec![
        Tool::new(
            "sdm checksum",
            b.sdm("__checksum", &[s(&fx.src_full)]),
            None,
            true,
        ),
        Tool::new(
            "sha256sum",
            vec!["sha256sum".into(), s(&fx.src_full)],
            None,
            false,
        ),
    ];
    b.case("checksum (disk)", fx.n, tools, None)
}
