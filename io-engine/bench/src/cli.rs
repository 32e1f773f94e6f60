//! Command line: the bench's own flags, and the hidden `__*` modes in which it runs the engine
//! under test (and a few helpers) as a child process of itself.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "sdm-bench",
    version,
    about = "Times sdm's copy, wipe and checksum against the peer tools, side by side",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub child: Option<Child>,
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// How the bench runs (`sdm-bench [OPTIONS]`).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// 1 GiB images and 3 runs per tool instead of 4 GiB and 5.
    #[arg(long)]
    pub quick: bool,
    /// Where the images go (up to ~20 GiB); removed at the end unless --keep.
    #[arg(long, default_value = "/tmp/sdm-bench")]
    pub dir: PathBuf,
    /// Size of the main images, e.g. 2G (default: 4 GiB, 1 GiB with --quick), for a disk
    /// with less room than the cases need.
    #[arg(long, value_parser = size_bytes)]
    pub size: Option<u64>,
    /// Runs per tool (0 = the default: 3 with --quick, else 5).
    #[arg(long, default_value_t = 0)]
    pub runs: usize,
    /// Comma-separated cases to run (default: all; the names are listed below).
    #[arg(long, value_delimiter = ',', value_name = "CASES")]
    pub only: Option<Vec<String>>,
    /// Time sdm copies over a grid of queue depths and chunk sizes instead of the cases.
    #[arg(long)]
    pub sweep: bool,
    /// Queue depth for sdm's runs (default: the engine's).
    #[arg(long, value_name = "N")]
    pub qd: Option<u32>,
    /// Chunk size for sdm's runs, e.g. 1M or 262144 (default: the engine's).
    #[arg(long, value_name = "SIZE", value_parser = size_text)]
    pub chunk: Option<String>,
    /// Keep the images and the tmpfs copies.
    #[arg(long)]
    pub keep: bool,
}

impl BenchArgs {
    /// The engine flags handed on to every sdm child run.
    pub fn engine_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(qd) = self.qd {
            v.extend(["--qd".to_string(), qd.to_string()]);
        }
        if let Some(c) = &self.chunk {
            v.extend(["--chunk".to_string(), c.clone()]);
        }
        v
    }
}

/// The modes the bench runs itself in; each is timed like a peer tool.
#[derive(Subcommand, Debug)]
pub enum Child {
    /// Copy SRC to DST with the engine.
    #[command(name = "__copy", hide = true)]
    Copy {
        #[command(flatten)]
        engine: EngineArgs,
        src: PathBuf,
        dst: PathBuf,
    },
    /// Wipe PATH with the engine.
    #[command(name = "__wipe", hide = true)]
    Wipe {
        #[command(flatten)]
        engine: EngineArgs,
        path: PathBuf,
    },
    /// Print the engine's checksum of PATH.
    #[command(name = "__checksum", hide = true)]
    Checksum {
        #[command(flatten)]
        engine: EngineArgs,
        path: PathBuf,
    },
    /// Copy SRC DST pairs concurrently, one thread each, with one engine.
    #[command(name = "__multi", hide = true)]
    Multi {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(required = true, num_args = 2.., value_name = "SRC DST")]
        pairs: Vec<PathBuf>,
    },
    /// Convert LAYERs (`raw:PATH` or `qcow2:PATH`, top first) into DST with the engine.
    #[command(name = "__convert", hide = true)]
    Convert {
        #[command(flatten)]
        engine: EngineArgs,
        /// Format of DST.
        #[arg(long, value_enum)]
        to: Fmt,
        /// DST is an existing qcow2 on this backing file (a qcow2 next to it): top-only.
        #[arg(long)]
        backing: Option<String>,
        dst: PathBuf,
        #[arg(required = true, value_name = "LAYER")]
        layers: Vec<String>,
    },
    /// Commit TOP (a qcow2 on BASE) into BASE with the engine.
    #[command(name = "__commit", hide = true)]
    Commit {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(long, value_enum)]
        base_format: Fmt,
        top: PathBuf,
        base: PathBuf,
    },
    /// `SDM.copy_data` through the agent at URL (PARAMS: the call's JSON parameters), until
    /// the job is done.
    #[command(name = "__agent_copy", hide = true)]
    AgentCopy { url: String, params: String },
    /// The IO ceiling: read SRC while writing as many bytes to DST.
    #[command(name = "__ceiling", hide = true)]
    Ceiling {
        #[command(flatten)]
        engine: EngineArgs,
        src: PathBuf,
        dst: PathBuf,
    },
    /// Touch and free BYTES of memory.
    #[command(name = "__pretouch", hide = true)]
    Pretouch {
        #[arg(value_parser = size_bytes)]
        bytes: u64,
    },
}

impl Child {
    /// The mode's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Child::Copy { .. } => "__copy",
            Child::Wipe { .. } => "__wipe",
            Child::Checksum { .. } => "__checksum",
            Child::Multi { .. } => "__multi",
            Child::Convert { .. } => "__convert",
            Child::Commit { .. } => "__commit",
            Child::AgentCopy { .. } => "__agent_copy",
            Child::Ceiling { .. } => "__ceiling",
            Child::Pretouch { .. } => "__pretouch",
        }
    }
}

/// Engine settings of a child run; unset ones keep the engine's defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct EngineArgs {
    #[arg(long)]
    pub qd: Option<u32>,
    #[arg(long, value_parser = size_bytes)]
    pub chunk: Option<u64>,
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Bytes per BLKZEROOUT request of a wipe.
    #[arg(long, value_parser = size_bytes)]
    pub step: Option<u64>,
    /// Checkpoint a copy every this many milliseconds, at the agent's cost per checkpoint.
    #[arg(long)]
    pub checkpoint_ms: Option<u64>,
}

/// An image format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Raw,
    Qcow2,
}

impl Fmt {
    pub fn image(self) -> sdm_io::ImageFormat {
        match self {
            Fmt::Raw => sdm_io::ImageFormat::Raw,
            Fmt::Qcow2 => sdm_io::ImageFormat::Qcow2,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sync,
    Uring,
}

/// A size with an optional K/M/G/T unit, in bytes (`sdm_proto`'s one size parser).
fn size_bytes(s: &str) -> Result<u64, String> {
    sdm_proto::parse_human_size(s)
}

/// A valid size, kept as typed: it is handed on to the child runs and shown in the header.
fn size_text(s: &str) -> Result<String, String> {
    size_bytes(s).map(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sdm-bench").chain(args.iter().copied()))
    }

    #[test]
    fn bench_flags() {
        let c = parse(&[
            "--quick",
            "--runs",
            "2",
            "--only",
            "full,wipe",
            "--chunk",
            "4m",
            "--qd",
            "16",
        ])
        .unwrap();
        assert!(c.child.is_none());
        let b = c.bench;
        assert!(b.quick && !b.sweep && !b.keep);
        assert_eq!(b.runs, 2);
        assert_eq!(b.only, Some(vec!["full".into(), "wipe".into()]));
        assert_eq!(b.engine_args(), ["--qd", "16", "--chunk", "4m"]);
        assert!(parse(&["--chunk", "4X"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn child_modes_take_engine_flags_anywhere() {
        let c = parse(&[
            "__copy",
            "--backend",
            "sync",
            "/a",
            "--qd",
            "4",
            "--chunk",
            "256k",
            "/b",
        ])
        .unwrap();
        match c.child {
            Some(Child::Copy { engine, src, dst }) => {
                assert_eq!((src, dst), ("/a".into(), "/b".into()));
                assert_eq!(engine.backend, Some(Backend::Sync));
                assert_eq!((engine.qd, engine.chunk), (Some(4), Some(256 << 10)));
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["__wipe", "--step", "1073741824", "/dev/loop0"]).unwrap();
        assert!(
            matches!(c.child, Some(Child::Wipe { engine, .. }) if engine.step == Some(1 << 30))
        );
        let c = parse(&["__multi", "/a", "/b", "/c", "/d"]).unwrap();
        assert!(matches!(c.child, Some(Child::Multi { pairs, .. }) if pairs.len() == 4));
        assert!(parse(&["__pretouch", "2G"]).is_ok());
        assert!(parse(&["__copy", "/a"]).is_err());
        // A bench flag is not a child flag.
        assert!(parse(&["__copy", "--quick", "/a", "/b"]).is_err());
    }
}
