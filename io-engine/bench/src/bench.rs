//! The bench's settings and its runner: every tool of a case run `runs` times, alternating,
//! each result checked once, medians recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sdm_io::{Engine, EngineConfig};

use crate::cases;
use crate::cli::BenchArgs;
use crate::image::GIB;
use crate::measure::{drop_caches, host_summary, median, pretouch, run_measured, Sample};
use crate::report::{self, Row};
use crate::tools::s;
use crate::tools::Tool;

pub struct Bench {
    pub quick: bool,
    size: Option<u64>,
    pub dir: PathBuf,
    pub shm: PathBuf,
    pub runs: usize,
    only: Option<Vec<String>>,
    keep: bool,
    sweep: bool,
    engine_args: Vec<String>,
    /// This executable, which runs the engine under test (`__copy` etc.).
    pub exe: String,
    pub rows: Vec<Row>,
}

impl Bench {
    pub fn new(a: BenchArgs) -> Result<Bench> {
        if let Some(only) = &a.only {
            let known = cases::names();
            if let Some(bad) = only.iter().find(|c| !known.contains(&c.as_str())) {
                bail!("unknown case {bad:?} (cases: {})", known.join(", "));
            }
        }
        let runs = match a.runs {
            0 if a.quick => 3,
            0 => 5,
            n => n,
        };
        Ok(Bench {
            quick: a.quick,
            size: a.size,
            dir: a.dir.clone(),
            // Named after --dir, so that benches run at once with their own dirs do not
            // share (and remove) one tmpfs directory.
            shm: Path::new("/dev/shm").join(a.dir.file_name().unwrap_or("sdm-bench".as_ref())),
            runs,
            engine_args: a.engine_args(),
            only: a.only,
            keep: a.keep,
            sweep: a.sweep,
            exe: s(std::env::current_exe().context("own executable")?),
            rows: Vec::new(),
        })
    }

    pub fn wants(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|c| c == case))
    }

    /// Bytes of the main images.
    pub fn size(&self) -> u64 {
        if let Some(n) = self.size {
            n
        } else if self.quick {
            GIB
        } else {
            4 * GIB
        }
    }

    /// argv running the engine under test in `mode`, with the bench's engine flags.
    pub fn sdm(&self, mode: &str, extra: &[String]) -> Vec<String> {
        let mut v = vec![self.exe.clone(), mode.to_string()];
        v.extend(self.engine_args.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    }

    pub fn run(mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| self.dir.display().to_string())?;
        let cmdline = std::env::args().collect::<Vec<_>>().join(" ");
        println!("# sdm-bench: {cmdline}");
        println!(
            "# dir {} ({} runs per tool, alternating)",
            self.dir.display(),
            self.runs
        );
        println!("# {}", host_summary());
        let e = Engine::new(EngineConfig::default());
        println!(
            "# engine: backend {}, queue depth {}, chunk {} KiB, on block devices {} and {} KiB \
             (defaults; overrides: {:?})",
            e.backend().as_str(),
            e.queue_depth(),
            e.chunk_size() >> 10,
            e.block_queue_depth(),
            e.block_chunk_size() >> 10,
            self.engine_args
        );
        let r = if self.sweep {
            crate::sweep::run(&mut self)
        } else {
            cases::run_all(&mut self)
        };
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_dir_all(&self.shm);
        }
        r?;
        if self.sweep {
            report::print_sweep(&self.rows);
        } else {
            report::print_table(&self.rows);
            report::print_targets(&self.rows);
        }
        println!("# at the end: {}", host_summary());
        Ok(())
    }

    /// Runs every tool `runs` times, alternating, and records medians; `check` is the source
    /// sdm's output must equal after its first run.
    pub fn case(
        &mut self,
        case: &str,
        logical: u64,
        tools: Vec<Tool>,
        check: Option<&Path>,
    ) -> Result<()> {
        self.case_with(case, logical, tools, check, None)
    }

    /// Like `case`, but with `pretouch_bytes` set touches that much memory before each run
    /// instead of dropping the page cache (for tmpfs, where the destination is fresh memory).
    pub fn case_with(
        &mut self,
        case: &str,
        logical: u64,
        tools: Vec<Tool>,
        check: Option<&Path>,
        pretouch_bytes: Option<u64>,
    ) -> Result<()> {
        eprintln!("== {case}  [{}]", host_summary());
        let log = self.dir.join("tool.log");
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
        for round in 0..self.runs {
            // Each round starts one tool later, so that no tool always runs first (after the
            // case's set-up) or always right after the same neighbour: on a shared virtual
            // disk, a run pays for the write-back its predecessor left behind.
            let order = (0..tools.len()).map(|k| (k + round) % tools.len());
            for i in order {
                let t = &tools[i];
                for d in t.outputs.iter().filter(|d| !is_device(d)) {
                    let _ = std::fs::remove_file(d);
                    if t.create {
                        File::create(d).with_context(|| d.display().to_string())?;
                    }
                }
                if let Some(setup) = &t.setup {
                    run_measured(setup, &log).context("setup")?;
                }
                match pretouch_bytes {
                    Some(b) => pretouch(&self.exe, b),
                    None => drop_caches(),
                }
                let extra_before = t.extra_cpu_pid.map(process_cpu);
                let mut smp = run_measured(&t.argv, &log)?;
                if let (Some(pid), Some(before)) = (t.extra_cpu_pid, extra_before) {
                    smp.cpu += process_cpu(pid) - before;
                }
                eprintln!(
                    "   round {round} {:<34} {:8.3} s  cpu {:7.3} s  rss {:6.1} MiB",
                    t.name, smp.wall, smp.cpu, smp.rss_mib
                );
                if round == 0 {
                    check_output(case, t, logical, check)?;
                }
                samples[i].push(smp);
            }
        }
        for (t, smp) in tools.iter().zip(samples) {
            self.rows.push(Row {
                case: case.to_string(),
                tool: t.name.clone(),
                wall: median(smp.iter().map(|x| x.wall).collect()),
                cpu: median(smp.iter().map(|x| x.cpu).collect()),
                rss: smp.iter().map(|x| x.rss_mib).fold(0.0, f64::max),
                gib: t.bytes.unwrap_or(logical) as f64 / GIB as f64,
                sdm: t.sdm,
                reference: t.reference,
            });
            for d in t.outputs.iter().filter(|d| !is_device(d)) {
                let _ = std::fs::remove_file(d);
            }
        }
        Ok(())
    }
}

/// A block device output (an LV) is written in place, never removed or recreated.
fn is_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// The first run's result: zeros where a wipe was asked for, and sdm's output equal to the
/// source.
fn check_output(case: &str, t: &Tool, logical: u64, check: Option<&Path>) -> Result<()> {
    if let Some(z) = &t.check_zero {
        let ok = Command::new("cmp")
            .arg("-n")
            .arg(logical.to_string())
            .arg(z)
            .arg("/dev/zero")
            .status()
            .map(|s| s.success());
        if !matches!(ok, Ok(true)) {
            bail!("{case}: {} left non-zero data", t.name);
        }
    }
    if let Some(v) = &t.verify {
        let out = Command::new(&v[0]).args(&v[1..]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => bail!(
                "{case}: {} output does not verify ({}): {}{}",
                t.name,
                v.join(" "),
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => bail!("{case}: running {}: {e}", v.join(" ")),
        }
    }
    if t.sdm {
        if let (Some(src), Some(d)) = (check, t.outputs.first()) {
            let ok = Command::new("cmp")
                .arg(src)
                .arg(d)
                .status()
                .map(|s| s.success());
            if !matches!(ok, Ok(true)) {
                bail!("{case}: {} output differs from the source", t.name);
            }
        }
    }
    Ok(())
}

/// User + system CPU seconds a process has used so far (`/proc/PID/stat`), 0 if it is gone.
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; what follows the name starts at field 3.
    (ticks(11) + ticks(12)) / hz
}
