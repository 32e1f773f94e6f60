//! The engine under test, run by the bench as a child process of itself so that it is timed
//! (wall, CPU, peak RSS) exactly like the peer tools.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sdm_io::{BackendChoice, Control, CopyOptions, Engine, EngineConfig, WipeOptions};

use crate::ceiling::ceiling;
use crate::cli::{Backend, Child, EngineArgs};

pub fn run(child: Child) -> Result<()> {
    let mode = child.name();
    let (engine_args, op) = match child {
        Child::Ceiling { src, dst } => return ceiling(&src, &dst),
        Child::Pretouch { bytes } => return pretouch(bytes),
        Child::Copy { engine, src, dst } => (engine, Op::Copy(src, dst)),
        Child::Multi { engine, pairs } => {
            if pairs.len() % 2 != 0 {
                bail!("__multi takes SRC DST pairs, got {} paths", pairs.len());
            }
            let pairs = pairs
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            (engine, Op::Multi(pairs))
        }
        Child::Wipe { engine, path } => (engine, Op::Wipe(path)),
        Child::Checksum { engine, path } => (engine, Op::Checksum(path)),
    };
    let (cfg, wipe) = config(&engine_args)?;
    let engine = Engine::new(cfg);
    let started = Instant::now();
    let r = op.run(&engine, &wipe);
    // Goes to the tool log: the operation's own time, without process start-up.
    eprintln!(
        "{mode}: {:.6} s in the engine",
        started.elapsed().as_secs_f64()
    );
    r
}

fn config(a: &EngineArgs) -> Result<(EngineConfig, WipeOptions)> {
    let mut cfg = EngineConfig::default();
    let mut wipe = WipeOptions::default();
    if let Some(qd) = a.qd {
        cfg.queue_depth = qd;
    }
    if let Some(c) = a.chunk {
        cfg.chunk_size = usize::try_from(c).context("--chunk does not fit in memory")?;
    }
    if let Some(s) = a.step {
        wipe.step = s;
    }
    match a.backend {
        Some(Backend::Sync) => cfg.backend = BackendChoice::Sync,
        Some(Backend::Uring) => cfg.backend = BackendChoice::IoUring,
        None => {}
    }
    Ok((cfg, wipe))
}

enum Op {
    Copy(PathBuf, PathBuf),
    Multi(Vec<(PathBuf, PathBuf)>),
    Wipe(PathBuf),
    Checksum(PathBuf),
}

impl Op {
    fn run(self, engine: &Engine, wipe: &WipeOptions) -> Result<()> {
        let ctl = Control::new();
        match self {
            Op::Copy(src, dst) => {
                engine
                    .copy(&src, &dst, &CopyOptions::default(), &ctl)
                    .map_err(io)?;
            }
            Op::Wipe(p) => {
                engine.wipe(&p, wipe, &ctl).map_err(io)?;
            }
            Op::Checksum(p) => {
                let sum = engine.checksum(&p, &ctl).map_err(io)?;
                println!("{sum}  {}", p.display());
            }
            Op::Multi(pairs) => std::thread::scope(|s| {
                let jobs: Vec<_> = pairs
                    .iter()
                    .map(|(src, dst)| {
                        let e = engine.clone();
                        s.spawn(move || e.copy(src, dst, &CopyOptions::default(), &Control::new()))
                    })
                    .collect();
                jobs.into_iter().try_for_each(|j| {
                    j.join()
                        .map_err(|_| anyhow::anyhow!("copy thread panicked"))?
                        .map(drop)
                        .map_err(io)
                })
            })?,
        }
        Ok(())
    }
}

/// An engine error as its message, which already includes its cause.
fn io(e: sdm_io::IoError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Touches (and frees) `bytes` of memory; see `measure::pretouch` for why.
fn pretouch(bytes: u64) -> Result<()> {
    let n = usize::try_from(bytes).context("__pretouch: size does not fit in memory")?;
    let v = vec![1u8; n];
    std::hint::black_box(&v);
    Ok(())
}
