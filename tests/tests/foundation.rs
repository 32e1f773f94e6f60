//! The foundation through a real agent process: every domain/volume/job verb via `sdm-client`,
//! bad input answered with the contract's codes and no change on disk, restart and SIGTERM.

use std::time::Duration;

use sdm_client::{SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;
use serde_json::json;

#[tokio::test]
async fn every_verb_through_the_client() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();

    let caps = c.api().get_capabilities().await.via(&c).unwrap();
    assert_eq!(caps.host_id, 1);
    assert!(caps.lease_backends.contains(&"local".to_string()));
    assert_eq!(caps.domains.len(), 2);
    let stats = c.api().get_stats().await.via(&c).unwrap();
    assert_eq!(stats.jobs_running, 0);
    assert!(stats.rss_bytes > 0 && stats.open_fds > 0);

    let (sd1, sd2, dir1, dir2) = default_domains(&c).await;
    assert!(
        dir1.ends_with(sd1.as_str()),
        "list gives the domain directory"
    );
    assert!(dir1.join("dom_md/metadata").exists());

    // A third domain: create, attach again (same directory: no-op), detach, attach by path.
    let sd3 = uuid();
    let root = agent.state_dir.join("domains");
    c.api()
        .create_domain(
            sd3.clone(),
            root.to_string_lossy().into(),
            Some(Description::parse("third").unwrap()),
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    let dir3 = root.join(sd3.as_str());
    let again = c
        .api()
        .attach_domain(dir3.to_string_lossy().into(), None, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(again.sd_id, sd3);
    c.api().detach_domain(sd3.clone()).await.via(&c).unwrap();
    assert_eq!(c.api().list_domains().await.via(&c).unwrap().len(), 2);
    let err = c.api().get_images(sd3.clone()).await.via(&c).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StorageDomainDoesNotExist));
    c.api()
        .attach_domain(dir3.to_string_lossy().into(), None, None)
        .await
        .via(&c)
        .unwrap();
    assert!(c
        .api()
        .get_images(sd3.clone())
        .await
        .via(&c)
        .unwrap()
        .is_empty());
    let err = c
        .api()
        .create_domain(sd3.clone(), root.to_string_lossy().into(), None, None, None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StorageDomainAlreadyExists));

    // Volumes of every kind.
    let img = uuid();
    let (raw, pre, base, top) = (uuid(), uuid(), uuid(), uuid());
    let api = c.api();
    create_volume(
        &c,
        &sd1,
        &img,
        &raw,
        16 << 20,
        VolumeFormat::Raw,
        None,
        None,
    )
    .await;
    api.create_volume(
        sd1.clone(),
        img.clone(),
        pre.clone(),
        Capacity(Size(4 << 20)),
        VolumeFormat::Raw,
        Preallocation::Preallocated,
        None,
        None,
    )
    .await
    .via(&c)
    .unwrap();
    create_volume(
        &c,
        &sd2,
        &img,
        &base,
        32 << 20,
        VolumeFormat::Cow,
        None,
        Some(Description::parse("{\"DiskAlias\":\"base\"}").unwrap()),
    )
    .await;
    create_volume(
        &c,
        &sd2,
        &img,
        &top,
        32 << 20,
        VolumeFormat::Cow,
        Some(base.clone()),
        None,
    )
    .await;
    let mut vols = api
        .get_volumes(sd1.clone(), img.clone())
        .await
        .via(&c)
        .unwrap();
    vols.sort();
    let mut want = vec![raw.clone(), pre.clone()];
    want.sort();
    assert_eq!(vols, want);
    assert_eq!(
        api.get_images(sd1.clone()).await.via(&c).unwrap(),
        vec![img.clone()]
    );

    let info = api
        .get_volume_info(sd1.clone(), img.clone(), raw.clone())
        .await
        .via(&c)
        .unwrap();
    assert_eq!(info.capacity, Size(16 << 20));
    assert_eq!(info.apparentsize, Size(16 << 20));
    assert_eq!(info.legality, Legality::Legal);
    assert_eq!(info.generation, 0);
    assert_eq!(info.voltype, VolumeRole::Leaf);
    assert!(info.parent.is_blank());
    assert!(info.lease.owners.is_empty());
    assert_eq!(info.status, "OK");
    // Sizes travel as decimal strings, as VDSM sends them.
    let raw_json = raw_call(
        agent.addr,
        "Volume.getInfo",
        json!({"sd_id": sd1, "img_id": img, "vol_id": raw}),
    );
    assert_eq!(raw_json["result"]["capacity"], json!("16777216"));
    let pinfo = api
        .get_volume_info(sd1.clone(), img.clone(), pre.clone())
        .await
        .via(&c)
        .unwrap();
    assert!(
        pinfo.truesize.0 >= 4 << 20,
        "preallocated volume is allocated"
    );
    let binfo = api
        .get_volume_info(sd2.clone(), img.clone(), base.clone())
        .await
        .via(&c)
        .unwrap();
    assert_eq!(binfo.voltype, VolumeRole::Internal);
    assert_eq!(binfo.format, VolumeFormat::Cow);
    assert_eq!(binfo.description, "{\"DiskAlias\":\"base\"}");
    let tinfo = api
        .get_volume_info(sd2.clone(), img.clone(), top.clone())
        .await
        .via(&c)
        .unwrap();
    assert_eq!(tinfo.parent, base);
    let meta = std::fs::read_to_string(
        dir2.join("images")
            .join(img.as_str())
            .join(format!("{top}.meta")),
    )
    .unwrap();
    assert!(
        meta.ends_with("EOF\n")
            && meta.contains(&format!("PUUID={base}\n"))
            && meta.contains("SEQ=0\n")
    );

    // Jobs: checksum, duplicates, filters, abort/delete rules, subscription.
    let data = volume_path(&dir1, &img, &raw);
    write_pattern(&data, 1 << 20, 3 << 20, 7);
    let job = start_checksum(&c, &sd1, &img, &raw).await;
    let dup = api
        .checksum_volume(job.clone(), sd1.clone(), img.clone(), raw.clone(), None)
        .await
        .via(&c)
        .unwrap_err();
    assert_eq!(dup.code(), Some(ErrorCode::JobExists));
    let done = c.wait_job(&job, |_| {}).await.unwrap();
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(done.progress, Some(100.0));
    assert_eq!(done.job_type, "storage");
    assert_eq!(done.result.as_ref().unwrap().checksum, sha256sum(&data));
    let filtered = api
        .get_jobs(Some("storage".into()), Some(vec![job.clone()]))
        .await
        .via(&c)
        .unwrap();
    assert_eq!(filtered.len(), 1);
    assert!(api
        .get_jobs(Some("v2v".into()), None)
        .await
        .via(&c)
        .unwrap()
        .is_empty());
    assert!(api
        .get_jobs(None, None)
        .await
        .via(&c)
        .unwrap()
        .contains_key(&job));
    assert_eq!(
        api.abort_job(job.clone()).await.via(&c).unwrap_err().code(),
        Some(ErrorCode::JobNotActive)
    );
    assert!(api.delete_job(job.clone()).await.via(&c).unwrap());
    assert_eq!(
        api.delete_job(job.clone())
            .await
            .via(&c)
            .unwrap_err()
            .code(),
        Some(ErrorCode::NoSuchJob)
    );
    assert_eq!(
        api.abort_job(uuid()).await.via(&c).unwrap_err().code(),
        Some(ErrorCode::NoSuchJob)
    );

    // The subscription stream ends with the terminal state.
    let ws = c.websocket().await.unwrap();
    let job2 = start_checksum(&c, &sd1, &img, &raw).await;
    let mut sub = ws.subscribe_job(job2.clone()).await.unwrap();
    let mut last = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
    {
        let info = item.unwrap();
        let terminal = !info.status.is_active();
        last = Some(info);
        if terminal {
            break;
        }
    }
    assert_eq!(last.unwrap().status, JobStatus::Done);
    let err = ws.subscribe_job(uuid()).await.unwrap_err();
    assert!(
        err.to_string().contains("66") || err.to_string().contains("does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_inputs_get_contract_codes_and_change_nothing() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let img = uuid();
    let vol = uuid();
    create_volume(&c, &sd, &img, &vol, 1 << 20, VolumeFormat::Raw, None, None).await;
    let before = snapshot(&agent.state_dir);

    // Transport-level: malformed JSON and unknown methods keep JSON-RPC's own codes.
    let (_, body) = raw_post(agent.addr, b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":");
    assert!(body.contains("-32700"), "{body}");
    assert_eq!(
        error_code(&raw_call(agent.addr, "Volume.explode", json!({}))),
        -32601
    );

    let good = |over: serde_json::Value| {
        let mut p = json!({"sd_id": sd, "img_id": uuid(), "vol_id": uuid(), "capacity": 1048576, "format": "RAW", "preallocate": "SPARSE"});
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        p
    };
    let cases: Vec<(&str, serde_json::Value, i64)> = vec![
        // Hostile and non-canonical ids never reach a path.
        ("traversal sd", good(json!({"sd_id": "../../etc"})), 1000),
        ("slash img", good(json!({"img_id": "a/b"})), 1000),
        ("empty vol", good(json!({"vol_id": ""})), 1000),
        (
            "uppercase junk",
            good(json!({"vol_id": "5F7D1F2E-29A6-4F0B-9A35-1C2B3D4E5F60;rm"})),
            1000,
        ),
        (
            "uppercase uuid",
            good(json!({"img_id": "5F7D1F2E-29A6-4F0B-9A35-1C2B3D4E5F60"})),
            1000,
        ),
        ("id as number", good(json!({"sd_id": 12})), 1000),
        // Sizes.
        ("capacity 0", good(json!({"capacity": 0})), 1000),
        ("capacity negative", good(json!({"capacity": -1})), 1000),
        ("capacity words", good(json!({"capacity": "ten"})), 1000),
        (
            "capacity 2^63",
            good(json!({"capacity": "9223372036854775808"})),
            1000,
        ),
        ("capacity float", good(json!({"capacity": 1.5})), 1000),
        // Enums and missing fields.
        ("unknown format", good(json!({"format": "VMDK"})), 1000),
        (
            "unknown prealloc",
            good(json!({"preallocate": "THICK"})),
            1000,
        ),
        ("missing capacity", good(json!({"capacity": null})), 1000),
        (
            "description newline",
            good(json!({"description": "x\nLEGALITY=LEGAL"})),
            1000,
        ),
        ("unknown domain", good(json!({"sd_id": uuid()})), 358),
        (
            "duplicate volume",
            good(json!({"img_id": img, "vol_id": vol})),
            212,
        ),
        (
            "raw with parent",
            good(json!({"parent_vol_id": uuid()})),
            1000,
        ),
    ];
    for (what, params, want) in cases {
        let r = raw_call(agent.addr, "Volume.create", params.clone());
        assert_eq!(error_code(&r), want, "{what}: {params} -> {r}");
        assert!(
            r["error"]["data"]["name"].is_string(),
            "{what}: error has a name: {r}"
        );
    }
    // Wrong params shape: positional array of the wrong types, no params at all.
    assert_eq!(
        error_code(&raw_call(agent.addr, "Volume.getInfo", json!([1, 2, 3]))),
        1000
    );
    assert_eq!(
        error_code(&raw_call(agent.addr, "Volume.getInfo", json!({}))),
        1000
    );
    // A path that is not a domain.
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "StorageDomain.attach",
            json!({"path": "/etc"})
        )),
        358
    );
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "StorageDomain.attach",
            json!({"path": "relative/dir"})
        )),
        1000
    );
    // Domain creation outside the configured roots is refused.
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "StorageDomain.create",
            json!({"sd_id": uuid(), "path": "/tmp"})
        )),
        1000
    );
    // copy_data: same volume, bad endpoint type, generation out of range, bitmaps.
    let ep = json!({"endpoint_type": "div", "sd_id": sd, "img_id": img, "vol_id": vol});
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "SDM.copy_data",
            json!({"job_id": uuid(), "source": ep, "destination": ep})
        )),
        1000
    );
    let mut ext = ep.clone();
    ext["endpoint_type"] = json!("external");
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "SDM.copy_data",
            json!({"job_id": uuid(), "source": ext, "destination": ep})
        )),
        1000
    );
    let mut g = ep.clone();
    g["vol_id"] = json!(uuid());
    g["generation"] = json!(1000);
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "SDM.copy_data",
            json!({"job_id": uuid(), "source": ep, "destination": g})
        )),
        1000
    );
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "SDM.update_volume",
            json!({"job_id": uuid(), "vol_info": ep, "vol_attr": {}})
        )),
        1000
    );
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "Image.move",
            json!({"imageID": img, "storagedomainID": sd, "dstSdUUID": uuid(), "operation": 2, "postZero": "false", "force": "false"})
        )),
        2009
    );
    assert_eq!(
        error_code(&raw_call(
            agent.addr,
            "Image.move",
            json!({"imageID": img, "storagedomainID": sd, "dstSdUUID": uuid(), "operation": 7})
        )),
        1000
    );
    // Nothing registered as a job (but the records of the volumes made above), nothing
    // changed on disk.
    let jobs = c.api().get_jobs(None, None).await.via(&c).unwrap();
    assert!(
        jobs.values().all(|j| j.description == "create_volume"),
        "{jobs:?}"
    );
    assert_eq!(
        before,
        snapshot(&agent.state_dir),
        "bad input changed files"
    );
    // The agent still serves.
    c.api().get_capabilities().await.via(&c).unwrap();
}

#[tokio::test]
async fn engine_quirks_are_accepted() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    // Sizes as strings, unknown parameters ignored.
    let r = raw_call(
        agent.addr,
        "Volume.create",
        json!({"sd_id": sd, "img_id": uuid(), "vol_id": uuid(), "capacity": "1048576", "format": "COW",
               "preallocate": "SPARSE", "storagepoolID": uuid(), "legal": true}),
    );
    // The id of the job recorded as done, as VDSM answers a task id.
    let task = r["result"].as_str().unwrap_or_default();
    assert!(sdm_proto::is_canonical_uuid(task), "{r}");
    // Booleans as strings and operation as a word: the request decodes and fails on state.
    let r = raw_call(
        agent.addr,
        "Image.delete",
        json!({"imageID": uuid(), "storagedomainID": sd, "postZero": "False", "force": "TRUE"}),
    );
    assert_eq!(error_code(&r), 268, "{r}");
}

#[tokio::test]
async fn restart_reattaches_and_sigterm_exits_cleanly() {
    let mut agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let (img, vol) = (uuid(), uuid());
    create_volume(&c, &sd1, &img, &vol, 1 << 20, VolumeFormat::Raw, None, None).await;
    agent.restart();
    let c = agent.client();
    let (a, b, _, _) = default_domains(&c).await;
    assert_eq!(
        (a, b),
        (sd1.clone(), sd2),
        "the same domains come back after a restart"
    );
    let info = c
        .api()
        .get_volume_info(sd1, img, vol)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(info.legality, Legality::Legal);
    let (status, took) = agent.terminate();
    assert!(status.success(), "SIGTERM exit status {status}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
}

/// The embedded default puts each domain under a root of its own (`<state>/domains/<n>/<sd>`),
/// as each real file domain has an export of its own: VDSM's discovery finds one domain per
/// mounted directory.
#[tokio::test]
async fn embedded_domains_have_a_root_each() {
    let mut agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, dir1, dir2) = default_domains(&c).await;
    let root = agent.state_dir.join("domains").canonicalize().unwrap();
    assert_eq!(dir1, root.join("1").join(sd1.as_str()));
    assert_eq!(dir2, root.join("2").join(sd2.as_str()));
    for own_root in [root.join("1"), root.join("2")] {
        let entries: Vec<_> = std::fs::read_dir(&own_root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries.len(), 1, "one domain per root: {entries:?}");
    }
    agent.restart();
    let c = agent.client();
    let again = default_domains(&c).await;
    assert_eq!(
        (again.0, again.1),
        (sd1, sd2),
        "the same domains after a restart"
    );
    assert_eq!(c.api().list_domains().await.via(&c).unwrap().len(), 2);
}

/// A state directory from agents before the layout above (`<state>/domains/<sd>`, and no
/// record of attached domains) starts as it is: its domains are found and attached, volumes
/// work, and no new domains are made.
#[tokio::test]
async fn an_old_flat_state_dir_still_attaches_its_domains() {
    use sdm_agent::storage::backend::DomainKind;
    use sdm_agent::storage::domain::Domain;

    let tmp = tempfile::Builder::new()
        .prefix("sdm-flat-")
        .tempdir()
        .unwrap();
    let state = tmp.path().join("state");
    let root = state.join("domains");
    std::fs::create_dir_all(&root).unwrap();
    let leases = sdm_lease::LocalLeases::new(1);
    let mut made = Vec::new();
    for n in 1..=2 {
        let sd = uuid();
        let dir = Domain::create(
            DomainKind::File,
            &root,
            &sd,
            &format!("sdm local domain {n}"),
            &leases,
            10,
        )
        .unwrap();
        made.push((sd, dir));
    }
    let mut agent = AgentProc::start(AgentOptions {
        state_dir: Some(state.clone()),
        ..Default::default()
    });
    for round in ["first start", "restart"] {
        let c = agent.client();
        let listed = c.api().list_domains().await.via(&c).unwrap();
        assert_eq!(listed.len(), 2, "{round}: {listed:?}");
        let (sd1, sd2, dir1, dir2) = default_domains(&c).await;
        assert_eq!((&sd1, &dir1), (&made[0].0, &made[0].1), "{round}");
        assert_eq!((&sd2, &dir2), (&made[1].0, &made[1].1), "{round}");
        assert!(!root.join("1").exists(), "{round}: no new embedded domain");
        let (img, vol) = (uuid(), uuid());
        create_volume(&c, &sd2, &img, &vol, 1 << 20, VolumeFormat::Raw, None, None).await;
        assert!(dir2
            .join("images")
            .join(img.as_str())
            .join(format!("{vol}.meta"))
            .exists());
        agent.restart();
    }
}
