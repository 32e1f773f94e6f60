//! `SDM.merge` (cold merge) through a real agent, with qemu-img as the oracle: the top's data
//! wins, the base grows, chain and legality after the merge, bitmaps merged, the refusals that
//! change nothing (generation mismatch, non-adjacent or foreign volumes, an ILLEGAL top), and
//! kill -9 mid-merge leaving the base ILLEGAL with a retry that succeeds.

use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::chains::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

/// base (format `bf`, `base_size`) <- top (COW, `top_size`) in one image, with data in both,
/// the top overwriting, zeroing and discarding ranges of the base.
async fn pair(
    c: &AgentClient,
    sd: &Uuid,
    bf: VolumeFormat,
    base_size: u64,
    top_size: u64,
) -> (Vol, Vol) {
    let img = uuid();
    let base = make_volume(c, sd, &img, base_size, bf, Preallocation::Sparse, None).await;
    qemu_io(
        &base.path,
        fmt(bf),
        &["write -P 0x11 0 4M", "write -P 0x12 6M 2M"],
    );
    let top = make_volume(
        c,
        sd,
        &img,
        top_size,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        Some(&base),
    )
    .await;
    let mut cmds = vec!["write -P 0x21 1M 2M", "write -z 6M 512k", "discard 7M 64k"];
    if top_size > base_size {
        cmds.push("write -P 0x22 9M 1M");
    }
    qemu_io(&top.path, "qcow2", &cmds);
    (base, top)
}

#[tokio::test]
async fn merge_commits_the_top_and_grows_the_base() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    for bf in [VolumeFormat::Raw, VolumeFormat::Cow] {
        for (bsize, tsize) in [(8 * MIB, 8 * MIB), (8 * MIB, 12 * MIB + 4096)] {
            let (base, top) = pair(&c, &sd, bf, bsize, tsize).await;
            let want = flatten(&agent.state_dir, &top.path, VolumeFormat::Cow, "want.raw");
            let top_sum = sha256sum(&top.path);
            let done = merge(&c, &base, &top, Some(0)).await;
            assert_eq!(done.status, JobStatus::Done, "{bf} {tsize}: {done:?}");
            assert_eq!(done.description, "merge_subchain");
            assert_eq!(done.progress, Some(100.0));
            let bi = base.info(&c).await;
            assert_eq!((bi.legality, bi.generation), (Legality::Legal, 1), "{bi:?}");
            assert_eq!(bi.capacity, Size(tsize.max(bsize)), "base grown to the top");
            assert_eq!(bi.voltype, VolumeRole::Internal, "the chain is unchanged");
            assert!(bi.lease.owners.is_empty());
            assert_eq!(info(&base.path, bf)["virtual-size"], tsize.max(bsize));
            // The base alone now reads what the chain read through the top.
            assert_same(&want, VolumeFormat::Raw, &base.path, bf);
            if bf == VolumeFormat::Cow {
                assert_check_clean(&base.path);
            }
            // The top is untouched and still on the base.
            let ti = top.info(&c).await;
            assert_eq!(
                (ti.legality, ti.generation, ti.parent.clone()),
                (Legality::Legal, 0, base.vol.clone())
            );
            assert_eq!(sha256sum(&top.path), top_sum);
            assert_same(&want, VolumeFormat::Raw, &top.path, VolumeFormat::Cow);
        }
    }
}

#[tokio::test]
async fn merge_refusals_change_nothing() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let (base, mid) = pair(&c, &sd, VolumeFormat::Cow, 8 * MIB, 8 * MIB).await;
    let top = make_volume(
        &c,
        &sd,
        &base.img,
        8 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        Some(&mid),
    )
    .await;
    qemu_io(&top.path, "qcow2", &["write -P 0x31 0 1M"]);
    let sums = || {
        [
            sha256sum(&base.path),
            sha256sum(&mid.path),
            sha256sum(&top.path),
        ]
    };
    let before = sums();
    let states = |c: AgentClient, vols: [Vol; 3]| async move {
        let mut v = Vec::new();
        for x in &vols {
            let i = x.info(&c).await;
            v.push((i.legality, i.generation, i.capacity));
        }
        v
    };
    let st0 = states(c.clone(), [base.clone(), mid.clone(), top.clone()]).await;
    let failed = |f: JobInfo| {
        assert_eq!(f.status, JobStatus::Failed, "{f:?}");
        f.error.unwrap().code
    };
    // Wrong generation of the base.
    assert_eq!(failed(merge(&c, &base, &mid, Some(5)).await), 911);
    // Not adjacent: the base is the top's grandparent.
    assert_eq!(failed(merge(&c, &base, &top, Some(0)).await), 921);
    // The top is not in the image.
    let stranger = make_volume(
        &c,
        &sd,
        &uuid(),
        8 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await;
    assert_eq!(failed(merge(&c, &base, &stranger, Some(0)).await), 920);
    // Swapped: the base is the top's child.
    assert_eq!(failed(merge(&c, &mid, &base, Some(0)).await), 921);
    // Same volume twice: refused before a job exists.
    let err = c
        .api()
        .merge(
            uuid(),
            SubchainInfo {
                sd_id: sd.clone(),
                img_id: base.img.clone(),
                top_id: base.vol.clone(),
                base_id: base.vol.clone(),
                base_generation: None,
            },
            None,
        )
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidParameterException));
    assert_eq!(sums(), before);
    assert_eq!(
        states(c.clone(), [base.clone(), mid.clone(), top.clone()]).await,
        st0
    );
    // An ILLEGAL top is refused (its data cannot be trusted).
    update_volume(&c, mid.vref(Some(0)), legality_attrs(Legality::Illegal)).await;
    assert_eq!(failed(merge(&c, &base, &mid, Some(0)).await), 227);
    assert_eq!(sha256sum(&base.path), before[0]);
    let bi = base.info(&c).await;
    assert_eq!((bi.legality, bi.generation), (Legality::Legal, 0));
}

#[tokio::test]
async fn merge_bitmaps_adds_and_merges_the_tops_bitmaps() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let (base, top) = pair(&c, &sd, VolumeFormat::Cow, 8 * MIB, 8 * MIB).await;
    let p = top.path.display().to_string();
    qemu_img(&["bitmap", "--add", &p, "b1"]);
    qemu_io(&top.path, "qcow2", &["write -P 0x41 3M 64k"]);
    let want = flatten(&agent.state_dir, &top.path, VolumeFormat::Cow, "want.raw");
    let job = start_merge(&c, &base, &top, Some(0), true).await;
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert_eq!(bitmap_names(&base.path), vec!["b1".to_string()]);
    assert_same(&want, VolumeFormat::Raw, &base.path, VolumeFormat::Cow);
    assert_check_clean(&base.path);
}

#[tokio::test]
async fn kill9_mid_merge_leaves_the_base_illegal_and_a_retry_succeeds() {
    let state = tempfile::tempdir().unwrap();
    let opts = |env: Vec<(String, String)>| AgentOptions {
        state_dir: Some(state.path().into()),
        config: Some("create_default_domains = true\n[io]\nbandwidth_limit = 4194304\n".into()),
        env,
        ..Default::default()
    };
    let mut agent = AgentProc::start(opts(vec![]));
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let img = uuid();
    let base = make_volume(
        &c,
        &sd,
        &img,
        64 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await;
    qemu_io(&base.path, "qcow2", &["write -P 0x11 0 64M"]);
    let top = make_volume(
        &c,
        &sd,
        &img,
        64 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        Some(&base),
    )
    .await;
    qemu_io(
        &top.path,
        "qcow2",
        &["write -P 0x22 0 40M", "write -z 48M 4M"],
    );
    let want = flatten(state.path(), &top.path, VolumeFormat::Cow, "want.raw");
    let job = start_merge(&c, &base, &top, Some(0), false).await;
    wait_running(&c, &job).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mid = c
        .api()
        .get_jobs(None, Some(vec![job.clone()]))
        .await
        .via(&c)
        .unwrap()[&job]
        .clone();
    assert!(mid.status.is_active() && mid.bytes_done > 0, "{mid:?}");
    agent.kill9();

    let agent = AgentProc::start(opts(vec![]));
    let c = agent.client();
    let bi = base.info(&c).await;
    assert_eq!(
        (bi.legality, bi.generation),
        (Legality::Illegal, 0),
        "{bi:?}"
    );
    assert!(bi.lease.owners.is_empty(), "the dead agent's lease is gone");
    let ti = top.info(&c).await;
    assert_eq!((ti.legality, ti.generation), (Legality::Legal, 0));
    // The engine retries with the generation it knew.
    let done = merge(&c, &base, &top, Some(0)).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    let bi = base.info(&c).await;
    assert_eq!((bi.legality, bi.generation), (Legality::Legal, 1));
    assert_same(&want, VolumeFormat::Raw, &base.path, VolumeFormat::Cow);
    // Clusters allocated by the interrupted run may leak (never corrupt): check passes
    // without errors, leaks are allowed.
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2", "--output=json"])
        .arg(&base.path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["corruptions"].as_u64().unwrap_or(0), 0, "{v}");
}
