//! Copies: fully written, 10% sparse and empty sources on disk, a full one on tmpfs, and the
//! full one again with and without checkpoints (the cost of resumable copies).

use anyhow::{Context, Result};

use super::Fixture;
use crate::bench::Bench;
use crate::image::{make_image, MIB};
use crate::tools::{copy_tools, s, Tool};

pub fn full(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let tools = copy_tools(b, &fx.src_full, &fx.dst, true);
    b.case("full copy (disk)", fx.n, tools, Some(&fx.src_full))
}

pub fn sparse(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let src = b.dir.join("src_sparse.raw");
    make_image(&src, fx.n, 2, |off| off % (10 * MIB) == 0)?;
    let tools = copy_tools(b, &src, &fx.dst, false);
    b.case("10% sparse copy (disk)", fx.n, tools, Some(&src))?;
    let _ = std::fs::remove_file(&src);
    Ok(())
}

/// 1 TiB of holes: the cost of walking extents. dd would read every byte, so it sits out.
pub fn empty(b: &mut Bench, fx: &Fixture) -> Result<()> {
    const TIB: u64 = 1 << 40;
    let src = b.dir.join("src_empty.raw");
    std::fs::File::create(&src)
        .and_then(|f| f.set_len(TIB))
        .with_context(|| src.display().to_string())?;
    let mut tools = copy_tools(b, &src, &fx.dst, false);
    tools.retain(|t| !t.name.starts_with("dd"));
    b.case("1 TiB empty sparse copy (disk)", TIB, tools, None)?;
    let _ = std::fs::remove_file(&src);
    Ok(())
}

/// Source and destination in /dev/shm: no device, only the copy's own cost.
pub fn tmpfs(b: &mut Bench, fx: &Fixture) -> Result<()> {
    std::fs::create_dir_all(&b.shm).with_context(|| b.shm.display().to_string())?;
    let src = b.shm.join("src.raw");
    let dst = b.shm.join("dst.raw");
    std::fs::copy(&fx.src_full, &src).context("copy to tmpfs")?;
    let mut tools = copy_tools(b, &src, &dst, true);
    // Kept alive until the case is done.
    let mut agent = None;
    if let Some((a, t)) = super::agent::tmpfs_tool(b, &src, fx.n)? {
        tools.push(t);
        agent = Some(a);
    }
    let touch = fx.n.checked_mul(2).context("image size overflows")?;
    b.case_with("full copy (tmpfs)", fx.n, tools, Some(&src), Some(touch))?;
    drop(agent);
    let _ = std::fs::remove_dir_all(&b.shm);
    Ok(())
}

/// The full copy with checkpoints every 5 s (the agent's default) and every 1 s, against none,
/// in the same rounds; prints the overhead, which must stay under 1 % at the default.
pub fn checkpoints(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let (sp, dp) = (s(&fx.src_full), s(&fx.dst));
    let tool = |name: &str, ms: Option<u64>| {
        let mut extra = Vec::new();
        if let Some(ms) = ms {
            extra.extend(["--checkpoint-ms".to_string(), ms.to_string()]);
        }
        extra.extend([sp.clone(), dp.clone()]);
        Tool::new(name, b.sdm("__copy", &extra), Some(&fx.dst), true)
    };
    let tools = vec![
        tool("sdm copy, no checkpoints", None),
        tool("sdm copy, checkpoint every 5 s", Some(5000)),
        tool("sdm copy, checkpoint every 1 s", Some(1000)),
    ];
    let case = "full copy with checkpoints (disk)";
    b.case(case, fx.n, tools, Some(&fx.src_full))?;
    let walls: Vec<f64> = b
        .rows
        .iter()
        .filter(|r| r.case == case)
        .map(|r| r.wall)
        .collect();
    if let [none, five, one] = walls[..] {
        println!(
            "# checkpoint overhead (median wall, same rounds): every 5 s {:+.2} % ({five:.3} s vs {none:.3} s), every 1 s {:+.2} % ({one:.3} s)",
            (five / none - 1.0) * 100.0,
            (one / none - 1.0) * 100.0
        );
    }
    Ok(())
}
