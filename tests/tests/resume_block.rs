//! Copies into block volumes that resume (issue 18 on block domains): the checkpoint lives in
//! the second 4 KiB of the destination's V5 metadata slot. Real agents over one VG on loop
//! devices (lvm2, device-mapper or loop-mapped LVs, the real io_uring data path), a RAW file
//! volume (and once a RAW block volume) copied into a RAW block volume, the agents run one
//! after another as hosts taking over: a copy killed (kill -9) half-way resumes on the next agent with only the remainder
//! read and written (the engine's counters); the bytes end equal, the destination LEGAL at
//! generation + 1, the region zeroed. A torn region gives a full copy with a logged reason;
//! kills around the region's write leave the old or the new record, never a trusted wrong one;
//! a new volume in a slot whose region still holds an old record starts clean. What the tests
//! look at (region, LV bytes) they read with `dd` on the PV, never through the agent. Root,
//! lvm2 and qemu-img only; each test says why it skips elsewhere.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_lvm::{Devices, Lvm};
use sdm_proto::*;
use sdm_tests::block::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;
/// The copy: one 128 MiB extent.
const SIZE: u64 = 128 * MIB;
/// Bytes between checkpoints.
const CKPT_BYTES: u64 = 4 * MIB;
/// Where a slot's checkpoint region starts, from the slot (sdm's choice, docs/block-domains.md).
const REGION_IN_SLOT: u64 = 4096;
const REGION: u64 = 4096;

/// One VG, a file domain holding the source, and agents that come and go over both.
struct Setup {
    disks: TestDisks,
    lvm: Lvm,
    devs: Devices,
    sd: Uuid,
    /// The activation records every agent shares, as a restarted agent does.
    activation: tempfile::TempDir,
    /// The agent that made the domains; stopped, it keeps the file domain's directory.
    _maker: AgentProc,
    fdir: PathBuf,
    src: Vol,
    next_host: u64,
}

impl Setup {
    async fn start() -> Setup {
        let disks = TestDisks::new(1, DISK);
        let (lvm, devs) = (test_lvm(&disks), disks.devices());
        let activation = tempfile::Builder::new()
            .prefix("sdm-rblk-")
            .tempdir()
            .unwrap();
        let mut maker = AgentProc::start(AgentOptions {
            host_id: Some(1),
            config: Some(block_config(
                disks.paths(),
                "create_default_domains = true\n",
                &state_line(&activation),
            )),
            ..Default::default()
        });
        let c = maker.client();
        let sd = uuid();
        create_block_domain(&c, &sd, disks.paths()).await;
        let (fsd, _, fdir, _) = file_domains(&c).await;
        // RAW, data in 8 MiB pieces, the second of every four a hole.
        let src = new_volume(&c, &fsd, SIZE, VolumeFormat::Raw).await;
        for (i, off) in (0..SIZE).step_by(8 * MIB as usize).enumerate() {
            if i % 4 != 1 {
                write_pattern(&src.path, off, 8 * MIB as usize, 500 + i as u64);
            }
        }
        maker.terminate();
        Setup {
            disks,
            lvm,
            devs,
            sd,
            activation,
            _maker: maker,
            fdir,
            src,
            next_host: 2,
        }
    }

    /// A new agent (a new host id) over the file domain and the block domain.
    fn join(&mut self, failpoints: Option<&str>) -> AgentProc {
        let host = self.next_host;
        self.next_host += 1;
        let top = format!(
            "create_default_domains = false\n\n[[domains]]\npath = {:?}\n\n[[domains]]\npath = \"/dev/{}\"\nkind = \"block\"\n\n[io]\ncheckpoint_interval_ms = 3600000\ncheckpoint_bytes = {CKPT_BYTES}\n",
            self.fdir.display().to_string(),
            self.sd
        );
        AgentProc::start(AgentOptions {
            host_id: Some(host),
            config: Some(block_config(
                self.disks.paths(),
                &top,
                &state_line(&self.activation),
            )),
            env: failpoints
                .map(|f| ("FAILPOINTS".to_string(), f.to_string()))
                .into_iter()
                .collect(),
            ..Default::default()
        })
    }

    /// A RAW block volume of the source's size (`ids`: image and volume, new ones if None),
    /// and its slot.
    async fn dest(&self, c: &AgentClient, ids: Option<(Uuid, Uuid)>) -> (Vol, u64) {
        let (img, vol) = ids.unwrap_or_else(|| (uuid(), uuid()));
        c.api()
            .create_volume(
                self.sd.clone(),
                img.clone(),
                vol.clone(),
                Capacity(Size(SIZE)),
                VolumeFormat::Raw,
                Preallocation::Preallocated,
                None,
                None,
            )
            .await
            .via(c)
            .unwrap();
        let lv = lvs(&self.lvm, &self.devs, &self.sd)
            .into_iter()
            .find(|l| l.name == vol.as_str())
            .expect("LV made");
        let v = Vol {
            sd: self.sd.clone(),
            img,
            vol,
            path: PathBuf::new(),
        };
        (v, slot_of(&lv))
    }

    fn region_at(&self, slot: u64) -> (PathBuf, u64) {
        let (pv, start, _) = lv_extent(&self.lvm, &self.devs, &self.sd, "metadata");
        (pv, start + slot_offset(slot) + REGION_IN_SLOT)
    }

    /// The slot's checkpoint region as stored.
    fn region(&self, slot: u64) -> Vec<u8> {
        let (pv, at) = self.region_at(slot);
        read_direct(&pv, at, REGION)
    }

    /// Writes `bytes` over the slot's checkpoint region, behind the agents' backs.
    fn put_region(&self, slot: u64, bytes: &[u8]) {
        let (pv, at) = self.region_at(slot);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let st = std::process::Command::new("dd")
            .arg(format!("if={}", f.path().display()))
            .arg(format!("of={}", pv.display()))
            .args(["oflag=direct,seek_bytes", "conv=notrunc", "status=none"])
            .arg(format!("seek={at}"))
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The JSON body of the record in the slot's region, when it parses (the seal is the
    /// agent's business).
    fn record(&self, slot: u64) -> Option<serde_json::Value> {
        let raw = self.region(slot);
        let text = String::from_utf8_lossy(&raw);
        let (body, _) = text.trim_end_matches('\0').rsplit_once("\nsha256=")?;
        serde_json::from_str(body).ok()
    }

    fn durable(&self, slot: u64) -> Option<u64> {
        self.record(slot).and_then(|j| j["durable"].as_u64())
    }

    /// Starts the copy of `src` onto `dst` (at generation 0) on `a`.
    async fn start_copy(&self, a: &AgentProc, src: &Vol, dst: &Vol, bw: Option<u64>) -> Uuid {
        copy_volume(&a.client(), src, dst, Some(0), bw).await
    }

    /// Copies `src` onto `dst` on a new agent throttled to 32 MiB/s, and kills that agent
    /// (kill -9) once a checkpoint says `pct` % is durable. Returns the durable offset left
    /// stored.
    async fn interrupted_copy(&mut self, src: &Vol, dst: &Vol, slot: u64, pct: u64) -> u64 {
        let mut a = self.join(None);
        let job = self.start_copy(&a, src, dst, Some(32 * MIB)).await;
        let target = SIZE * pct / 100;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.durable(slot).is_none_or(|d| d < target) {
            assert!(Instant::now() < deadline, "no checkpoint at {pct}% ({job})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.kill9();
        self.durable(slot).expect("checkpoint kept")
    }

    /// Copies `src` onto `dst` on a new agent to the end; returns the agent and the engine's
    /// (resumed_from, bytes read, bytes written).
    async fn finish_copy(&mut self, src: &Vol, dst: &Vol) -> (AgentProc, (u64, u64, u64)) {
        let b = self.join(None);
        let job = self.start_copy(&b, src, dst, None).await;
        let done = wait_job(&b.client(), &job).await;
        assert_eq!(done.status, JobStatus::Done, "{done:?}");
        let counters = copy_counters(&b.log_text(), &dst.vol);
        (b, counters)
    }

    /// A finished copy: the source file's bytes, LEGAL at generation 1, no checkpoint left.
    async fn assert_finished(&self, c: &AgentClient, dst: &Vol, slot: u64) {
        let want = std::fs::read(&self.src.path).unwrap();
        let got = read_lv(&self.lvm, &self.devs, &self.sd, dst.vol.as_str(), 0, SIZE);
        assert!(got == want, "the destination LV differs from the source");
        let st = status_of(c, dst).await;
        assert_eq!((st.legality, st.generation), (Legality::Legal, 1), "{st:?}");
        assert!(st.copy.is_none() && st.checkpoint_error.is_none(), "{st:?}");
        assert!(self.region(slot).iter().all(|b| *b == 0), "region zeroed");
    }
}

fn state_line(dir: &tempfile::TempDir) -> String {
    format!("state_dir = {:?}", dir.path().display().to_string())
}

fn skip() -> bool {
    if let Some(why) = block_skip_reason() {
        eprintln!("skipping: {why}");
        return true;
    }
    false
}

async fn status_of(c: &AgentClient, v: &Vol) -> VolumeStatus {
    let st = c
        .api()
        .get_image_status(v.sd.clone(), v.img.clone())
        .await
        .via(c)
        .unwrap();
    st.volumes
        .into_iter()
        .find(|s| s.vol_id == v.vol)
        .expect("volume listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_block_volume_killed_half_way_resumes_on_another_agent() {
    if skip() {
        return;
    }
    let mut s = Setup::start().await;
    let src = s.src.clone();

    // Killed at about half: the next agent continues from the checkpoint in the slot.
    let maker = s.join(None);
    let (dst, slot) = s.dest(&maker.client(), None).await;
    drop(maker);
    let durable = s.interrupted_copy(&src, &dst, slot, 50).await;
    assert!(durable > 0 && durable < SIZE, "durable {durable}");
    let reader = s.join(None);
    let st = status_of(&reader.client(), &dst).await;
    let copy = st.copy.clone().expect("copy status from the slot");
    assert_eq!(st.legality, Legality::Illegal);
    assert!(copy.resumable && copy.bytes_durable == durable, "{copy:?}");
    drop(reader);
    let (b, (from, read, written)) = s.finish_copy(&src, &dst).await;
    assert_eq!(from, durable, "resumed from the checkpoint");
    let rest = SIZE - from;
    assert!(
        read <= rest && written <= rest,
        "read {read}, wrote {written}, remainder {rest}"
    );
    s.assert_finished(&b.client(), &dst, slot).await;
    drop(b);

    // A new volume in a slot whose region still holds a record, as a host that removed the
    // volume without clearing it leaves it (VDSM never clears slots): it starts clean, even
    // made the way `Image.move` makes its destinations (same ids, ILLEGAL at generation 0) on
    // the same extents, where the old record and the old bytes would otherwise pass every check.
    let b = s.join(None);
    let (dst, slot) = s.dest(&b.client(), None).await;
    drop(b);
    s.interrupted_copy(&src, &dst, slot, 50).await;
    let old = s.region(slot);
    assert!(s.record(slot).is_some());
    let b = s.join(None);
    let c = b.client();
    let job = uuid();
    c.api()
        .delete_image(
            dst.img.clone(),
            dst.sd.clone(),
            None,
            None,
            None,
            Some(job.clone()),
        )
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &job).await.status, JobStatus::Done);
    assert!(s.region(slot).iter().all(|b| *b == 0), "deletion zeroed it");
    s.put_region(slot, &old);
    let (again, slot2) = s.dest(&c, Some((dst.img.clone(), dst.vol.clone()))).await;
    assert_eq!(slot2, slot, "the freed slot is the lowest free one");
    assert!(s.region(slot).iter().all(|b| *b == 0), "creation zeroed it");
    let illegal = VolumeAttributes {
        legality: Some(Legality::Illegal),
        generation: Some(Generation(0)),
        ..Default::default()
    };
    let done = update_volume(&c, again.vref(Some(0)), illegal).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    let st = status_of(&c, &again).await;
    assert_eq!((st.legality, st.generation), (Legality::Illegal, 0));
    assert!(st.copy.is_none() && st.checkpoint_error.is_none(), "{st:?}");
    drop(b);
    let (b, (from, _, _)) = s.finish_copy(&src, &again).await;
    assert_eq!(from, 0, "a full copy");
    assert!(!b.log_text().contains("resuming copy from checkpoint"));
    s.assert_finished(&b.client(), &again, slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_around_the_block_checkpoint_write_leave_the_old_or_the_new_record() {
    if skip() {
        return;
    }
    let mut s = Setup::start().await;
    let src = s.src.clone();

    // Held before or after the third checkpoint's write (the data copy goes on meanwhile and
    // waits for that checkpoint at its end), then killed: the region holds the second or the
    // third record, whole, and the next agent resumes from it.
    for point in [
        "sdm::checkpoint::before_write",
        "sdm::checkpoint::after_write",
    ] {
        let mut a = s.join(Some(&format!("{point}=2*off->sleep(60000)")));
        let c = a.client();
        let (dst, slot) = s.dest(&c, None).await;
        let job = s.start_copy(&a, &src, &dst, Some(16 * MIB)).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(Instant::now() < deadline, "{point}: never held");
            let jobs = c
                .api()
                .get_jobs(None, Some(vec![job.clone()]))
                .await
                .via(&c)
                .unwrap();
            let info = &jobs[&job];
            assert!(info.status.is_active(), "{point}: not held: {info:?}");
            if info.bytes_total > 0 && info.bytes_done >= info.bytes_total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.kill9();
        let durable = s.durable(slot).expect("a whole record");
        assert!(durable > 0 && durable <= SIZE, "{point}: durable {durable}");
        let (b, (from, read, written)) = s.finish_copy(&src, &dst).await;
        assert_eq!(from, durable, "{point}: resumed from the stored record");
        assert!(read <= SIZE - from && written <= SIZE - from);
        s.assert_finished(&b.client(), &dst, slot).await;
    }

    // A write torn (its first sector only; the first one, as a fast copy may make no more
    // than its final checkpoint): the seal is broken, nothing trusts it,
    // Image.getStatus says so, and the next copy is a full one with the reason logged.
    let a = s.join(Some("sdm::block::checkpoint_torn=return"));
    let (dst, slot) = s.dest(&a.client(), None).await;
    let job = s.start_copy(&a, &src, &dst, None).await;
    let done = wait_job(&a.client(), &job).await;
    assert_eq!(done.status, JobStatus::Failed, "{done:?}");
    drop(a);
    assert!(s.region(slot).iter().any(|b| *b != 0), "a torn record");
    let (b, (from, _, _)) = s.finish_copy(&src, &dst).await;
    assert_eq!(from, 0, "a full copy");
    assert!(
        b.log_text().contains("checkpoint seal broken"),
        "reason logged"
    );
    s.assert_finished(&b.client(), &dst, slot).await;

    // Block to block: the source an LV (the last destination, now LEGAL), killed half-way
    // and resumed the same way.
    let lv_src = dst.clone();
    drop(b);
    let b = s.join(None);
    let (dst, slot) = s.dest(&b.client(), None).await;
    drop(b);
    let durable = s.interrupted_copy(&lv_src, &dst, slot, 50).await;
    let (b, (from, read, written)) = s.finish_copy(&lv_src, &dst).await;
    assert_eq!(from, durable, "LV to LV resumed from the checkpoint");
    assert!(read <= SIZE - from && written <= SIZE - from);
    s.assert_finished(&b.client(), &dst, slot).await;

    // The torn region as Image.getStatus reports it, on a volume left that way.
    let (dst, slot) = s.dest(&b.client(), None).await;
    let mut torn = s.region(slot);
    torn[..19].copy_from_slice(b"{\"version\":1}\nsha25");
    s.put_region(slot, &torn);
    let st = status_of(&b.client(), &dst).await;
    assert!(st.copy.is_none() && st.checkpoint_error.is_some(), "{st:?}");
}
