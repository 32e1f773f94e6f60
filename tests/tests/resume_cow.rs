//! COW copies that resume (issue 18): a COW to COW copy of the same shape copies the source's
//! qcow2 file as it is, so, like RAW to RAW, it checkpoints and continues on another agent
//! after a kill -9 from the durable prefix. `qemu-img compare` is the oracle (the destination
//! reads as the source), and the file is the source's byte for byte (`cmp`), consistent
//! (`qemu-img check`). A conversion (RAW into COW) writes no checkpoint, so a killed one is
//! redone in full and still ends equal.
//!
//! The source's guest size is `SDM_RESUME_MIB` MiB (default 192), about two thirds written.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn size() -> u64 {
    std::env::var("SDM_RESUME_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192)
        * MIB
}

/// The owner agent (default checkpoint interval) and its domain; agents that get killed
/// checkpoint every 2 MiB, so the kill lands near the wanted point.
struct Setup {
    owner: AgentProc,
    sd: Uuid,
    dir: std::path::PathBuf,
    next_host: u64,
}

impl Setup {
    async fn start() -> Setup {
        let owner = AgentProc::start(AgentOptions {
            host_id: Some(1),
            config: Some("create_default_domains = true\n".to_string()),
            ..Default::default()
        });
        let (sd, _, dir, _) = default_domains(&owner.client()).await;
        Setup {
            owner,
            sd,
            dir,
            next_host: 2,
        }
    }

    fn join(&mut self) -> AgentProc {
        let host = self.next_host;
        self.next_host += 1;
        AgentProc::start(AgentOptions {
            host_id: Some(host),
            config: Some(format!(
                "create_default_domains = false\n\n[[domains]]\npath = {:?}\n\n[io]\ncheckpoint_interval_ms = 3600000\ncheckpoint_bytes = {}\n",
                self.dir.display().to_string(),
                2 * MIB
            )),
            ..Default::default()
        })
    }

    fn client(&self) -> AgentClient {
        self.owner.client()
    }
}

/// A COW volume whose guest data is `size()` bytes, 4 MiB pieces, every third one a hole,
/// written through `qemu-img convert -n` so the qcow2 file has real clusters and tables.
async fn cow_source(s: &Setup) -> (Vol, std::path::PathBuf) {
    let c = s.client();
    let v = new_volume(&c, &s.sd, size(), VolumeFormat::Cow).await;
    let raw = s.dir.join(format!("{}.fill.raw", v.vol));
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(size())
        .unwrap();
    let piece = 4 * MIB;
    for (i, off) in (0..size()).step_by(piece as usize).enumerate() {
        if i % 3 != 1 {
            write_pattern(&raw, off, piece as usize, 500 + i as u64);
        }
    }
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-n"])
        .arg(&raw)
        .arg(&v.path)
        .status()
        .expect("qemu-img convert");
    assert!(st.success());
    (v, raw)
}

fn checkpoint_durable(v: &Vol) -> Option<u64> {
    let raw =
        std::fs::read_to_string(v.path.with_file_name(format!("{}.checkpoint", v.vol))).ok()?;
    let (body, _) = raw.rsplit_once("\nsha256=")?;
    serde_json::from_str::<serde_json::Value>(body).ok()?["durable"].as_u64()
}

fn cmp(a: &Path, b: &Path) {
    let st = Command::new("cmp").arg(a).arg(b).status().expect("cmp");
    assert!(st.success(), "{} and {} differ", a.display(), b.display());
}

/// Copies on the owner and waits for success.
async fn finish_copy(s: &Setup, src: &Vol, dst: &Vol) {
    let c = s.client();
    let job = copy_volume(&c, src, dst, Some(0), None).await;
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
}

async fn legality(c: &AgentClient, v: &Vol) -> (Legality, u16) {
    let st = c
        .api()
        .get_image_status(v.sd.clone(), v.img.clone())
        .await
        .via(c)
        .unwrap();
    let v = st
        .volumes
        .into_iter()
        .find(|s| s.vol_id == v.vol)
        .expect("volume listed");
    (v.legality, v.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_same_shape_cow_copy_resumes_from_its_checkpoint() {
    let mut s = Setup::start().await;
    let c = s.client();
    let (src, raw) = cow_source(&s).await;
    let total = std::fs::metadata(&src.path).unwrap().len();
    assert!(total > size() / 2, "the qcow2 file holds the data: {total}");

    for pct in [30, 90] {
        let dst = new_volume(&c, &s.sd, size(), VolumeFormat::Cow).await;
        let mut a = s.join();
        let job = copy_volume(&a.client(), &src, &dst, Some(0), Some(32 * MIB)).await;
        let target = total * pct / 100;
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpoint_durable(&dst).is_none_or(|d| d < target) {
            assert!(
                Instant::now() < deadline,
                "no checkpoint at {pct}% (job {job})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.kill9();
        let durable = checkpoint_durable(&dst).expect("checkpoint kept");
        assert!(
            durable > 0 && durable < total,
            "{pct}%: {durable} of {total}"
        );
        assert_eq!(legality(&c, &dst).await, (Legality::Illegal, 0));
        // Half a qcow2 file: what a guest would see through it is not the source.
        assert!(!qemu_img_compare(&raw, &dst.path), "{pct}%: not done yet");

        finish_copy(&s, &src, &dst).await;
        let log = s.owner.log_text();
        let (from, read, written) = copy_counters(&log, &dst.vol);
        assert_eq!(from, durable, "{pct}%: resumed from the checkpoint");
        let rest = total - from;
        assert!(
            read <= rest && written <= rest,
            "{pct}%: read {read}, wrote {written}, remainder {rest}"
        );
        assert!(
            qemu_img_compare(&raw, &dst.path),
            "{pct}%: qemu-img compare"
        );
        assert!(qemu_img_check(&dst.path), "{pct}%: qemu-img check");
        cmp(&src.path, &dst.path);
        assert_eq!(legality(&c, &dst).await, (Legality::Legal, 1));
        assert!(checkpoint_durable(&dst).is_none(), "checkpoint removed");
        println!(
            "COW resume at {pct}% of a {} MiB qcow2 file: from {} MiB, read {} MiB",
            total / MIB,
            from / MIB,
            read / MIB
        );
    }
    let _ = std::fs::remove_file(&raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_conversion_writes_no_checkpoint_and_is_redone_in_full() {
    let mut s = Setup::start().await;
    let c = s.client();
    // RAW into COW: converted by the layout writer, which has no restart point.
    let src = new_volume(&c, &s.sd, size(), VolumeFormat::Raw).await;
    for (i, off) in (0..size()).step_by(4 << 20).enumerate() {
        if i % 3 != 1 {
            write_pattern(&src.path, off, 4 << 20, 900 + i as u64);
        }
    }
    let dst = new_volume(&c, &s.sd, size(), VolumeFormat::Cow).await;
    let mut a = s.join();
    let job = copy_volume(&a.client(), &src, &dst, Some(0), Some(32 * MIB)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = wait_running(&a.client(), &job).await;
        if info.progress.unwrap_or(0.0) >= 30.0 || Instant::now() > deadline {
            assert!(info.status.is_active(), "still converting: {info:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        checkpoint_durable(&dst).is_none(),
        "a conversion checkpoints"
    );
    a.kill9();
    assert_eq!(legality(&c, &dst).await, (Legality::Illegal, 0));

    finish_copy(&s, &src, &dst).await;
    assert!(
        !s.owner.log_text().contains("resuming copy"),
        "a conversion resumed"
    );
    assert!(qemu_img_compare(&src.path, &dst.path), "qemu-img compare");
    assert!(qemu_img_check(&dst.path), "qemu-img check");
    assert_eq!(legality(&c, &dst).await, (Legality::Legal, 1));
}
