//! Crash matrix: kill -9 the agent at named points of copy_data (a plain copy and a COW to RAW
//! conversion), SDM.merge, Image.move, Image.delete with wipe, update_volume and domain attach
//! (a failpoint holds the job there), and at random moments, then restart and check every
//! invariant of CONTRACT §4, with local leases and with sanlock. Quick form (one trial per
//! point + 4) in the normal run; `SDM_FULL=1` runs 200 + 60. Prints a table of outcomes and
//! violations (which must be 0).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use sdm_client::{SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Op {
    Copy,
    /// copy_data from a COW source into a RAW destination.
    Convert,
    /// SDM.merge of a COW top into its RAW base.
    Merge,
    Move,
    DeleteWipe,
    Update,
}

/// Where to hold the job before the kill (None: a random delay).
const POINTS: &[(Op, Option<&str>)] = &[
    (Op::Copy, Some("sdm::copy_data::after_lease")),
    (Op::Copy, Some("sdm::copy_data::after_illegal")),
    (Op::Copy, Some("sdm::copy_data::before_legal")),
    (Op::Copy, Some("sdm::checkpoint::before_write")),
    (Op::Copy, Some("sdm::checkpoint::after_write")),
    (Op::Copy, Some("sdm::copy_data::after_legal")),
    (Op::Copy, None),
    (Op::Move, Some("sdm::image_move::after_create")),
    (Op::Move, None),
    (Op::DeleteWipe, Some("sdm::image_delete::before_remove")),
    (Op::DeleteWipe, None),
    (Op::Update, Some("sdm::update_volume::before_write")),
    (Op::Update, Some("sdm::update_volume::after_write")),
    (Op::Convert, Some("sdm::copy_data::after_illegal")),
    (Op::Convert, Some("sdm::copy_data::before_legal")),
    (Op::Convert, None),
    (Op::Merge, Some("sdm::merge::after_illegal")),
    (Op::Merge, Some("sdm::merge::before_legal")),
    (Op::Merge, None),
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A checkpoint left on an ILLEGAL destination promises that the destination's bytes below its
/// durable offset are the source's: Some(violation) when they are not.
fn broken_checkpoint_promise(src: &Path, dst: &Path) -> Option<String> {
    let name = format!("{}.checkpoint", dst.file_name()?.to_str()?);
    let raw = std::fs::read_to_string(dst.with_file_name(name)).ok()?;
    let (body, _) = raw.rsplit_once("\nsha256=")?;
    let j: serde_json::Value = serde_json::from_str(body).ok()?;
    let n = j["durable"].as_u64()? as usize;
    let read = |p: &Path| {
        let mut b = vec![0u8; n];
        File::open(p)
            .and_then(|f| f.read_exact_at(&mut b, 0))
            .map(|_| b)
    };
    match (read(src), read(dst)) {
        (Ok(a), Ok(b)) if a == b => None,
        _ => Some(format!(
            "checkpoint promises {n} bytes the destination does not hold"
        )),
    }
}

struct Trial {
    outcome: &'static str,
    violations: Vec<String>,
}

async fn run_trial(op: Op, point: Option<&str>, rng: &mut Rng, sanlock: Option<&Path>) -> Trial {
    let state = tempfile::Builder::new()
        .prefix("sdm-crash-")
        .tempdir()
        .unwrap();
    let env = match point {
        Some(p) => vec![("FAILPOINTS".to_string(), format!("{p}=sleep(60000)"))],
        None => vec![],
    };
    // Random-delay trials are throttled so that the kill lands mid-operation; trials held at a
    // named point run at full speed so they surely reach it before the kill.
    let mut config = String::from("create_default_domains = true\n");
    if let Some(run_dir) = sanlock {
        config.push_str(&format!(
            "[leases]\ndefault_backend = \"sanlock\"\nsanlock_io_timeout_s = 1\nsanlock_run_dir = {run_dir:?}\n"
        ));
    }
    if point.is_none() {
        config.push_str("[io]\nbandwidth_limit = 8388608\n");
    }
    let config = Some(config);
    let mut agent = AgentProc::start(AgentOptions {
        state_dir: Some(state.path().into()),
        config: config.clone(),
        env,
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, dom1, dom2) = default_domains(&c).await;
    let (img, src, dst) = (uuid(), uuid(), uuid());
    let size = 4 * MIB;
    let mut v = Vec::new();

    // Set-up happens before the failpoint can matter (volume creation and metadata writes
    // would hit the durable failpoints too, so those trials arm them only for the operation).
    let src_fmt = if matches!(op, Op::Convert) {
        VolumeFormat::Cow
    } else {
        VolumeFormat::Raw
    };
    create_volume(&c, &sd1, &img, &src, size, src_fmt, None, None).await;
    if src_fmt == VolumeFormat::Cow {
        let byte = format!("write -P {} 0 3M", rng.next() % 200 + 1);
        chains::qemu_io(&volume_path(&dom1, &img, &src), "qcow2", &[&byte]);
    } else {
        write_pattern(
            &volume_path(&dom1, &img, &src),
            0,
            size as usize,
            rng.next(),
        );
    }
    let src_sum = sha256sum(&volume_path(&dom1, &img, &src));
    let dimg = uuid();
    let mut dst_sum = String::new();
    // Merge: a COW top on the RAW source; `want` is what the base must read once merged.
    let top = uuid();
    let mut top_sum = String::new();
    let want = state.path().join("want.raw");
    if matches!(op, Op::Merge) {
        create_volume(
            &c,
            &sd1,
            &img,
            &top,
            size,
            VolumeFormat::Cow,
            Some(src.clone()),
            None,
        )
        .await;
        let tp = volume_path(&dom1, &img, &top);
        let byte = format!("write -P {} 512k 2M", rng.next() % 200 + 1);
        chains::qemu_io(&tp, "qcow2", &[&byte, "write -z 3M 256k"]);
        top_sum = sha256sum(&tp);
        let (t, w) = (tp.display().to_string(), want.display().to_string());
        chains::qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &t, &w]);
    }
    if matches!(op, Op::Copy | Op::Convert) {
        create_volume(&c, &sd2, &dimg, &dst, size, VolumeFormat::Raw, None, None).await;
        write_pattern(
            &volume_path(&dom2, &dimg, &dst),
            0,
            MIB as usize,
            rng.next(),
        );
        dst_sum = sha256sum(&volume_path(&dom2, &dimg, &dst));
    }
    let keep = File::open(volume_path(&dom1, &img, &src)).unwrap();

    let job = uuid();
    match op {
        Op::Copy | Op::Convert => {
            let (from, to) = (
                endpoint(&sd1, &img, &src, None),
                endpoint(&sd2, &dimg, &dst, Some(0)),
            );
            start_copy(&c, from, to, None).await;
        }
        Op::Merge => {
            c.api()
                .merge(
                    job.clone(),
                    SubchainInfo {
                        sd_id: sd1.clone(),
                        img_id: img.clone(),
                        top_id: top.clone(),
                        base_id: src.clone(),
                        base_generation: Some(Generation(0)),
                    },
                    None,
                )
                .await
                .via(&c)
                .unwrap();
        }
        Op::Move => {
            c.api()
                .move_image(
                    img.clone(),
                    sd1.clone(),
                    sd2.clone(),
                    ImageOperation::Copy,
                    None,
                    None,
                    None,
                    Some(job.clone()),
                )
                .await
                .via(&c)
                .unwrap();
        }
        Op::DeleteWipe => {
            c.api()
                .delete_image(
                    img.clone(),
                    sd1.clone(),
                    Some(Flag(true)),
                    None,
                    None,
                    Some(job.clone()),
                )
                .await
                .via(&c)
                .unwrap();
        }
        Op::Update => {
            let r = volume_ref(&sd1, &img, &src, Some(0));
            let _ = c
                .api()
                .update_volume(
                    job.clone(),
                    r,
                    VolumeAttributes {
                        generation: Some(Generation(3)),
                        ..Default::default()
                    },
                )
                .await
                .via(&c);
        }
    }
    // Let the job reach its failpoint (or run for a random while), then kill -9.
    let wait = match point {
        Some(_) => 400,
        None => 50 + rng.next() % 600,
    };
    tokio::time::sleep(Duration::from_millis(wait)).await;
    agent.kill9();

    // Restart without failpoints.
    let mut agent = AgentProc::start(AgentOptions {
        state_dir: Some(state.path().into()),
        config,
        ..Default::default()
    });
    let c = agent.client();
    // Garbage collection may be wiping a leftover: let it finish.
    for _ in 0..200 {
        let jobs = c.api().get_jobs(None, None).await.via(&c).unwrap();
        if jobs.values().all(|j| !j.status.is_active()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome: &'static str;
    match op {
        Op::Merge => {
            outcome = merge_outcome(&c, &mut v, (&sd1, &img, &src, &top), &dom1, &want).await;
            if sha256sum(&volume_path(&dom1, &img, &top)) != top_sum {
                v.push("top modified".into());
            }
        }
        Op::Copy | Op::Convert | Op::Move => {
            if sha256sum(&volume_path(&dom1, &img, &src)) != src_sum {
                v.push("source modified".into());
            }
            let (dimg, dvol) = if matches!(op, Op::Copy | Op::Convert) {
                (&dimg, &dst)
            } else {
                (&img, &src)
            };
            match try_volume_info(&c, &sd2, dimg, dvol).await.ok() {
                Some(i) => {
                    if !i.lease.owners.is_empty() {
                        v.push(format!("lease still held: {:?}", i.lease.owners));
                    }
                    let want_gen = if matches!(op, Op::Copy | Op::Convert) {
                        1
                    } else {
                        0
                    };
                    match i.legality {
                        Legality::Legal
                            if i.generation == 0 && matches!(op, Op::Copy | Op::Convert) =>
                        {
                            // Killed before the destination was marked: nothing was written.
                            outcome = "untouched (LEGAL, old)";
                            if sha256sum(&volume_path(&dom2, dimg, dvol)) != dst_sum {
                                v.push("LEGAL with the old generation but changed bytes".into());
                            }
                        }
                        Legality::Legal => {
                            outcome = "LEGAL, new generation";
                            if i.generation != want_gen {
                                v.push(format!(
                                    "LEGAL with generation {} (want {want_gen})",
                                    i.generation
                                ));
                            }
                            let (sp, dp) = (
                                volume_path(&dom1, &img, &src),
                                volume_path(&dom2, dimg, dvol),
                            );
                            let same = if src_fmt == VolumeFormat::Cow {
                                let (a, b) = (sp.display().to_string(), dp.display().to_string());
                                std::process::Command::new("qemu-img")
                                    .args(["compare", "-q", "-f", "qcow2", "-F", "raw", &a, &b])
                                    .status()
                                    .is_ok_and(|st| st.success())
                            } else {
                                sha256sum(&dp) == src_sum
                            };
                            if !same {
                                v.push("LEGAL destination differs from the source".into());
                            }
                        }
                        _ => {
                            outcome = "ILLEGAL, old generation";
                            if i.generation != 0 {
                                v.push(format!("ILLEGAL with generation {}", i.generation));
                            }
                            let (sp, dp) = (
                                volume_path(&dom1, &img, &src),
                                volume_path(&dom2, dimg, dvol),
                            );
                            if let Some(why) = broken_checkpoint_promise(&sp, &dp) {
                                v.push(why);
                            }
                        }
                    }
                }
                None => outcome = "destination not created",
            }
        }
        Op::DeleteWipe => {
            let live = dom1.join("images").join(img.as_str());
            let zero = dom1.join("images").join(format!("_remove_me_ZERO_{img}"));
            // Whatever happened, data that left the domain must have been zeroed first.
            let mut buf = vec![0u8; size as usize];
            keep.read_exact_at(&mut buf, 0).unwrap();
            let zeroed = buf.iter().all(|b| *b == 0);
            if live.exists() {
                outcome = "not deleted";
                if let Ok(i) = try_volume_info(&c, &sd1, &img, &src).await {
                    if !i.lease.owners.is_empty() {
                        v.push("lease still held".into());
                    }
                }
            } else if zero.exists() {
                outcome = "leftover kept";
                let fixes = c.api().check_domain(sd1.clone()).await.via(&c).unwrap();
                if !fixes.iter().any(|f| f.data["kind"] == "leftover") {
                    v.push("leftover not reported by check".into());
                }
            } else {
                outcome = "wiped and removed";
                if !zeroed {
                    v.push("removed without being wiped".into());
                }
            }
        }
        Op::Update => {
            let i = try_volume_info(&c, &sd1, &img, &src).await.expect("volume");
            outcome = if i.generation == 3 {
                "updated"
            } else {
                "not updated"
            };
            if i.generation != 3 && i.generation != 0 {
                v.push(format!(
                    "generation {} is neither old nor new",
                    i.generation
                ));
            }
            if !i.lease.owners.is_empty() {
                v.push("lease still held".into());
            }
            if sha256sum(&volume_path(&dom1, &img, &src)) != src_sum {
                v.push("data changed by a metadata update".into());
            }
        }
    }
    // No stray temporary metadata anywhere, and check reports nothing but known leftovers.
    for sd in [&sd1, &sd2] {
        let fixes = c.api().check_domain(sd.clone()).await.via(&c).unwrap();
        for f in fixes {
            let kind = f.data["kind"].as_str().unwrap_or("");
            let expected = matches!(kind, "leftover" | "illegal_volume")
                || (kind == "orphan"
                    && f.data["file"].as_str().is_some_and(|n| n.ends_with(".new")));
            if !expected {
                v.push(format!("unexpected finding: {}", f.description));
            }
        }
    }
    drop(keep);
    agent.kill9();
    Trial {
        outcome,
        violations: v,
    }
}

/// After a kill -9 during SDM.merge of `top` into `base` (RAW): the base is untouched (LEGAL,
/// generation 0), merged (LEGAL, 1, reading `want`), or ILLEGAL with generation 0 — and then a
/// retry with the same base_generation must merge it.
async fn merge_outcome(
    c: &sdm_client::AgentClient,
    v: &mut Vec<String>,
    (sd, img, base, top): (&Uuid, &Uuid, &Uuid, &Uuid),
    dom: &Path,
    want: &Path,
) -> &'static str {
    let bp = volume_path(dom, img, base);
    let reads_want = || {
        let (w, b) = (want.display().to_string(), bp.display().to_string());
        std::process::Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "raw", &w, &b])
            .status()
            .is_ok_and(|st| st.success())
    };
    let Ok(i) = try_volume_info(c, sd, img, base).await else {
        v.push("base volume gone".into());
        return "base gone";
    };
    if !i.lease.owners.is_empty() {
        v.push(format!("base lease still held: {:?}", i.lease.owners));
    }
    match (i.legality, i.generation) {
        (Legality::Legal, 0) => "untouched (LEGAL, old)",
        (Legality::Legal, 1) => {
            if !reads_want() {
                v.push("merged base does not read the chain's data".into());
            }
            "merged (LEGAL, new generation)"
        }
        (Legality::Illegal, 0) => {
            let job = uuid();
            let sub = SubchainInfo {
                sd_id: sd.clone(),
                img_id: img.clone(),
                top_id: top.clone(),
                base_id: base.clone(),
                base_generation: Some(Generation(0)),
            };
            c.api().merge(job.clone(), sub, None).await.via(c).unwrap();
            let done = wait_job(c, &job).await;
            if done.status != JobStatus::Done {
                v.push(format!("retry of the merge failed: {:?}", done.error));
            } else if !reads_want() {
                v.push("retried merge does not read the chain's data".into());
            }
            "ILLEGAL, old generation; retry merged"
        }
        (l, g) => {
            v.push(format!("base is {l} with generation {g}"));
            "unexpected"
        }
    }
}

#[tokio::test]
async fn crash_matrix_local_leases() {
    let full = std::env::var_os("SDM_FULL").is_some();
    matrix(if full { 200 } else { POINTS.len() }, full, None).await;
}

#[tokio::test]
async fn crash_matrix_sanlock() {
    use sdm_lease::test_support::{sanlock_available, SanlockDaemon};
    if let Err(why) = sanlock_available() {
        eprintln!("skipping crash_matrix_sanlock: {why}");
        return;
    }
    let daemon = SanlockDaemon::start("sdm-crash");
    let full = std::env::var_os("SDM_FULL").is_some();
    // Each start joins the lockspace (about 3 s with io_timeout 1), so fewer trials.
    matrix(if full { 60 } else { 4 }, full, Some(daemon.run_dir())).await;
}

async fn matrix(trials: usize, full: bool, sanlock: Option<&Path>) {
    let mut rng = Rng(0x5eed_1234_abcd ^ trials as u64);
    let mut table: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let mut violations = Vec::new();
    for t in 0..trials {
        let (op, point) = POINTS[if full {
            (rng.next() as usize) % POINTS.len()
        } else {
            t % POINTS.len()
        }];
        let trial = run_trial(op, point, &mut rng, sanlock).await;
        let key = format!("{op:?} @ {}", point.unwrap_or("random delay"));
        *table.entry((key.clone(), trial.outcome)).or_default() += 1;
        for v in trial.violations {
            violations.push(format!("trial {t} ({key}): {v}"));
        }
    }
    let backend = if sanlock.is_some() {
        "sanlock"
    } else {
        "local"
    };
    println!("\ncrash matrix: {trials} trials, {backend} leases");
    println!(
        "{:<58} {:<26} {:>6}",
        "operation @ kill point", "outcome after restart", "trials"
    );
    for ((k, o), n) in &table {
        println!("{k:<58} {o:<26} {n:>6}");
    }
    println!("violations: {}", violations.len());
    for v in &violations {
        println!("  {v}");
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
