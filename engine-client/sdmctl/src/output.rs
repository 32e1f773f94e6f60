//! How commands print: text for people or `--json` for scripts, byte counts, and a followed
//! job's progress bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sdm_client::{job_outcome, AgentClient, Error};
use sdm_proto::Uuid;
use serde::Serialize;

use crate::cli::WaitArgs;

/// Bytes in binary units (`1.50 GiB`).
pub fn human_bytes(b: u64) -> String {
    indicatif::BinaryBytes(b).to_string()
}

/// Prints `v` as JSON with `--json`, else calls `human`.
pub fn print<T: Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human(v);
    }
    Ok(())
}

/// The first eight characters of an id, for narrow columns.
pub fn short(u: &Uuid) -> &str {
    &u.as_str()[..8]
}

/// Follows a job with a progress bar (or prints its id with `--no-wait`), and fails when the
/// job fails.
pub async fn follow(
    c: &AgentClient,
    json: bool,
    job_id: &Uuid,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    if wait.no_wait {
        return print(json, &serde_json::json!({"job_id": job_id}), |_| {
            println!("{job_id}")
        });
    }
    let show = !json && std::io::stderr().is_terminal();
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:<12} [{bar:32}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let info = c
        .wait_job(job_id, |i| {
            bar.set_message(i.description.clone());
            if i.bytes_total > 0 {
                bar.set_length(i.bytes_total);
                bar.set_position(i.bytes_done.min(i.bytes_total));
            }
        })
        .await?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let rate = if secs > 0.0 {
            info.bytes_total as f64 / secs
        } else {
            0.0
        };
        let mut line = format!(
            "job {} {} {} in {secs:.1}s",
            info.id, info.description, info.status
        );
        if info.bytes_total > 0 {
            line.push_str(&format!(
                ", {} at {}/s",
                human_bytes(info.bytes_total),
                human_bytes(rate as u64)
            ));
        }
        println!("{line}");
        // A job that continued an earlier attempt says per volume what it kept.
        if info.copies.iter().any(|c| c.resumed_from > 0) {
            for c in &info.copies {
                println!(
                    "  volume {} ({}/{}): {}",
                    c.vol_id,
                    c.stage,
                    c.stages,
                    sdm_client::CopyStartReport::from(c)
                );
            }
        }
        if let Some(r) = &info.result {
            println!("{}  ({:?})", r.checksum, r.algorithm);
        }
    }
    job_outcome(&info).map_err(|e| Error::Api(e).into())
}
