//! Two hosts moving the same image at once: host A's `Image.move` of a two-volume chain is held
//! (a failpoint sleeps) at one phase, host B's move of the same image onto the same domain
//! starts then, and both run to their end. Phases of A: one volume created of two; both
//! created (nothing copied, no lease taken yet); copying the first; the first LEGAL and copying
//! the second (also with B's `force`).
//!
//! Whatever the interleaving: at most one move succeeds; the other fails with
//! AcquireLockFailure (651); every destination volume that ends LEGAL holds the source's bytes
//! (`cmp`); the winner's image is whole afterwards (the loser deleted or rewrote nothing of
//! it); with no winner, a re-issued move without force completes; no leftovers at the end.
//!
//! The agents use the `local` lease backend (OFD locks), which conflicts across processes as
//! sanlock's leases do across hosts (`sdm_tests::cluster`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::cluster::{create_disk, Cluster, TestDisk};
use sdm_tests::*;

/// How long the failpoint holds A: long enough for B's whole move of a small chain.
const HOLD_MS: u64 = 20_000;
const IO: &str = "[io]\ncheckpoint_interval_ms = 3600000\ncheckpoint_bytes = 2097152\n";
/// Index of host A in the cluster (host id 2); B is index 0 (host id 1).
const A: usize = 1;
const B: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// The base created on the destination, the top not yet.
    HalfCreated,
    /// Both created ILLEGAL, no lease taken, nothing copied.
    Created,
    /// About to copy the base (A's leases taken).
    CopyingFirst,
    /// The base LEGAL, about to copy the top.
    CopyingSecond,
}

impl Phase {
    fn failpoint(self) -> &'static str {
        match self {
            Phase::HalfCreated => "sdm::image_move::created_one",
            Phase::Created => "sdm::image_move::after_create",
            Phase::CopyingFirst => "sdm::image_move::copy_first",
            Phase::CopyingSecond => "sdm::image_move::copy_later",
        }
    }
}

async fn start_move(
    c: &AgentClient,
    img: &Uuid,
    src: &Uuid,
    dst: &Uuid,
    force: bool,
) -> Result<Uuid, sdm_client::Error> {
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
        .map(|_| job)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .expect("cmp")
        .success()
}

async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(Instant::now() < deadline, "A never reached: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until A is held at `phase` (as storage shows it).
async fn reached(cl: &Cluster, disk: &TestDisk, phase: Phase) {
    let c = cl.client(B);
    let (sd2, img) = (&cl.sd2, &disk.img);
    let [base, top] = [&disk.volumes[0].vol, &disk.volumes[1].vol];
    let meta = |v: &Uuid| cl.volume_path(sd2, img, v).with_extension("meta");
    match phase {
        Phase::HalfCreated => until("base created", async || meta(base).exists()).await,
        Phase::Created => until("top created", async || meta(top).exists()).await,
        Phase::CopyingFirst => {
            until("base lease held", async || {
                try_volume_info(&c, sd2, img, base)
                    .await
                    .is_ok_and(|i| !i.lease.owners.is_empty())
            })
            .await
        }
        Phase::CopyingSecond => {
            until("base LEGAL, top lease held", async || {
                let b = try_volume_info(&c, sd2, img, base).await;
                let t = try_volume_info(&c, sd2, img, top).await;
                b.is_ok_and(|i| i.legality == Legality::Legal)
                    && t.is_ok_and(|i| !i.lease.owners.is_empty())
            })
            .await
        }
    }
    // The failpoint comes right after the state seen: let A settle into its sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Every destination volume that is LEGAL holds the source's bytes.
async fn no_mixed_bytes(cl: &Cluster, disk: &TestDisk) {
    let c = cl.client(B);
    for v in &disk.volumes {
        let Ok(info) = try_volume_info(&c, &cl.sd2, &disk.img, &v.vol).await else {
            continue;
        };
        if info.legality == Legality::Legal {
            assert!(
                same_bytes(
                    &cl.volume_path(&cl.sd1, &disk.img, &v.vol),
                    &cl.volume_path(&cl.sd2, &disk.img, &v.vol)
                ),
                "LEGAL destination volume {} differs from the source",
                v.vol
            );
        }
    }
}

/// The destination is the source's image exactly, LEGAL, leases free, no leftovers; the
/// source is untouched.
async fn moved_whole(cl: &Cluster, disk: &TestDisk) {
    let c = cl.client(B);
    let mut listed = c
        .api()
        .get_volumes(cl.sd2.clone(), disk.img.clone())
        .await
        .via(&c)
        .expect("dst volumes");
    listed.sort();
    let mut want: Vec<Uuid> = disk.volumes.iter().map(|v| v.vol.clone()).collect();
    want.sort();
    assert_eq!(listed, want, "destination has exactly the source's volumes");
    for v in &disk.volumes {
        for sd in [&cl.sd1, &cl.sd2] {
            let info = volume_info(&c, sd, &disk.img, &v.vol).await;
            assert_eq!(info.legality, Legality::Legal, "{} on {sd}", v.vol);
            assert!(info.lease.owners.is_empty(), "{} on {sd}: {info:?}", v.vol);
        }
        assert_eq!(
            sha256sum(&cl.volume_path(&cl.sd1, &disk.img, &v.vol)),
            v.sha256,
            "source {} untouched",
            v.vol
        );
        assert_eq!(
            sha256sum(&cl.volume_path(&cl.sd2, &disk.img, &v.vol)),
            v.sha256,
            "destination {} is the source's",
            v.vol
        );
    }
    let fixes = c.api().check_domain(cl.sd2.clone()).await.via(&c).unwrap();
    assert!(fixes.is_empty(), "leftovers on the destination: {fixes:?}");
}

async fn race(phase: Phase, b_force: bool) {
    let fp = format!("{}=1*sleep({HOLD_MS})", phase.failpoint());
    let cl = Cluster::start_configured(
        2,
        |i| {
            if i == A {
                vec![("FAILPOINTS", fp.as_str())]
            } else {
                vec![]
            }
        },
        IO,
    )
    .await;
    let disk = create_disk(&cl, &cl.sd1, 16, 1).await;
    let (ca, cb) = (cl.client(A), cl.client(B));
    let job_a = start_move(&ca, &disk.img, &cl.sd1, &cl.sd2, false)
        .await
        .expect("A's move");
    reached(&cl, &disk, phase).await;
    let job_b = start_move(&cb, &disk.img, &cl.sd1, &cl.sd2, b_force)
        .await
        .expect("B's move is accepted (the destination is not LEGAL yet)");
    let b = wait_job(&cb, &job_b).await;
    let a = wait_job(&ca, &job_a).await;
    eprintln!("{phase:?} force={b_force}: A {:?} {:?}", a.status, a.error);
    eprintln!("{phase:?} force={b_force}: B {:?} {:?}", b.status, b.error);

    let done = [&a, &b]
        .iter()
        .filter(|j| j.status == JobStatus::Done)
        .count();
    assert!(done <= 1, "both moves succeeded: {a:?} {b:?}");
    for j in [&a, &b] {
        if j.status != JobStatus::Done {
            assert_eq!(j.status, JobStatus::Failed, "{j:?}");
            let e = j.error.as_ref().expect("a failed job's error");
            assert_eq!(
                e.code,
                ErrorCode::AcquireLockFailure.code(),
                "the loser's error: {e:?}"
            );
            assert!(e.message.contains("another move"), "{e:?}");
        }
    }
    // A holds every destination lease once it copies: B cannot take the image from it.
    if matches!(phase, Phase::CopyingFirst | Phase::CopyingSecond) {
        assert_eq!(
            a.status,
            JobStatus::Done,
            "A, holding the leases, wins: {a:?}"
        );
    }
    no_mixed_bytes(&cl, &disk).await;
    if done == 0 {
        // Nobody won: a re-issued move (no force) from either host finishes the image.
        let again = start_move(&ca, &disk.img, &cl.sd1, &cl.sd2, false)
            .await
            .expect("re-issued move");
        let r = wait_job(&ca, &again).await;
        assert_eq!(r.status, JobStatus::Done, "{r:?}");
    }
    moved_whole(&cl, &disk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_starts_while_a_has_created_half_the_chain() {
    race(Phase::HalfCreated, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_starts_while_a_has_created_the_chain_but_copied_nothing() {
    race(Phase::Created, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_starts_while_a_copies_the_first_volume() {
    race(Phase::CopyingFirst, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_starts_while_a_copies_the_second_volume() {
    race(Phase::CopyingSecond, false).await;
}

/// `force` replaces a destination nobody works on; one another move holds is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_forced_while_a_copies_the_second_volume_deletes_nothing() {
    race(Phase::CopyingSecond, true).await;
}
