//! The engine under test, run by the bench as a child process of itself so that it is timed
//! (wall, CPU, peak RSS) exactly like the peer tools.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sdm_io::{
    BackendChoice, BackingFile, CommitOptions, Control, ConvertDest, ConvertOptions, CopyOptions,
    DestFormat, Engine, EngineConfig, ImageFormat, Layer, Qcow2Options, WipeOptions,
};

use crate::ceiling::ceiling;
use crate::cli::{Backend, Child, EngineArgs, Fmt};

pub fn run(child: Child) -> Result<()> {
    let mode = child.name();
    let (engine_args, op) = match child {
        Child::Ceiling { engine, src, dst } => {
            let (cfg, _) = config(&engine)?;
            return ceiling(&cfg, &src, &dst);
        }
        Child::Pretouch { bytes } => return pretouch(bytes),
        Child::Copy { engine, src, dst } => {
            let every = engine.checkpoint_ms;
            (engine, Op::Copy(src, dst, every))
        }
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
        Child::Convert {
            engine,
            to,
            backing,
            dst,
            layers,
        } => (engine, Op::Convert(convert_job(to, backing, dst, &layers)?)),
        Child::Commit {
            engine,
            base_format,
            top,
            base,
        } => (engine, Op::Commit(top, base, base_format)),
        Child::AgentCopy { url, params } => return crate::agent::copy(&url, &params),
        Child::Checksum { engine, path } => (engine, Op::Checksum(path)),
    };
    let (cfg, wipe) = config(&engine_args)?;
    let engine = Engine::new(cfg);
    let started = Instant::now();
    let r = op.run(&engine, &wipe);
    // Goes to the tool log: the operation's own time, without process start-up. Not
    // eprintln!, which panics when the log cannot be written (a full disk).
    let _ = writeln!(
        std::io::stderr(),
        "{mode}: {:.6} s in the engine",
        started.elapsed().as_secs_f64()
    );
    r
}

fn config(a: &EngineArgs) -> Result<(EngineConfig, WipeOptions)> {
    let mut cfg = EngineConfig::default();
    let mut wipe = WipeOptions::default();
    // An override applies whatever the devices are, block or not.
    if let Some(qd) = a.qd {
        cfg.queue_depth = qd;
        cfg.block_queue_depth = qd;
    }
    if let Some(c) = a.chunk {
        cfg.chunk_size = usize::try_from(c).context("--chunk does not fit in memory")?;
        cfg.block_chunk_size = cfg.chunk_size;
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
    /// Source, destination, checkpoint interval in milliseconds.
    Copy(PathBuf, PathBuf, Option<u64>),
    Convert(Box<(Vec<Layer>, ConvertDest)>),
    Commit(PathBuf, PathBuf, Fmt),
    Multi(Vec<(PathBuf, PathBuf)>),
    Wipe(PathBuf),
    Checksum(PathBuf),
}

impl Op {
    fn run(self, engine: &Engine, wipe: &WipeOptions) -> Result<()> {
        let ctl = Control::new();
        match self {
            Op::Copy(src, dst, every) => {
                let opts = CopyOptions {
                    checkpoint: every.map(|ms| crate::checkpoint::hook(&src, &dst, ms)),
                    ..Default::default()
                };
                let r = engine.copy(&src, &dst, &opts, &ctl).map_err(io)?;
                let _ = std::fs::remove_file(crate::checkpoint::side_file(&dst));
                let st = r.checkpoints;
                // Read back by the checkpoint case (`cases/checkpoint.rs`).
                let _ = writeln!(
                    std::io::stderr(),
                    "{}{}, work {:.6} s, blocked {:.6} s",
                    crate::checkpoint::STATS_LINE,
                    st.count,
                    st.work.as_secs_f64(),
                    st.blocked.as_secs_f64()
                );
            }
            Op::Wipe(p) => {
                engine.wipe(&p, wipe, &ctl).map_err(io)?;
            }
            Op::Convert(job) => {
                let (layers, dst) = *job;
                let r = engine
                    .convert(&layers, &dst, &ConvertOptions::default(), &ctl)
                    .map_err(io)?;
                let _ = writeln!(std::io::stderr(), "__convert: {:?}", r.converter);
            }
            Op::Commit(top, base, base_format) => {
                let top = Layer {
                    path: top,
                    format: ImageFormat::Qcow2,
                };
                let base = Layer {
                    path: base,
                    format: base_format.image(),
                };
                let r = engine
                    .commit(&top, &base, &CommitOptions::default(), &ctl)
                    .map_err(io)?;
                let _ = writeln!(std::io::stderr(), "__commit: {:?}", r.converter);
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

/// The chain and destination of `__convert`: layers `FMT:PATH`, top first; with a backing
/// file DST exists already (top-only), without one it is made anew.
fn convert_job(
    to: Fmt,
    backing: Option<String>,
    dst: PathBuf,
    layers: &[String],
) -> Result<Box<(Vec<Layer>, ConvertDest)>> {
    let layers = layers
        .iter()
        .map(|l| {
            let (f, p) = l
                .split_once(':')
                .with_context(|| format!("layer {l:?} is not FMT:PATH"))?;
            let format = match f {
                "raw" => ImageFormat::Raw,
                "qcow2" => ImageFormat::Qcow2,
                _ => bail!("layer format {f:?} is not raw or qcow2"),
            };
            Ok(Layer {
                path: p.into(),
                format,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let create = backing.is_none();
    let format = match to {
        Fmt::Raw => DestFormat::Raw,
        Fmt::Qcow2 => DestFormat::Qcow2(Qcow2Options {
            backing: backing.map(|name| BackingFile {
                name,
                format: ImageFormat::Qcow2,
            }),
            ..Default::default()
        }),
    };
    let dst = ConvertDest {
        path: dst,
        format,
        size: None,
        create,
        reads_zero: true,
    };
    Ok(Box::new((layers, dst)))
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
