//! sdm-bench: times sdm's copy, wipe and checksum against the peer tools, side by side.
//!
//! ```text
//! cargo build --release -p sdm-bench
//! target/release/sdm-bench [--quick] [--dir DIR] [--runs N] [--only CASES] [--sweep]
//!     [--qd N] [--chunk SIZE] [--keep]
//! ```
//!
//! Builds its own images under DIR (default /tmp/sdm-bench; up to ~20 GiB) and /dev/shm, runs
//! every tool as a child process, alternating tools within each round, and prints per tool the
//! median wall seconds (including a trailing `sync -d` of file destinations), CPU seconds
//! (user+sys, from wait4) per GiB, peak RSS, and sdm's speed ratio to it. Page cache is dropped
//! before each run when running as root. Needs fio, qemu-img, coreutils, util-linux.
//!
//! The engine under test runs as this same binary in a hidden mode (`__copy SRC DST`,
//! `__wipe PATH`, `__checksum PATH`, `__multi SRC DST [SRC DST]...`, each with optional
//! `--qd N --chunk SIZE --backend sync|uring --step SIZE`), so it is timed like the peers.
//!
//! Files: `cli.rs` (flags and modes), `child.rs` (the modes), `bench.rs` (settings and the
//! runner), `tools.rs` (contenders and peers), `cases/` (one file per kind of case; the list
//! in `cases/mod.rs`), `sweep.rs`, `ceiling.rs` (the IO ceiling), `measure.rs` (wait4, caches),
//! `image.rs` (images, loop devices), `report.rs` (tables and targets).

mod agent;
mod bench;
mod cases;
mod ceiling;
mod checkpoint;
mod child;
mod cli;
mod image;
mod measure;
mod report;
mod sweep;
mod tools;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let cmd = cli::Cli::command()
        .after_help(format!("Cases (for --only): {}", cases::names().join(", ")));
    let cli = cli::Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit());
    match cli.child {
        Some(child) => {
            let mode = child.name();
            match child::run(child) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sdm-bench {mode}: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match bench::Bench::new(cli.bench).and_then(bench::Bench::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sdm-bench: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
