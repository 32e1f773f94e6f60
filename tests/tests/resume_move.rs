//! Interrupted copies finished by another agent (issue 18), beyond `tests/resume.rs`:
//! - an `Image.move` of a two-volume chain killed (kill -9) in the middle of its second volume:
//!   re-issued on another agent, the first volume (LEGAL) is not copied again and the second
//!   continues from its checkpoint; with `force` the destination is replaced and copied whole,
//!   as VDSM does;
//! - a `SDM.copy_data` whose host is frozen (agent and sanlock daemon SIGSTOPped) until its
//!   lease is lost: the other host resumes it, and the thawed host writes nothing more;
//! - sdm-client's disk move whose copy host is killed: the retry resumes, and the report (the
//!   library's and `sdmctl disk move`'s output) says per attempt where its copy started.
//!
//! Every check reads what an engine can read (job status, `Image.getStatus`) or the bytes
//! (`cmp`), plus the agents' "copy finished" log lines for the engine's counters.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, CopyStartReport, Event, MovePolicy, Outcome, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::chains::{make_volume, qemu_io};
use sdm_tests::cluster::{create_disk, engine, spawn_move, Cluster, EventLog};
use sdm_tests::fencing::{eventually, sanlock_or_skip, signal, TwoHosts};
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn checkpoint_path(v: &Vol) -> PathBuf {
    v.path.with_file_name(format!("{}.checkpoint", v.vol))
}

/// The durable offset of a volume's checkpoint (the seal is the agent's business).
fn durable(v: &Vol) -> Option<u64> {
    durable_at(&checkpoint_path(v))
}

/// [`durable`] of the checkpoint file at `path`.
fn durable_at(path: &Path) -> Option<u64> {
    let raw = std::fs::read_to_string(path).ok()?;
    let (body, _) = raw.rsplit_once("\nsha256=")?;
    serde_json::from_str::<serde_json::Value>(body).ok()?["durable"].as_u64()
}

fn cmp(a: &Path, b: &Path) {
    let st = Command::new("cmp").arg(a).arg(b).status().expect("cmp");
    assert!(st.success(), "{} and {} differ", a.display(), b.display());
}

fn meta_of(v: &Vol) -> Vec<u8> {
    std::fs::read(v.path.with_extension("meta")).expect("read .meta")
}

async fn image_status(c: &AgentClient, sd: &Uuid, img: &Uuid) -> Vec<VolumeStatus> {
    c.api()
        .get_image_status(sd.clone(), img.clone())
        .await
        .via(c)
        .unwrap()
        .volumes
}

fn status_of<'a>(st: &'a [VolumeStatus], vol: &Uuid) -> &'a VolumeStatus {
    st.iter()
        .find(|s| &s.vol_id == vol)
        .unwrap_or_else(|| panic!("{vol} not in {st:?}"))
}

async fn start_move(c: &AgentClient, img: &Uuid, src: &Uuid, dst: &Uuid, force: bool) -> Uuid {
    let job = uuid();
    c.api()
        .move_image(
            img.clone(),
            src.clone(),
            dst.clone(),
            ImageOperation::Copy,
            None,
            Some(Flag(force)),
            None,
            Some(job.clone()),
        )
        .await
        .via(c)
        .unwrap();
    job
}

/// An owner agent with its two default domains, a chain base (RAW, 64 MiB of data) ← top
/// (COW, 32 MiB written) on the first, and the same chain as the move puts it on the second.
struct Chain {
    owner: AgentProc,
    sd1: Uuid,
    sd2: Uuid,
    dirs: (PathBuf, PathBuf),
    img: Uuid,
    /// Source volumes, base first.
    src: [Vol; 2],
    /// Where the move puts them.
    dst: [Vol; 2],
}

/// Checkpoints every 2 MiB, never by time (the tests choose the moment).
const IO: &str = "[io]\ncheckpoint_interval_ms = 3600000\ncheckpoint_bytes = 2097152\n";

impl Chain {
    async fn start() -> Chain {
        let owner = AgentProc::start(AgentOptions {
            host_id: Some(1),
            config: Some(format!("create_default_domains = true\n{IO}")),
            ..Default::default()
        });
        let c = owner.client();
        let (sd1, sd2, d1, d2) = default_domains(&c).await;
        let img = uuid();
        let base = make_volume(
            &c,
            &sd1,
            &img,
            64 * MIB,
            VolumeFormat::Raw,
            Preallocation::Sparse,
            None,
        )
        .await;
        write_pattern(&base.path, 0, 64 * MIB as usize, 71);
        let top = make_volume(
            &c,
            &sd1,
            &img,
            64 * MIB,
            VolumeFormat::Cow,
            Preallocation::Sparse,
            Some(&base),
        )
        .await;
        qemu_io(&top.path, "qcow2", &["write -P 0x5a 8M 32M"]);
        let on_dst = |v: &Vol| Vol {
            sd: sd2.clone(),
            img: img.clone(),
            vol: v.vol.clone(),
            path: volume_path(&d2, &img, &v.vol),
        };
        let dst = [on_dst(&base), on_dst(&top)];
        Chain {
            owner,
            sd1,
            sd2,
            dirs: (d1, d2),
            img,
            src: [base, top],
            dst,
        }
    }

    /// Another agent over both domains, copying one volume at a time at 16 MiB/s.
    fn mover(&self, host: u64) -> AgentProc {
        AgentProc::start(AgentOptions {
            host_id: Some(host),
            config: Some(format!(
                "create_default_domains = false\n\n[[domains]]\npath = {:?}\n\n[[domains]]\npath = {:?}\n\n{IO}bandwidth_limit = {}\nimage_parallelism = 1\n",
                self.dirs.0.display().to_string(),
                self.dirs.1.display().to_string(),
                16 * MIB
            )),
            ..Default::default()
        })
    }

    /// Moves the image on a new agent and kills it (kill -9) once the base is LEGAL on the
    /// destination and the top's checkpoint says 40 % of it is durable; returns that offset.
    async fn interrupted_move(&self) -> u64 {
        let mut m = self.mover(2);
        let job = start_move(&m.client(), &self.img, &self.sd1, &self.sd2, false).await;
        let top_bytes = std::fs::metadata(&self.src[1].path).unwrap().len();
        let target = top_bytes * 2 / 5;
        let deadline = Instant::now() + Duration::from_secs(90);
        while durable(&self.dst[1]).is_none_or(|d| d < target) {
            assert!(
                Instant::now() < deadline,
                "no top checkpoint at 40 % (job {job})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        m.kill9();
        durable(&self.dst[1]).expect("checkpoint kept")
    }
}

/// kill -9 in the middle of the second volume of a two-volume `Image.move`; another agent
/// re-issues it: the first volume stays as it is (LEGAL, not read or written again), the second
/// continues from its checkpoint, and the job's status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_move_of_a_chain_resumes_its_second_volume_on_another_agent() {
    let ch = Chain::start().await;
    let c = ch.owner.client();
    let at = ch.interrupted_move().await;
    let top_bytes = std::fs::metadata(&ch.src[1].path).unwrap().len();
    assert!(at > 0 && at < top_bytes, "durable {at} of {top_bytes}");

    // What any host reads from storage: the base done, the top resumable at stage 2/2.
    let st = image_status(&c, &ch.sd2, &ch.img).await;
    let base = status_of(&st, &ch.src[0].vol);
    assert_eq!((base.legality, base.generation), (Legality::Legal, 0));
    assert!(base.copy.is_none(), "{base:?}");
    let top = status_of(&st, &ch.src[1].vol);
    let copy = top.copy.clone().expect("top's copy status");
    assert_eq!(top.legality, Legality::Illegal);
    assert_eq!((copy.stage, copy.stages), (2, 2), "{copy:?}");
    assert!(copy.resumable && copy.host_id == 2, "{copy:?}");
    assert_eq!(copy.bytes_durable, at);
    let base_meta = meta_of(&ch.dst[0]);

    let job = start_move(&c, &ch.img, &ch.sd1, &ch.sd2, false).await;
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    // The job's status names the one copy it made and where it started.
    assert_eq!(
        done.copies,
        vec![CopyStart {
            vol_id: ch.src[1].vol.clone(),
            stage: 2,
            stages: 2,
            resumed_from: at,
            bytes_total: top_bytes,
            full_copy_reason: None,
        }]
    );
    let log = ch.owner.log_text();
    assert_eq!(
        try_copy_counters(&log, &ch.src[0].vol),
        None,
        "the LEGAL base was copied again"
    );
    let (from, read, written) = try_copy_counters(&log, &ch.src[1].vol).expect("top copied");
    let rest = top_bytes - at;
    assert_eq!(from, at);
    assert!(
        read <= rest && written <= rest,
        "read {read}, wrote {written}, remainder {rest}"
    );

    for (s, d) in ch.src.iter().zip(&ch.dst) {
        cmp(&s.path, &d.path);
        assert!(
            !checkpoint_path(d).exists(),
            "{} kept its checkpoint",
            d.vol
        );
    }
    assert_eq!(meta_of(&ch.dst[0]), base_meta, "the base was written again");
    let st = image_status(&c, &ch.sd2, &ch.img).await;
    for s in &ch.src {
        let d = status_of(&st, &s.vol);
        let src_gen = s.info(&c).await.generation;
        assert_eq!((d.legality, d.generation), (Legality::Legal, src_gen));
        assert!(d.copy.is_none() && d.checkpoint_error.is_none(), "{d:?}");
    }
}

/// `force` keeps VDSM's meaning after an interrupted move: the destination image is deleted
/// and every volume copied from 0 (the job says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_replaces_what_an_interrupted_move_left() {
    let ch = Chain::start().await;
    let c = ch.owner.client();
    ch.interrupted_move().await;
    let job = start_move(&c, &ch.img, &ch.sd1, &ch.sd2, true).await;
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    let got: Vec<_> = done
        .copies
        .iter()
        .map(|s| {
            (
                s.vol_id.clone(),
                s.stage,
                s.resumed_from,
                s.full_copy_reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (ch.src[0].vol.clone(), 1, 0, Some("no checkpoint")),
            (ch.src[1].vol.clone(), 2, 0, Some("no checkpoint")),
        ]
    );
    for (s, d) in ch.src.iter().zip(&ch.dst) {
        cmp(&s.path, &d.path);
    }
    assert!(
        c.api()
            .check_domain(ch.sd2.clone())
            .await
            .via(&c)
            .unwrap()
            .is_empty(),
        "no leftovers after force"
    );
}

/// Host A (agent and sanlock daemon) frozen with SIGSTOP in the middle of a copy until its
/// lease is lost; host B re-issues the copy as soon as sanlock lets it and continues from A's
/// checkpoint (bytes equal, only the remainder copied, LEGAL at generation 1); then A thaws
/// (daemon first: the daemon finds its lockspace lost and may kill the agent) and writes
/// nothing more into the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_frozen_until_its_lease_is_lost_resumes_on_another_host() {
    if !sanlock_or_skip("a_copy_frozen_until_its_lease_is_lost_resumes_on_another_host") {
        return;
    }
    frozen_copy_resumes_elsewhere("stopresume", false).await;
}

/// As above, but A's agent thaws while its sanlock daemon stays stopped (it can neither renew
/// nor kill anything): the agent alone must see that its lease deadline has passed and write
/// nothing more; then the daemon thaws too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_agent_whose_daemon_stays_frozen_writes_nothing_after_the_resume() {
    if !sanlock_or_skip("a_thawed_agent_whose_daemon_stays_frozen_writes_nothing_after_the_resume")
    {
        return;
    }
    frozen_copy_resumes_elsewhere("stopagent", true).await;
}

/// After A thawed: give it every chance to write (its lease deadline has long passed), then
/// look: the bytes, the metadata and the absent checkpoint are B's, and A's job did not end
/// done. With A's daemon still frozen the job may not end at all (releasing its lease waits
/// for the daemon): it is only asked once then.
async fn a_wrote_nothing(
    h: &TwoHosts,
    job: &Uuid,
    (src, dst): (&Vol, &Vol),
    meta: &[u8],
    daemon_frozen: bool,
) {
    tokio::time::sleep(Duration::from_secs(8)).await;
    cmp(&src.path, &dst.path);
    assert_eq!(
        meta_of(dst),
        meta,
        "A wrote metadata after it lost its lease"
    );
    assert!(
        !checkpoint_path(dst).exists(),
        "A wrote a checkpoint after it lost its lease"
    );
    let ca = h.a.agent.client();
    if daemon_frozen {
        let jobs = ca
            .api()
            .get_jobs(None, Some(vec![job.clone()]))
            .await
            .via(&ca)
            .expect("A answers with its daemon frozen");
        let r = &jobs[job];
        eprintln!("A's agent thawed, its daemon still frozen; its job: {r:?}");
        assert_ne!(r.status, JobStatus::Done, "{r:?}");
    } else if h.a.agent_alive() {
        let r = wait_job(&ca, job).await;
        eprintln!("A's agent is alive after the thaw; its job: {r:?}");
        assert_ne!(r.status, JobStatus::Done, "{r:?}");
    } else {
        eprintln!("A's agent was killed by its sanlock daemon on thaw; its job died with it");
    }
    cmp(&src.path, &dst.path);
    assert_eq!(meta_of(dst), meta);
}

async fn frozen_copy_resumes_elsewhere(name: &str, agent_first: bool) {
    let io = "[io]\ncheckpoint_interval_ms = 3600000\ncheckpoint_bytes = 1048576\n";
    let h = TwoHosts::start_with(name, &[], &[], io).await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let total = 16 * MIB;
    let src = new_volume(&ca, &h.sd, total, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, total as usize, 41);
    let dst = new_volume(&ca, &h.sd, total, VolumeFormat::Raw).await;
    // 32 s at 512 KiB/s: A is a quarter in when frozen.
    let job = copy_volume(&ca, &src, &dst, Some(0), Some(MIB / 2)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while durable(&dst).is_none_or(|d| d < total / 4) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint at 25 % (job {job})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.a.freeze();
    let frozen = Instant::now();
    let at = durable(&dst).expect("checkpoint");
    assert!(at < total, "durable {at}");

    // B retries until A's lease is gone (651 until then), then resumes from A's checkpoint.
    let b_job = eventually(Duration::from_secs(200), Duration::from_secs(2), || async {
        let j = copy_volume(&cb, &src, &dst, Some(0), None).await;
        let r = wait_job(&cb, &j).await;
        match r.status {
            JobStatus::Done => Some(r),
            _ => {
                assert_eq!(r.error.as_ref().map(|e| e.code), Some(651), "{r:?}");
                None
            }
        }
    })
    .await
    .expect("B never got A's lease");
    eprintln!(
        "B resumed {:.1?} after the freeze, from {at} of {total} bytes",
        frozen.elapsed()
    );
    assert_eq!(b_job.copies.len(), 1, "{b_job:?}");
    let start = &b_job.copies[0];
    assert_eq!(
        (
            start.resumed_from,
            start.bytes_total,
            start.full_copy_reason.as_deref()
        ),
        (at, total, None),
        "{b_job:?}"
    );
    let (from, read, written) =
        try_copy_counters(&h.b.agent.log_text(), &dst.vol).expect("B's copy line");
    assert_eq!(from, at);
    assert!(
        read <= total - at && written <= total - at,
        "read {read}, wrote {written}, remainder {}",
        total - at
    );
    cmp(&src.path, &dst.path);
    let i = dst.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
    let meta = meta_of(&dst);
    assert!(!checkpoint_path(&dst).exists());

    if agent_first {
        signal(h.a.agent.pid(), libc::SIGCONT);
        a_wrote_nothing(&h, &job, (&src, &dst), &meta, true).await;
    }
    h.a.thaw();
    a_wrote_nothing(&h, &job, (&src, &dst), &meta, false).await;
    let i = dst.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
}

/// Agents of the client tests: checkpoints every MiB.
const CLUSTER_IO: &str = "[io]\ncheckpoint_interval_ms = 3600000\ncheckpoint_bytes = 1048576\n";

/// A disk move's copy (8 MiB at 1 MiB/s) caught once 2 MiB are durable, whose host is then
/// killed; returns the victim's index and the durable offset it left.
async fn kill_the_copy_host(cluster: &mut Cluster, img: &Uuid, vol: &Uuid) -> u64 {
    let (victim, job) = cluster
        .wait_running("copy_data", 0, Duration::from_secs(30))
        .await;
    let dst = cluster.volume_path(&cluster.sd2, img, vol);
    let ck = dst.with_file_name(format!("{vol}.checkpoint"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while durable_at(&ck).is_none_or(|d| d < 2 * MIB) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint at 2 MiB (job {})",
            job.id
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill9(victim);
    durable_at(&ck).expect("checkpoint kept")
}

/// The library's report of a move whose copy host died: attempt 1 a full copy (fenced),
/// attempt 2 on another host resumed from the checkpoint attempt 1 left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_a_retried_copy_as_resumed() {
    let mut cluster = Cluster::start_configured(3, |_| vec![], CLUSTER_IO).await;
    let disk = create_disk(&cluster, &cluster.sd1, 8, 0).await;
    let vol = disk.volumes[0].vol.clone();
    let dir = tempfile::tempdir().unwrap();
    let disks = std::sync::Arc::new(engine(&cluster, &dir.path().join("journal")).await);
    let log = std::sync::Arc::new(EventLog::default());
    let policy = MovePolicy {
        bandwidth_limit: Some(MIB),
        verify: true,
        ..Default::default()
    };
    let task = spawn_move(&disks, &log, &disk.img, &cluster.sd1, &cluster.sd2, policy);
    let at = kill_the_copy_host(&mut cluster, &disk.img, &vol).await;
    let report = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    let v = &report.volumes[0];
    assert_eq!(v.attempts.len(), 2, "{v:#?}");
    assert_eq!(v.attempts[0].outcome, "fenced");
    assert_eq!(
        v.attempts[0].start,
        Some(CopyStartReport::Full {
            reason: "no checkpoint".into()
        })
    );
    let resumed = CopyStartReport::Resumed {
        from: at,
        total: 8 * MIB,
    };
    assert_eq!(v.attempts[1].outcome, "done");
    assert_eq!(v.attempts[1].start, Some(resumed.clone()), "{v:#?}");
    assert_eq!(
        resumed.to_string(),
        format!("resumed from {at} of {} bytes", 8 * MIB)
    );
    assert_eq!(v.checksum.as_deref(), Some(disk.volumes[0].sha256.as_str()));
    // The sink heard it too, when the attempt ended.
    assert!(
        log.events().iter().any(|e| matches!(e,
            Event::CopyEnded { done: true, start: Some(s), .. } if *s == resumed)),
        "{:#?}",
        log.events()
    );
}

/// `sdmctl disk move` prints, per volume, where each attempt's copy started once a copy was
/// retried: the user sees the resume on stdout, not only in a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdmctl_disk_move_prints_a_resumed_retry() {
    let mut cluster = Cluster::start_configured(3, |_| vec![], CLUSTER_IO).await;
    let disk = create_disk(&cluster, &cluster.sd1, 8, 0).await;
    let vol = disk.volumes[0].vol.clone();
    let dir = tempfile::tempdir().unwrap();
    let child = sdmctl_cmd(&cluster.urls())
        .args(["disk", "move", disk.img.as_str()])
        .args(["--from", cluster.sd1.as_str(), "--to", cluster.sd2.as_str()])
        .args(["--bandwidth", "1M", "--journal"])
        .arg(dir.path().join("journal"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sdmctl");
    let at = kill_the_copy_host(&mut cluster, &disk.img, &vol).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("sdmctl output");
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let want = [
        "attempt 1 on ".to_string(),
        ": full copy: no checkpoint (fenced)".to_string(),
        format!(": resumed from {at} of {} bytes (done)", 8 * MIB),
    ];
    for w in &want {
        assert!(text.contains(w.as_str()), "{w:?} missing from:\n{text}");
    }
}
