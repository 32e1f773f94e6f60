//! `--sweep`: sdm copies over a grid of queue depths and chunk sizes, on disk and on tmpfs,
//! with both backends.

use anyhow::{Context, Result};

use crate::bench::Bench;
use crate::image::make_image;
use crate::tools::{s, Tool};

const GRID: &[(u32, &str)] = &[
    (2, "1m"),
    (4, "1m"),
    (8, "1m"),
    (16, "1m"),
    (32, "1m"),
    (4, "4m"),
    (8, "4m"),
    (8, "256k"),
    (32, "256k"),
];

pub fn run(b: &mut Bench) -> Result<()> {
    let n = b.size();
    let src = b.dir.join("src_full.raw");
    let dst = b.dir.join("dst.raw");
    make_image(&src, n, 1, |_| true)?;
    std::fs::create_dir_all(&b.shm).with_context(|| b.shm.display().to_string())?;
    let ssrc = b.shm.join("src.raw");
    let sdst = b.shm.join("dst.raw");
    std::fs::copy(&src, &ssrc).context("copy to tmpfs")?;
    for (where_, from, to) in [("disk", &src, &dst), ("tmpfs", &ssrc, &sdst)] {
        for backend in ["uring", "sync"] {
            let tools: Vec<Tool> = GRID
                .iter()
                .map(|(qd, chunk)| {
                    // The grid's own settings, not the bench's --qd/--chunk.
                    let argv = vec![
                        b.exe.clone(),
                        "__copy".into(),
                        "--backend".into(),
                        backend.into(),
                        "--qd".into(),
                        qd.to_string(),
                        "--chunk".into(),
                        chunk.to_string(),
                        s(from),
                        s(to),
                    ];
                    Tool::new(
                        &format!("{backend} qd {qd} chunk {chunk}"),
                        argv,
                        Some(to),
                        true,
                    )
                })
                .collect();
            b.case(&format!("sweep {where_} {backend}"), n, tools, None)?;
        }
    }
    Ok(())
}
