//! `SDM.amend_volume`, `SDM.sparsify_volume` and the bitmap verbs through a real agent, with
//! qemu-img as the oracle, and the sequence number as chain order (VDSM's SEQ).

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::chains::*;
use sdm_tests::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

async fn cow(c: &AgentClient, sd: &Uuid) -> Vol {
    make_volume(
        c,
        sd,
        &uuid(),
        8 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await
}

fn done(j: &JobInfo) {
    assert_eq!(j.status, JobStatus::Done, "{j:?}");
}

fn failed_with(j: &JobInfo) -> i32 {
    assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    j.error.as_ref().unwrap().code
}

#[tokio::test]
async fn amend_upgrades_compat_and_refuses_what_it_cannot() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let v = cow(&c, &sd).await;
    let p = v.path.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "compat=0.10", &p, "8M"]);
    qemu_io(&v.path, "qcow2", &["write -P 0x11 0 1M"]);
    let want = flatten(&agent.state_dir, &v.path, VolumeFormat::Cow, "want.raw");
    assert_eq!(
        info(&v.path, VolumeFormat::Cow)["format-specific"]["data"]["compat"],
        "0.10"
    );
    let j = amend(&c, &v, Some(0), Qcow2Compat::V1_1).await;
    done(&j);
    assert_eq!(j.description, "amend_volume");
    assert_eq!(
        info(&v.path, VolumeFormat::Cow)["format-specific"]["data"]["compat"],
        "1.1"
    );
    let i = v.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
    assert_same(&want, VolumeFormat::Raw, &v.path, VolumeFormat::Cow);
    assert_check_clean(&v.path);

    // Generation mismatch: nothing changes.
    assert_eq!(
        failed_with(&amend(&c, &v, Some(0), Qcow2Compat::V1_1).await),
        911
    );
    assert_eq!(v.info(&c).await.generation, 1);

    // Unknown qcow2_attr keys and values: refused by the verb, no job, nothing changed.
    let before = sha256sum(&v.path);
    for attr in [
        json!({"compat": "1.1", "lazy_refcounts": true}),
        json!({"compat": "2.0"}),
        json!({}),
    ] {
        let job = uuid();
        let r = raw_call(
            agent.addr,
            "SDM.amend_volume",
            json!({"job_id": job, "vol_info": v.vref(None), "qcow2_attr": attr}),
        );
        assert_eq!(error_code(&r), 1000, "{attr}: {r}");
        let jobs = c
            .api()
            .get_jobs(None, Some(vec![job]))
            .await
            .via(&c)
            .unwrap();
        assert!(jobs.is_empty());
    }
    assert_eq!(sha256sum(&v.path), before);
    assert_eq!(v.info(&c).await.generation, 1);

    // RAW: UnsupportedOperation.
    let raw = make_volume(
        &c,
        &sd,
        &uuid(),
        8 * MIB,
        VolumeFormat::Raw,
        Preallocation::Sparse,
        None,
    )
    .await;
    assert_eq!(
        failed_with(&amend(&c, &raw, None, Qcow2Compat::V1_1).await),
        2009
    );
    assert_eq!(raw.info(&c).await.generation, 0);
}

#[tokio::test]
async fn sparsify_gives_back_zeros_and_reads_the_same() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    for f in [VolumeFormat::Raw, VolumeFormat::Cow] {
        let v = make_volume(&c, &sd, &uuid(), 16 * MIB, f, Preallocation::Sparse, None).await;
        qemu_io(
            &v.path,
            fmt(f),
            &[
                "write -P 0x11 0 1M",
                "write -P 0 1M 6M",
                "write -P 0x12 8M 64k",
            ],
        );
        let want = flatten(&agent.state_dir, &v.path, f, "want.raw");
        let before = v.info(&c).await.truesize.get();
        let j = sparsify(&c, &v, Some(0)).await;
        done(&j);
        assert_eq!(j.description, "sparsify_volume");
        let i = v.info(&c).await;
        assert_eq!((i.legality, i.generation), (Legality::Legal, 1));
        assert!(
            i.truesize.get() + 5 * MIB <= before,
            "{f}: {before} -> {}",
            i.truesize.get()
        );
        assert_same(&want, VolumeFormat::Raw, &v.path, f);
        if f == VolumeFormat::Cow {
            assert_check_clean(&v.path);
        }
        assert!(own_data_bytes(&v.path, f) <= MIB + 64 * 1024, "{f}");
    }
    // A shared volume (template) is not written.
    let t = make_volume(
        &c,
        &sd,
        &uuid(),
        8 * MIB,
        VolumeFormat::Raw,
        Preallocation::Sparse,
        None,
    )
    .await;
    let attrs = VolumeAttributes {
        role: Some(VolumeRole::Shared),
        ..Default::default()
    };
    done(&update_volume(&c, t.vref(Some(0)), attrs).await);
    assert_eq!(failed_with(&sparsify(&c, &t, None).await), 219);
}

#[tokio::test]
async fn bitmaps_add_remove_clear() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let v = cow(&c, &sd).await;
    done(&bitmap_job(&c, &v, BitmapVerb::Add, "b0").await);
    assert_eq!(bitmap_names(&v.path), vec!["b0"]);
    // Twice: AddBitmapError, nothing changed.
    assert_eq!(
        failed_with(&bitmap_job(&c, &v, BitmapVerb::Add, "b0").await),
        1620
    );
    done(&bitmap_job(&c, &v, BitmapVerb::Add, "b1").await);
    let mut names = bitmap_names(&v.path);
    names.sort();
    assert_eq!(names, vec!["b0", "b1"]);
    done(&bitmap_job(&c, &v, BitmapVerb::Remove, "b0").await);
    assert_eq!(bitmap_names(&v.path), vec!["b1"]);
    // A bitmap that is not there counts as removed.
    done(&bitmap_job(&c, &v, BitmapVerb::Remove, "b0").await);
    done(&bitmap_job(&c, &v, BitmapVerb::Clear, "").await);
    assert!(bitmap_names(&v.path).is_empty());
    assert_check_clean(&v.path);
    // Each finished job moved the generation on by one; the failed one did not.
    assert_eq!(v.info(&c).await.generation, 5);

    // A bitmap name already in the chain below cannot be added on top.
    let child = make_volume(
        &c,
        &sd,
        &v.img,
        8 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        Some(&v),
    )
    .await;
    done(&bitmap_job(&c, &v, BitmapVerb::Add, "below").await);
    assert_eq!(
        failed_with(&bitmap_job(&c, &child, BitmapVerb::Add, "below").await),
        1620
    );

    // RAW: UnsupportedOperation for all three, nothing changed.
    let raw = make_volume(
        &c,
        &sd,
        &uuid(),
        8 * MIB,
        VolumeFormat::Raw,
        Preallocation::Sparse,
        None,
    )
    .await;
    for verb in [BitmapVerb::Add, BitmapVerb::Remove, BitmapVerb::Clear] {
        assert_eq!(
            failed_with(&bitmap_job(&c, &raw, verb, "b0").await),
            2009,
            "{verb:?}"
        );
    }
    assert_eq!(raw.info(&c).await.generation, 0);
    // A name qemu-img would take for an option is refused by the verb.
    let r = raw_call(
        agent.addr,
        "SDM.add_bitmap",
        json!({"job_id": uuid(), "vol_info": v.vref(None), "bitmap": "--remove"}),
    );
    assert_eq!(error_code(&r), 1000, "{r}");
}

#[tokio::test]
async fn sequence_is_chain_order_not_a_write_counter() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let img = uuid();
    let (base, top) = (uuid(), uuid());
    create_volume(
        &c,
        &sd1,
        &img,
        &base,
        4 * MIB,
        VolumeFormat::Cow,
        None,
        None,
    )
    .await;
    // `sequence` is a server-side parameter (VDSM's); sent as VDSM may, a decimal string.
    let r = raw_call(
        agent.addr,
        "Volume.create",
        json!({"sd_id": sd1, "img_id": img, "vol_id": top, "capacity": 4 * MIB,
               "format": "COW", "preallocate": "SPARSE", "parent_vol_id": base,
               "sequence": "3"}),
    );
    assert!(r.get("error").is_none(), "{r}");
    let seq = |v: VolumeInfo| v.sequence;
    // Default 0; the parent became INTERNAL (a metadata write) and kept it.
    assert_eq!(seq(volume_info(&c, &sd1, &img, &base).await), 0);
    assert_eq!(seq(volume_info(&c, &sd1, &img, &top).await), 3);
    // Metadata writes (legality, generation) and a copy into the volume keep it.
    let v = Vol {
        sd: sd1.clone(),
        img: img.clone(),
        vol: top.clone(),
        path: volume_path(&domain_dir(&c, &sd1).await, &img, &top),
    };
    done(&update_volume(&c, v.vref(Some(0)), legality_attrs(Legality::Illegal)).await);
    done(&update_volume(&c, v.vref(Some(1)), legality_attrs(Legality::Legal)).await);
    assert_eq!(seq(v.info(&c).await), 3);
    let src = make_volume(
        &c,
        &sd1,
        &uuid(),
        4 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await;
    let job = copy_volume(&c, &src, &v, Some(2), None).await;
    done(&wait_job(&c, &job).await);
    assert_eq!(seq(v.info(&c).await), 3);
    // A move (copy) to another domain keeps each volume's sequence.
    let job = uuid();
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
    done(&wait_job(&c, &job).await);
    assert_eq!(seq(volume_info(&c, &sd2, &img, &top).await), 3);
    assert_eq!(seq(volume_info(&c, &sd2, &img, &base).await), 0);
    // Above VDSM's MAX_SEQUENCE: refused by the verb.
    let r = raw_call(
        agent.addr,
        "Volume.create",
        json!({"sd_id": sd1, "img_id": img, "vol_id": uuid(), "capacity": 1048576,
               "format": "RAW", "preallocate": "SPARSE", "sequence": 1u64 << 32}),
    );
    assert_eq!(error_code(&r), 1000, "{r}");
}
