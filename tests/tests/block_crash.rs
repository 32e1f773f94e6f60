//! Crash matrix over block domains: kill -9 the agent while it copies into, moves onto, deletes
//! with wipe from, or creates volumes on a block domain (held at named failpoints, or after a
//! random delay), restart it, and check: no loop device leaked (only the attached domain's
//! special LVs stay mapped), no volume LV half-made without `OVIRT_VOL_INITIALIZING`, a
//! destination ILLEGAL or LEGAL with generation + 1 and the source's bytes, wiped data zero
//! before it left the domain, and every half-made LV found by `StorageDomain.check` and removed
//! by its fix. One domain on loop devices serves every trial; each trial runs a fresh agent (its
//! own file domains) that shares the activation records of the one before, as a restarted
//! agent does. Root only. `SDM_FULL=1` runs 60 trials instead of one per kill point.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_lvm::{Devices, Lvm};
use sdm_proto::*;
use sdm_tests::block::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// SDM.copy_data from a file volume into a block volume.
    CopyToBlock,
    /// Image.move from a file domain onto the block domain.
    MoveToBlock,
    /// Image.delete with postZero on the block domain.
    DeleteWipe,
    /// Volume.create on the block domain.
    Create,
}

const POINTS: &[(Op, Option<&str>)] = &[
    (Op::CopyToBlock, Some("sdm::copy_data::after_lease")),
    (Op::CopyToBlock, Some("sdm::copy_data::after_illegal")),
    (Op::CopyToBlock, Some("sdm::copy_data::before_legal")),
    (Op::CopyToBlock, Some("sdm::copy_data::after_legal")),
    (Op::CopyToBlock, None),
    (Op::MoveToBlock, Some("sdm::image_move::after_create")),
    (Op::MoveToBlock, Some("sdm::block::volume_initializing")),
    (Op::MoveToBlock, Some("sdm::block::before_initialized")),
    (Op::MoveToBlock, None),
    (Op::DeleteWipe, Some("sdm::image_delete::before_remove")),
    (Op::DeleteWipe, None),
    (Op::Create, Some("sdm::block::volume_initializing")),
    (Op::Create, Some("sdm::block::before_initialized")),
    (Op::Create, Some("sdm::block::writer_held")),
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

/// What every trial shares: the disks, the block domain on them, the activation records.
struct Setup {
    disks: TestDisks,
    lvm: Lvm,
    devs: Devices,
    sd: Uuid,
    activation: PathBuf,
}

impl Setup {
    fn config(&self, throttled: bool) -> String {
        let mut top = format!(
            "create_default_domains = true\n\n[[domains]]\npath = \"/dev/{}\"\nkind = \"block\"\n",
            self.sd
        );
        if throttled {
            top.push_str("\n[io]\nbandwidth_limit = 33554432\n");
        }
        block_config(
            self.disks.paths(),
            &top,
            &format!("state_dir = {:?}", self.activation.display().to_string()),
        )
    }

    fn pv_bytes(&self, vol: &Uuid) -> Option<(PathBuf, u64, u64)> {
        lvs(&self.lvm, &self.devs, &self.sd)
            .iter()
            .any(|l| l.name == vol.as_str())
            .then(|| lv_extent(&self.lvm, &self.devs, &self.sd, vol.as_str()))
    }
}

struct Trial {
    outcome: &'static str,
    violations: Vec<String>,
}

fn sha(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, data).unwrap();
    sha256sum(&p)
}

async fn run_trial(s: &Setup, op: Op, point: Option<&str>, rng: &mut Rng) -> Trial {
    let state = tempfile::Builder::new()
        .prefix("sdm-bcrash-")
        .tempdir()
        .unwrap();
    let env = match point {
        Some(p) => vec![("FAILPOINTS".to_string(), format!("{p}=sleep(60000)"))],
        None => vec![],
    };
    let mut agent = AgentProc::start(AgentOptions {
        state_dir: Some(state.path().into()),
        config: Some(s.config(point.is_none())),
        env,
        ..Default::default()
    });
    let c = agent.client();
    let sd = s.sd.clone();
    let (fsd, _, fdom, _) = file_domains(&c).await;
    let mut v = Vec::new();
    let size = 16 * MIB;
    let (img, vol) = (uuid(), uuid());
    let (dimg, dvol) = (uuid(), uuid());
    let mut src_sum = String::new();
    let mut dst_sum = String::new();
    let mut wiped_range = None;

    // Set-up (before anything the failpoints hold).
    match op {
        Op::CopyToBlock | Op::MoveToBlock => {
            create_volume(&c, &fsd, &img, &vol, size, VolumeFormat::Raw, None, None).await;
            let p = volume_path(&fdom, &img, &vol);
            write_pattern(&p, 0, size as usize, rng.next());
            src_sum = sha256sum(&p);
        }
        Op::DeleteWipe | Op::Create => {}
    }
    if matches!(op, Op::CopyToBlock | Op::DeleteWipe) {
        c.api()
            .create_volume(
                sd.clone(),
                dimg.clone(),
                dvol.clone(),
                Capacity(Size(size)),
                VolumeFormat::Raw,
                Preallocation::Preallocated,
                None,
                None,
            )
            .await
            .via(&c)
            .unwrap();
        let (pv, off, len) = s.pv_bytes(&dvol).unwrap();
        let pattern = (rng.next() as u8) | 1;
        let junk = s.disks.dir().join("junk");
        std::fs::write(&junk, vec![pattern; MIB as usize]).unwrap();
        let st = std::process::Command::new("dd")
            .arg(format!("if={}", junk.display()))
            .arg(format!("of={}", pv.display()))
            .args(["oflag=direct,seek_bytes", "conv=notrunc", "status=none"])
            .arg(format!("seek={off}"))
            .status()
            .unwrap();
        assert!(st.success());
        dst_sum = sha(&read_direct(&pv, off, size));
        wiped_range = Some((pv, off, len));
    }

    // The operation.
    let job = uuid();
    let mut create_call = None;
    match op {
        Op::CopyToBlock => {
            start_copy(
                &c,
                endpoint(&fsd, &img, &vol, None),
                endpoint(&sd, &dimg, &dvol, Some(0)),
                None,
            )
            .await;
        }
        Op::MoveToBlock => {
            c.api()
                .move_image(
                    img.clone(),
                    fsd.clone(),
                    sd.clone(),
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
                    dimg.clone(),
                    sd.clone(),
                    Some(Flag(true)),
                    None,
                    None,
                    Some(job.clone()),
                )
                .await
                .via(&c)
                .unwrap();
        }
        Op::Create => {
            // A synchronous verb: the failpoint holds the call itself.
            let (c2, sd2, img2, vol2) = (c.clone(), sd.clone(), img.clone(), vol.clone());
            create_call = Some(tokio::spawn(async move {
                c2.api()
                    .create_volume(
                        sd2,
                        img2,
                        vol2,
                        Capacity(Size(size)),
                        VolumeFormat::Cow,
                        Preallocation::Sparse,
                        None,
                        None,
                    )
                    .await
            }));
        }
    }
    // Named points: long enough for every LVM command before the point (the failpoint holds
    // the job for a minute).
    let wait = match point {
        Some(_) => 3000,
        None => 50 + rng.next() % 600,
    };
    tokio::time::sleep(Duration::from_millis(wait)).await;
    agent.kill9();
    if let Some(call) = create_call {
        call.abort();
    }

    // Restart without failpoints: it undoes the killed agent's mappings and collects garbage.
    let mut agent = AgentProc::start(AgentOptions {
        state_dir: Some(state.path().into()),
        config: Some(s.config(point.is_none())),
        ..Default::default()
    });
    let c = agent.client();
    wait_idle(&c).await;
    let mode = c
        .api()
        .get_capabilities()
        .await
        .via(&c)
        .unwrap()
        .block_activation
        .unwrap_or_default();
    if mode == "loop-mapped" {
        let mapped = loops_over(s.disks.paths());
        if mapped.len() != 3 {
            v.push(format!(
                "{} loop devices over the PVs, want the 3 special LVs: {mapped:?}",
                mapped.len()
            ));
        }
    }
    for bad in half_made_lvs(&s.lvm, &s.devs, &sd) {
        v.push(format!(
            "half-made LV without OVIRT_VOL_INITIALIZING: {bad}"
        ));
    }

    let outcome: &'static str;
    match op {
        Op::CopyToBlock | Op::MoveToBlock => {
            let (ti, tv) = if matches!(op, Op::CopyToBlock) {
                (&dimg, &dvol)
            } else {
                (&img, &vol)
            };
            if sha256sum(&volume_path(&fdom, &img, &vol)) != src_sum {
                v.push("source modified".into());
            }
            match try_volume_info(&c, &sd, ti, tv).await {
                Ok(i) => {
                    if !i.lease.owners.is_empty() {
                        v.push(format!("lease still held: {:?}", i.lease.owners));
                    }
                    let (pv, off, _) = s.pv_bytes(tv).unwrap();
                    let now = sha(&read_direct(&pv, off, size));
                    let copy_gen = if matches!(op, Op::CopyToBlock) { 1 } else { 0 };
                    match (i.legality, i.generation) {
                        (Legality::Legal, 0) if matches!(op, Op::CopyToBlock) => {
                            outcome = "untouched (LEGAL, old)";
                            if now != dst_sum {
                                v.push("LEGAL with the old generation but changed bytes".into());
                            }
                        }
                        (Legality::Legal, g) => {
                            outcome = "LEGAL, new generation";
                            if g != copy_gen {
                                v.push(format!("LEGAL with generation {g} (want {copy_gen})"));
                            }
                            if now != src_sum {
                                v.push("LEGAL destination differs from the source".into());
                            }
                        }
                        (_, g) => {
                            outcome = "ILLEGAL, old generation";
                            if g != 0 {
                                v.push(format!("ILLEGAL with generation {g}"));
                            }
                        }
                    }
                }
                Err(e) => {
                    outcome = "destination not created";
                    if !matches!(
                        e.code(),
                        Some(ErrorCode::VolumeDoesNotExist | ErrorCode::ImageDoesNotExistInSD)
                    ) {
                        v.push(format!("destination unreadable: {e}"));
                    }
                }
            }
        }
        Op::DeleteWipe => {
            let all = lvs(&s.lvm, &s.devs, &sd);
            let ours = all.iter().find(|l| l.name == dvol.as_str());
            let (pv, off, len) = wiped_range.clone().unwrap();
            match ours.and_then(|l| tag(l, "IU_")) {
                Some(t) if t == dimg.as_str() => {
                    outcome = "not deleted";
                    match try_volume_info(&c, &sd, &dimg, &dvol).await {
                        Ok(i) if !i.lease.owners.is_empty() => v.push("lease still held".into()),
                        Ok(_) => {}
                        Err(e) => v.push(format!("volume unreadable: {e}")),
                    }
                }
                Some(t) if t.starts_with("_remove_me_ZERO_") => {
                    outcome = "leftover kept";
                    let fixes = c.api().check_domain(sd.clone()).await.via(&c).unwrap();
                    if !fixes.iter().any(|f| f.data["kind"] == "leftover") {
                        v.push("leftover not reported by check".into());
                    }
                }
                Some(t) => {
                    outcome = "odd tag";
                    v.push(format!("LV tagged IU_{t}"));
                }
                None => {
                    outcome = "wiped and removed";
                    if !read_direct(&pv, off, len).iter().all(|b| *b == 0) {
                        v.push("LV removed without being wiped".into());
                    }
                }
            }
        }
        Op::Create => match try_volume_info(&c, &sd, &img, &vol).await {
            Ok(i) => {
                outcome = "created";
                if i.legality != Legality::Legal || i.format != VolumeFormat::Cow {
                    v.push(format!("created volume is {:?}", i));
                }
            }
            Err(e) => {
                let lv = lvs(&s.lvm, &s.devs, &sd)
                    .into_iter()
                    .find(|l| l.name == vol.as_str());
                outcome = if lv.is_some() {
                    "half-made, initializing"
                } else {
                    "not created"
                };
                if !matches!(
                    e.code(),
                    Some(ErrorCode::VolumeDoesNotExist | ErrorCode::ImageDoesNotExistInSD)
                ) {
                    v.push(format!("lookup failed oddly: {e}"));
                }
                if let Some(lv) = lv {
                    if !lv.has_tag("OVIRT_VOL_INITIALIZING") {
                        v.push("LV without the initializing tag".into());
                    }
                    fix_orphans(&c, &sd, &mut v).await;
                    if lvs(&s.lvm, &s.devs, &sd)
                        .iter()
                        .any(|l| l.name == vol.as_str())
                    {
                        v.push("fixing the orphan did not remove it".into());
                    }
                }
            }
        },
    }
    let fixes = c.api().check_domain(sd.clone()).await.via(&c).unwrap();
    for f in fixes {
        let kind = f.data["kind"].as_str().unwrap_or("");
        if !matches!(kind, "leftover" | "illegal_volume" | "orphan") {
            v.push(format!("unexpected finding: {}", f.description));
        }
    }
    agent.kill9();
    Trial {
        outcome,
        violations: v,
    }
}

/// Waits until no job runs (garbage collection may be wiping a leftover).
async fn wait_idle(c: &AgentClient) {
    for _ in 0..600 {
        let jobs = c.api().get_jobs(None, None).await.via(c).unwrap();
        if jobs.values().all(|j| !j.status.is_active()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("jobs still running after a minute");
}

/// Applies every orphan fix `StorageDomain.check` offers.
async fn fix_orphans(c: &AgentClient, sd: &Uuid, v: &mut Vec<String>) {
    let fixes = c.api().check_domain(sd.clone()).await.via(c).unwrap();
    let orphans: Vec<_> = fixes
        .into_iter()
        .filter(|f| f.data["kind"] == "orphan")
        .collect();
    if orphans.is_empty() {
        v.push("half-made LV not reported by check".into());
    }
    for f in orphans {
        let t = c
            .api()
            .fix_domain(sd.clone(), f, None)
            .await
            .via(c)
            .unwrap();
        let info = wait_job(c, &t.uuid).await;
        if info.status != JobStatus::Done {
            v.push(format!("orphan fix failed: {:?}", info.error));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn block_crash_matrix() {
    require_block!();
    let disks = TestDisks::new(1, DISK);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let activation = disks.dir().join("activation");
    let sd = uuid();
    {
        // The domain, made by an agent that is gone before the trials start.
        let setup = AgentProc::start(AgentOptions {
            config: Some(block_config(
                disks.paths(),
                "create_default_domains = false",
                &format!("state_dir = {:?}", activation.display().to_string()),
            )),
            ..Default::default()
        });
        create_block_domain(&setup.client(), &sd, disks.paths()).await;
    }
    let s = Setup {
        disks,
        lvm,
        devs,
        sd,
        activation,
    };
    let full = std::env::var_os("SDM_FULL").is_some();
    let trials = if full { 60 } else { POINTS.len() };
    let mut rng = Rng(0x0b10_c4ed ^ trials as u64);
    let mut table: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let mut violations = Vec::new();
    for t in 0..trials {
        let (op, point) = POINTS[if full {
            (rng.next() as usize) % POINTS.len()
        } else {
            t
        }];
        let trial = run_trial(&s, op, point, &mut rng).await;
        let key = format!("{op:?} @ {}", point.unwrap_or("random delay"));
        *table.entry((key.clone(), trial.outcome)).or_default() += 1;
        for v in trial.violations {
            violations.push(format!("trial {t} ({key}): {v}"));
        }
    }
    println!("\nblock crash matrix: {trials} trials, local leases");
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
