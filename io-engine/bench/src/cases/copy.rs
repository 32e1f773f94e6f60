//! Copies: fully written, 10% sparse and empty sources on disk, and a full one on tmpfs (the
//! cost of checkpoints is `checkpoint.rs`).

use anyhow::{Context, Result};

use super::Fixture;
use crate::bench::Bench;
use crate::image::{make_image, MIB};
use crate::tools::copy_tools;

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
