//! Fencing of the in-place qcow2 jobs (issue 12's rules applied to issue 14's verbs): a merge
//! holds the base's and the top's leases, so it is refused (651, nothing changed) while another
//! job or host holds the top's; and a merge whose sanlock registration is lost stops before it
//! writes the base, which stays ILLEGAL at its old generation (and a sparsify likewise).

use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::chains::*;
use sdm_tests::fencing::{eventually, sanlock_or_skip, TwoHosts};
use sdm_tests::*;

const MIB: u64 = 1 << 20;

/// A RAW base with data and a COW top over it that overwrites part of it, in a new image.
async fn chain(c: &AgentClient, sd: &Uuid) -> (Vol, Vol) {
    let img = uuid();
    let base = make_volume(
        c,
        sd,
        &img,
        8 * MIB,
        VolumeFormat::Raw,
        Preallocation::Sparse,
        None,
    )
    .await;
    qemu_io(&base.path, "raw", &["write -P 0x11 0 8M"]);
    let top = make_volume(
        c,
        sd,
        &img,
        8 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        Some(&base),
    )
    .await;
    qemu_io(&top.path, "qcow2", &["write -P 0x21 1M 4M"]);
    (base, top)
}

fn failed_with(j: &JobInfo) -> i32 {
    assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    j.error.as_ref().expect("a failed job has an error").code
}

/// One host, local leases: a copy into the top holds the top's lease; a merge of that top is
/// refused with 651 at once and the base is not touched.
#[tokio::test]
async fn a_merge_while_the_top_is_written_is_refused_651() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let (base, top) = chain(&c, &sd).await;
    let src = new_volume(&c, &sd, 8 * MIB, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, 8 * MIB as usize, 71);
    // About 16 s at 512 KiB/s: the copy is still running when the merge comes.
    let copy = copy_volume(&c, &src, &top, Some(0), Some(MIB / 2)).await;
    wait_running(&c, &copy).await;
    let base_sum = sha256sum(&base.path);
    let m = merge(&c, &base, &top, Some(0)).await;
    assert_eq!(failed_with(&m), 651, "{m:?}");
    assert_eq!(sha256sum(&base.path), base_sum, "the base was not written");
    let bi = base.info(&c).await;
    assert_eq!((bi.legality, bi.generation), (Legality::Legal, 0));
    c.api().abort_job(copy.clone()).await.via(&c).unwrap();
    let r = wait_job(&c, &copy).await;
    assert_eq!(r.status, JobStatus::Aborted, "{r:?}");
}

/// Two hosts: B holds the top's lease (an update of its metadata, slowed by a failpoint); A's
/// merge is refused with 651 and changes nothing; once B is done, the same merge succeeds.
#[tokio::test]
async fn a_merge_is_refused_while_another_host_holds_the_top_lease() {
    if !sanlock_or_skip("a_merge_is_refused_while_another_host_holds_the_top_lease") {
        return;
    }
    let h = TwoHosts::start(
        "mtop",
        &[],
        &[("FAILPOINTS", "sdm::update_volume::before_write=sleep(4000)")],
    )
    .await;
    let (ca, cb) = (h.a.agent.client(), h.b.agent.client());
    let (base, top) = chain(&ca, &h.sd).await;
    let base_sum = sha256sum(&base.path);
    let job = uuid();
    cb.api()
        .update_volume(
            job.clone(),
            top.vref(Some(0)),
            VolumeAttributes {
                description: Some(Description::parse("B was here").unwrap()),
                ..Default::default()
            },
        )
        .await
        .via(&cb)
        .unwrap();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (top.info(&ca).await.lease.owners == vec![2]).then_some(()) },
    )
    .await
    .expect("B holds the top's lease");
    let m = merge(&ca, &base, &top, Some(0)).await;
    assert_eq!(failed_with(&m), 651, "{m:?}");
    assert_eq!(sha256sum(&base.path), base_sum);
    let bi = base.info(&ca).await;
    assert_eq!((bi.legality, bi.generation), (Legality::Legal, 0));
    assert_eq!(wait_job(&cb, &job).await.status, JobStatus::Done);
    let scratch = tempfile::tempdir().unwrap();
    let want = flatten(scratch.path(), &top.path, VolumeFormat::Cow, "want.raw");
    let m = merge(&ca, &base, &top, Some(0)).await;
    assert_eq!(m.status, JobStatus::Done, "{m:?}");
    assert_same(&want, VolumeFormat::Raw, &base.path, VolumeFormat::Raw);
}

/// A's sanlock daemon dies after the merge marked the base ILLEGAL and before the commit: the
/// lost registration fences the job, the commit writes nothing, and the base stays ILLEGAL at
/// generation 0 (a retry by the engine, elsewhere, starts from there).
#[tokio::test]
async fn a_merge_that_loses_its_registration_writes_nothing_more() {
    if !sanlock_or_skip("a_merge_that_loses_its_registration_writes_nothing_more") {
        return;
    }
    let mut h = TwoHosts::start(
        "mreg",
        &[("FAILPOINTS", "sdm::merge::after_illegal=sleep(3000)")],
        &[],
    )
    .await;
    let ca = h.a.agent.client();
    let cb = h.b.agent.client();
    let (base, top) = chain(&ca, &h.sd).await;
    let base_sum = sha256sum(&base.path);
    let job = start_merge(&ca, &base, &top, Some(0), false).await;
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (base.info(&cb).await.legality == Legality::Illegal).then_some(()) },
    )
    .await
    .expect("the merge marked the base ILLEGAL");
    h.a.daemon.kill().unwrap();
    let r = wait_job(&ca, &job).await;
    assert_eq!(failed_with(&r), 651, "{r:?}");
    assert_eq!(
        sha256sum(&base.path),
        base_sum,
        "the fenced merge wrote into the base"
    );
    let bi = base.info(&cb).await;
    assert_eq!((bi.legality, bi.generation), (Legality::Illegal, 0));
}

/// The same for `SDM.sparsify_volume`: a lost registration after the ILLEGAL mark stops the
/// job before it rewrites a byte of the qcow2 file.
#[tokio::test]
async fn a_sparsify_that_loses_its_registration_writes_nothing_more() {
    if !sanlock_or_skip("a_sparsify_that_loses_its_registration_writes_nothing_more") {
        return;
    }
    let mut h = TwoHosts::start(
        "sreg",
        &[("FAILPOINTS", "sdm::sparsify::after_illegal=sleep(3000)")],
        &[],
    )
    .await;
    let ca = h.a.agent.client();
    let cb = h.b.agent.client();
    let v = make_volume(
        &ca,
        &h.sd,
        &uuid(),
        8 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await;
    // Zeros stored as data: what sparsify gives back.
    qemu_io(
        &v.path,
        "qcow2",
        &["write -P 0 0 4M", "write -P 0x5a 4M 1M"],
    );
    let before = sha256sum(&v.path);
    let job = uuid();
    ca.api()
        .sparsify_volume(job.clone(), v.vref(Some(0)))
        .await
        .via(&ca)
        .unwrap();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (v.info(&cb).await.legality == Legality::Illegal).then_some(()) },
    )
    .await
    .expect("the sparsify marked the volume ILLEGAL");
    h.a.daemon.kill().unwrap();
    let r = wait_job(&ca, &job).await;
    assert_eq!(failed_with(&r), 651, "{r:?}");
    assert_eq!(
        sha256sum(&v.path),
        before,
        "the fenced sparsify rewrote the file"
    );
    let i = v.info(&cb).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
}
