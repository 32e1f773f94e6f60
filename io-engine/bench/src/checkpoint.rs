//! A checkpoint hook that costs what the agent's costs (`agent/src/ops/resume.rs`): 1 MiB and
//! 8 x 64 KiB read from the source, a small record written to a temporary file, fsync'ed,
//! renamed over `<dst>.checkpoint` and the directory fsync'ed — on top of the engine's own
//! fdatasync of the destination. The bench times copies with and without it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sdm_io::{CheckpointHook, Checkpointed};

const BOUNDARY: u64 = 1 << 20;
/// How `__copy` starts the line with the engine's checkpoint counters in its log.
pub const STATS_LINE: &str = "__copy: checkpoints ";
const SAMPLE: u64 = 64 << 10;

/// A hook called at most every `ms` milliseconds (and never for bytes alone).
pub fn hook(src: &Path, dst: &Path, ms: u64) -> CheckpointHook {
    let src = src.to_path_buf();
    let record = side_file(dst);
    CheckpointHook {
        every: Duration::from_millis(ms),
        every_bytes: u64::MAX,
        call: Arc::new(move |c: Checkpointed| {
            let f = File::open(&src)?;
            let mut buf = vec![0u8; BOUNDARY as usize];
            let from = c.durable.saturating_sub(BOUNDARY);
            f.read_exact_at(&mut buf[..(c.durable - from) as usize], from)?;
            for i in 0..8u64 {
                let at = (c.durable / 16 * (2 * i + 1)) / SAMPLE * SAMPLE;
                if at + SAMPLE <= c.durable {
                    f.read_exact_at(&mut buf[..SAMPLE as usize], at)?;
                }
            }
            let tmp = record.with_extension("checkpoint.new");
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            writeln!(out, "{{\"durable\":{},\"total\":{}}}", c.durable, c.total)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &record)?;
            File::open(record.parent().unwrap_or(Path::new(".")))?.sync_all()
        }),
    }
}

/// `<dst>.checkpoint`, removed by the caller after the copy.
pub fn side_file(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    dst.with_file_name(name)
}
