//! IDs of other domains are refused and change nothing; links planted inside a domain do not
//! lead outside it.

use std::time::Duration;

use sdm_tests::hostile::*;
use sdm_tests::*;
use serde_json::{json, Value};

use crate::bed::{create_volume, foreign_events, outcome_of, Bed};

#[test]
fn ids_of_other_domains_are_refused_and_change_nothing() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let (sd1, sd2) = (sd[0].clone(), sd[1].clone());
    // In sd1: image A with volume a; image B with volume b. In sd2: image C with volume c.
    let (img_a, vol_a, img_b, vol_b, img_c, vol_c) = (
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
    );
    create_volume(addr, &sd1, &img_a, &vol_a, 4);
    create_volume(addr, &sd1, &img_b, &vol_b, 4);
    create_volume(addr, &sd2, &img_c, &vol_c, 4);
    write_pattern(
        &dirs[0].join("images").join(&img_a).join(&vol_a),
        0,
        1 << 20,
        5,
    );
    // A scratch destination whose changes are expected.
    let (img_s, vol_s) = (fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd2, &img_s, &vol_s, 4);
    let scratch = dirs[1].join("images").join(&img_s);

    let before = fs_state(&bed.root, &["agent.log"]);
    let mut watch = Watch::new(std::slice::from_ref(&bed.root));
    let ep = |s: &str, i: &str, v: &str| json!({"endpoint_type": "div", "sd_id": s, "img_id": i, "vol_id": v});
    let ep_gen = |s: &str, i: &str, v: &str, g: u64| json!({"endpoint_type": "div", "sd_id": s, "img_id": i, "vol_id": v, "generation": g});
    let fake_sd = fresh_uuid();
    let cases: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "volume of sd1 asked in sd2",
            "Volume.getInfo",
            json!({"sd_id": sd2, "img_id": img_a, "vol_id": vol_a}),
            &["error 201", "error 268"],
        ),
        (
            "volume of image A asked in image B",
            "Volume.getInfo",
            json!({"sd_id": sd1, "img_id": img_b, "vol_id": vol_a}),
            &["error 201"],
        ),
        (
            "image of sd1 listed in sd2",
            "Image.getVolumes",
            json!({"sd_id": sd2, "img_id": img_a}),
            &["error 268", "result []"],
        ),
        (
            "copy from a volume named in the wrong domain",
            "SDM.copy_data",
            json!({"job_id": fresh_uuid(), "source": ep(&sd2, &img_a, &vol_a), "destination": ep_gen(&sd2, &img_s, &vol_s, 0)}),
            &["job failed 201", "job failed 268", "error 201", "error 268"],
        ),
        (
            "copy into a volume named in the wrong image",
            "SDM.copy_data",
            json!({"job_id": fresh_uuid(), "source": ep(&sd2, &img_s, &vol_s), "destination": ep_gen(&sd1, &img_b, &vol_a, 0)}),
            &["job failed 201", "error 201"],
        ),
        (
            "copy from an unattached domain",
            "SDM.copy_data",
            json!({"job_id": fresh_uuid(), "source": ep(&fake_sd, &img_a, &vol_a), "destination": ep_gen(&sd2, &img_s, &vol_s, 0)}),
            &["job failed 358", "error 358"],
        ),
        (
            "checksum of a volume in the wrong domain",
            "Volume.checksum",
            json!({"job_id": fresh_uuid(), "sd_id": sd2, "img_id": img_a, "vol_id": vol_a}),
            &["job failed 201", "job failed 268", "error 201", "error 268"],
        ),
        (
            "update a volume in the wrong domain",
            "SDM.update_volume",
            json!({"job_id": fresh_uuid(), "vol_info": {"sd_id": sd2, "img_id": img_a, "vol_id": vol_a, "generation": 0}, "vol_attr": {"legality": "ILLEGAL"}}),
            &["job failed 201", "job failed 268", "error 201", "error 268"],
        ),
        (
            "update a volume in the wrong image",
            "SDM.update_volume",
            json!({"job_id": fresh_uuid(), "vol_info": {"sd_id": sd1, "img_id": img_b, "vol_id": vol_a, "generation": 0}, "vol_attr": {"description": "x"}}),
            &["job failed 201", "error 201"],
        ),
        (
            "delete an image in the wrong domain",
            "Image.delete",
            json!({"imageID": img_a, "storagedomainID": sd2, "postZero": true}),
            &["error 268"],
        ),
        (
            "move an image from the wrong domain",
            "Image.move",
            json!({"imageID": img_a, "storagedomainID": sd2, "dstSdUUID": sd1, "operation": 1}),
            &["error 268", "job failed 268"],
        ),
        (
            "move an image to an unattached domain",
            "Image.move",
            json!({"imageID": img_a, "storagedomainID": sd1, "dstSdUUID": fake_sd, "operation": 1}),
            &["error 358", "job failed 358"],
        ),
        (
            "COW child of a parent in another domain",
            "Volume.create",
            json!({"sd_id": sd2, "img_id": img_c, "vol_id": fresh_uuid(), "capacity": 4 << 20, "format": "COW", "preallocate": "SPARSE", "parent_vol_id": vol_a}),
            &["error 201", "error 1000"],
        ),
        (
            "fix an orphan named in another domain",
            "StorageDomain.fix",
            json!({"sd_id": sd2, "fix": {"type": "clean", "description": "x", "data": {"kind": "orphan", "img": img_a, "file": vol_a}}}),
            &[
                "error 1000",
                "job failed 201",
                "job failed 268",
                "job failed 100",
                "job failed 1000",
            ],
        ),
        (
            "fix a leftover with a traversal name",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "clean", "description": "x", "data": {"kind": "leftover", "name": format!("_remove_me_../../{}", bed.sentinel.display())}}}),
            &["error 1000"],
        ),
        (
            "fix an orphan with a traversal file",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "clean", "description": "x", "data": {"kind": "orphan", "img": img_a, "file": "../../../sentinel/victim"}}}),
            &["error 1000"],
        ),
        (
            "fix a size mismatch of a volume of another image",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "mend", "description": "x", "data": {"kind": "size_mismatch", "img": img_b, "vol": vol_a}}}),
            &[
                "job failed 201",
                "job failed 100",
                "job failed 208",
                "error 1000",
            ],
        ),
        (
            "delete an ILLEGAL volume that is LEGAL, confirmed",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "mend", "description": "x", "data": {"kind": "illegal_volume", "img": img_a, "vol": vol_a, "confirm_delete": true}}}),
            &["job failed 1000", "error 1000"],
        ),
        (
            "attach a fake domain in the sentinel",
            "StorageDomain.attach",
            json!({"path": bed.sentinel.join(std::fs::read_dir(&bed.sentinel).unwrap().flatten().find(|e| e.path().join("dom_md").exists()).unwrap().file_name())}),
            &["error 358", "error 100"],
        ),
        (
            "attach sd1 by a second spelling of its path",
            "StorageDomain.attach",
            json!({"path": format!("{}/../{}/", dirs[0].display(), sd1)}),
            &["result", "error 365"],
        ),
        (
            "attach through the link to the sentinel",
            "StorageDomain.attach",
            json!({"path": bed.targets.domain_root.join("evil-link")}),
            &["error 358"],
        ),
        (
            "create a domain through the link to the sentinel",
            "StorageDomain.create",
            json!({"sd_id": fresh_uuid(), "path": bed.targets.domain_root.join("evil-link")}),
            &["error 1000"],
        ),
        (
            "create a domain with the id of an attached one",
            "StorageDomain.create",
            json!({"sd_id": sd1, "path": bed.targets.domain_root}),
            &["error 365"],
        ),
        (
            "detach an unknown domain",
            "StorageDomain.detach",
            json!({"sd_id": fake_sd}),
            &["error 358"],
        ),
    ];
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (label, method, params, want) in &cases {
        let got = outcome_of(addr, method, params.clone());
        rows.push(format!("| {label} | `{method}` | {got} |"));
        if !want.iter().any(|w| got.starts_with(w)) {
            bad.push(format!("{label}: got {got}, expected one of {want:?}"));
        }
    }
    bed.alive("requests with ids of other domains");
    eprintln!("\n| request | method | outcome |\n|---|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    let after = fs_state(&bed.root, &["agent.log"]);
    let diff: Vec<String> = fs_diff(&before, &after)
        .into_iter()
        .filter(|d| !d.contains(scratch.to_str().unwrap()))
        .collect();
    let events = foreign_events(&mut watch, std::slice::from_ref(&scratch));
    assert!(diff.is_empty(), "AGENT BUG: files changed: {diff:#?}");
    assert!(events.is_empty(), "AGENT BUG: write events: {events:#?}");
    assert!(bad.is_empty(), "AGENT BUG: {bad:#?}");
}

/// Links planted inside a domain (by anyone who can write to shared storage) must not let a
/// wipe, a copy or a clean-up reach files outside the attached domains.
#[test]
fn links_planted_in_a_domain_do_not_lead_outside() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd1 = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let sd2 = dirs[1].file_name().unwrap().to_string_lossy().into_owned();
    let victim = bed.sentinel.join("victim");
    let victim_size = std::fs::metadata(&victim).unwrap().len();
    let mut findings = Vec::new();

    // 1. A volume whose data file is a link to a regular file outside: delete with postZero.
    let (img, vol) = (fresh_uuid(), fresh_uuid());
    let r = raw_call(
        addr,
        "Volume.create",
        json!({"sd_id": sd1, "img_id": img, "vol_id": vol, "capacity": victim_size, "format": "RAW", "preallocate": "SPARSE"}),
    );
    assert!(r["result"].is_string(), "{r}");
    let data = dirs[0].join("images").join(&img).join(&vol);
    std::fs::remove_file(&data).unwrap();
    std::os::unix::fs::symlink(&victim, &data).unwrap();
    let before = fs_state(&bed.sentinel, &[]);
    let got = outcome_of(
        addr,
        "Image.delete",
        json!({"imageID": img, "storagedomainID": sd1, "postZero": true}),
    );
    let diff = fs_diff(&before, &fs_state(&bed.sentinel, &[]));
    eprintln!("wipe of an image whose volume links outside: {got}; sentinel changes: {diff:?}");
    if !diff.is_empty() {
        findings.push(format!(
            "Image.delete(postZero) of an image whose volume file is a link to {} wrote through the link: {diff:?}",
            victim.display()
        ));
    }

    // 2. A copy destination whose data file is a link to a regular file outside.
    write_pattern(&victim, 0, victim_size as usize, 42);
    let (simg, svol, dimg, dvol) = (fresh_uuid(), fresh_uuid(), fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd1, &simg, &svol, 1);
    write_pattern(
        &dirs[0].join("images").join(&simg).join(&svol),
        0,
        1 << 20,
        9,
    );
    let r = raw_call(
        addr,
        "Volume.create",
        json!({"sd_id": sd2, "img_id": dimg, "vol_id": dvol, "capacity": 1 << 20, "format": "RAW", "preallocate": "SPARSE"}),
    );
    assert!(r["result"].is_string(), "{r}");
    let ddata = dirs[1].join("images").join(&dimg).join(&dvol);
    std::fs::remove_file(&ddata).unwrap();
    std::os::unix::fs::symlink(&victim, &ddata).unwrap();
    let before = fs_state(&bed.sentinel, &[]);
    let job = fresh_uuid();
    let got = outcome_of(
        addr,
        "SDM.copy_data",
        json!({"job_id": job, "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": simg, "vol_id": svol}, "destination": {"endpoint_type": "div", "sd_id": sd2, "img_id": dimg, "vol_id": dvol, "generation": 0}}),
    );
    let diff = fs_diff(&before, &fs_state(&bed.sentinel, &[]));
    eprintln!("copy into a volume that links outside: {got}; sentinel changes: {diff:?}");
    if !diff.is_empty() {
        findings.push(format!(
            "SDM.copy_data into a volume whose data file is a link to {} wrote through the link: {diff:?}",
            victim.display()
        ));
    }

    // 3. A leftover directory that is a link to a directory outside, cleaned at attach.
    write_pattern(&victim, 0, victim_size as usize, 42);
    let leftover = dirs[0]
        .join("images")
        .join(format!("_remove_me_ZERO_{}", fresh_uuid()));
    std::os::unix::fs::symlink(&bed.sentinel, &leftover).unwrap();
    let before = fs_state(&bed.sentinel, &[]);
    let r = raw_call(addr, "StorageDomain.detach", json!({"sd_id": sd1}));
    assert_eq!(r["result"], json!(true), "{r}");
    let r = raw_call(addr, "StorageDomain.attach", json!({"path": dirs[0]}));
    eprintln!("re-attach with a linked leftover: {r}");
    // Give a clean-up job time to run.
    std::thread::sleep(Duration::from_secs(2));
    let check = raw_call(addr, "StorageDomain.check", json!({"sd_id": sd1}));
    if let Some(fixes) = check["result"].as_array() {
        for f in fixes
            .iter()
            .filter(|f| f["data"]["kind"] == json!("leftover"))
        {
            let got = outcome_of(addr, "StorageDomain.fix", json!({"sd_id": sd1, "fix": f}));
            eprintln!("fix of the linked leftover: {got}");
        }
    }
    let diff = fs_diff(&before, &fs_state(&bed.sentinel, &[]));
    eprintln!("linked leftover: sentinel changes: {diff:?}");
    if !diff.is_empty() {
        findings.push(format!(
            "a `_remove_me_ZERO_` leftover that is a link to {} was wiped/removed through the link: {diff:?}",
            bed.sentinel.display()
        ));
    }
    bed.alive("planted links");
    assert!(
        findings.is_empty(),
        "AGENT BUG: links planted in a domain lead outside it:\n{}",
        findings.join("\n")
    );
}
