//! Extreme but valid values on real volumes, and jobs waiting for a lock that must not starve
//! the control plane.

use std::time::{Duration, Instant};

use sdm_tests::hostile::*;
use sdm_tests::*;
use serde_json::json;

use crate::bed::{create_volume, wait_raw_job, Bed};

/// Valid but extreme values on real volumes: the largest sizes, generations at the wrap, and
/// descriptions at the edges of what may become one metadata line. Only the volumes made
/// here may change, and a refused request must leave nothing behind.
#[test]
fn extreme_valid_values_on_real_volumes() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd1 = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let outside_before = fs_state(&bed.sentinel, &[]);
    let mut rows = Vec::new();
    let mut bad = Vec::new();

    // The largest capacities, RAW and COW: created, or refused with nothing left behind.
    for (fmt, cap) in [
        ("RAW", json!(i64::MAX)),
        ("COW", json!(i64::MAX.to_string())),
        ("RAW", json!(1u64 << 50)),
        ("COW", json!(1u64 << 60)),
    ] {
        let (img, vol) = (fresh_uuid(), fresh_uuid());
        let r = raw_call(
            addr,
            "Volume.create",
            json!({"sd_id": sd1, "img_id": img, "vol_id": vol, "capacity": cap, "format": fmt, "preallocate": "SPARSE"}),
        );
        let img_dir = dirs[0].join("images").join(&img);
        let left: Vec<String> = std::fs::read_dir(&img_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let got = match r.get("error") {
            Some(e) => {
                let code = e["code"].as_i64().unwrap_or(0);
                if !bed.known.contains_key(&code) {
                    bad.push(format!(
                        "{fmt} capacity {cap}: code {code} not in the table"
                    ));
                }
                if !left.is_empty() {
                    bad.push(format!(
                        "{fmt} capacity {cap} refused ({code}) but left {left:?}"
                    ));
                }
                format!(
                    "error {code}: {}",
                    short(e["message"].as_str().unwrap_or(""))
                )
            }
            None => {
                let info = raw_call(
                    addr,
                    "Volume.getInfo",
                    json!({"sd_id": sd1, "img_id": img, "vol_id": vol}),
                );
                if info["result"]["capacity"]
                    != json!(cap
                        .as_u64()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| cap.as_str().unwrap().to_string()))
                {
                    bad.push(format!(
                        "{fmt} capacity {cap}: getInfo says {}",
                        info["result"]["capacity"]
                    ));
                }
                format!("created, capacity {}", info["result"]["capacity"])
            }
        };
        rows.push(format!("| Volume.create {fmt} capacity {cap} | {got} |"));
    }

    // Descriptions: accepted ones are stored as one line, cut to 210 characters.
    let (img, vol) = (fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd1, &img, &vol, 1);
    let meta = dirs[0]
        .join("images")
        .join(&img)
        .join(format!("{vol}.meta"));
    let mut generation = 0u64;
    for (what, d) in [
        ("equals signs", "a=b=c".to_string()),
        ("EOF", "EOF".to_string()),
        ("JSON", r#"{"DiskAlias":"x\nLEGALITY=LEGAL"}"#.to_string()),
        ("2048 two-byte characters", "\u{e9}".repeat(2048)),
        ("U+2028 then a key", "x\u{2028}CAP=1".to_string()),
        ("U+2029 then EOF", "x\u{2029}EOF".to_string()),
        ("leading and trailing spaces", "  padded  ".to_string()),
    ] {
        let job = fresh_uuid();
        let r = raw_call(
            addr,
            "SDM.update_volume",
            json!({"job_id": job, "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": vol, "generation": generation}, "vol_attr": {"description": d}}),
        );
        let got = if let Some(e) = r.get("error") {
            format!("error {}", e["code"])
        } else {
            let info = wait_raw_job(addr, &job);
            if info["status"] == json!("done") {
                generation = (generation + 1) % 1000;
            }
            let text = std::fs::read_to_string(&meta).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let desc_lines = lines
                .iter()
                .filter(|l| l.starts_with("DESCRIPTION="))
                .count();
            let stored = raw_call(
                addr,
                "Volume.getInfo",
                json!({"sd_id": sd1, "img_id": img, "vol_id": vol}),
            )["result"]["description"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if desc_lines != 1 || lines.last() != Some(&"EOF") || text.len() > 512 {
                bad.push(format!("description {what}: .meta is {text:?}"));
            }
            // Python's str.splitlines(), which VDSM uses on metadata, also breaks lines at
            // U+2028 and U+2029: the line must stay one line for it too.
            if stored.contains(['\u{2028}', '\u{2029}']) {
                bad.push(format!(
                    "description {what} stored with a line separator Python's splitlines() breaks on: {stored:?}"
                ));
            }
            format!(
                "job {}, stored {} characters",
                info["status"].as_str().unwrap_or("?"),
                stored.chars().count()
            )
        };
        rows.push(format!("| update_volume description: {what} | {got} |"));
    }

    // Generation 999 and the wrap to 0.
    let job = fresh_uuid();
    let r = raw_call(
        addr,
        "SDM.update_volume",
        json!({"job_id": job, "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": vol, "generation": generation}, "vol_attr": {"generation": 999}}),
    );
    let st = if r.get("error").is_none() {
        wait_raw_job(addr, &job)["status"].clone()
    } else {
        r["error"]["code"].clone()
    };
    let job = fresh_uuid();
    let r2 = raw_call(
        addr,
        "SDM.update_volume",
        json!({"job_id": job, "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": vol, "generation": 999}, "vol_attr": {"description": "after 999"}}),
    );
    let st2 = if r2.get("error").is_none() {
        wait_raw_job(addr, &job)["status"].clone()
    } else {
        r2["error"]["code"].clone()
    };
    let g = raw_call(
        addr,
        "Volume.getInfo",
        json!({"sd_id": sd1, "img_id": img, "vol_id": vol}),
    )["result"]["generation"]
        .clone();
    rows.push(format!(
        "| set generation 999 ({st}), then an update at 999 ({st2}) | generation now {g} |"
    ));
    if g != json!(0) {
        bad.push(format!(
            "generation after an update at 999 is {g}, expected the wrap to 0"
        ));
    }

    // A domain description with a line separator: dom_md/metadata is read by VDSM with
    // Python's splitlines().
    let r = raw_call(
        addr,
        "StorageDomain.create",
        json!({"sd_id": fresh_uuid(), "path": bed.targets.domain_root, "description": "x\u{2028}CLASS=Iso"}),
    );
    let got = match r.get("error") {
        Some(e) => format!("error {}", e["code"]),
        None => {
            bad.push("StorageDomain.create accepted a description with U+2028, which splits the dom_md/metadata line for Python's splitlines() (VDSM) and breaks the seal there".into());
            "created".into()
        }
    };
    rows.push(format!(
        "| StorageDomain.create description with U+2028 | {got} |"
    ));

    bed.alive("extreme values");
    eprintln!("\n| request | outcome |\n|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    let diff = fs_diff(&outside_before, &fs_state(&bed.sentinel, &[]));
    assert!(
        diff.is_empty(),
        "AGENT BUG: files outside changed: {diff:#?}"
    );
    assert!(bad.is_empty(), "AGENT BUG: {bad:#?}");
}

/// Jobs that wait for a lock (valid requests: updates of volumes whose image a slow copy
/// holds) must not starve the agent's other requests: each waiting job holds a blocking
/// thread, and the runtime has 512 of them.
#[test]
fn jobs_waiting_for_a_lock_do_not_starve_the_control_plane() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd1 = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let n = 600;
    let (simg, svol, img, dvol) = (fresh_uuid(), fresh_uuid(), fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd1, &simg, &svol, 16);
    write_pattern(
        &dirs[0].join("images").join(&simg).join(&svol),
        0,
        16 << 20,
        3,
    );
    create_volume(addr, &sd1, &img, &dvol, 16);
    let vols: Vec<String> = (0..n).map(|_| fresh_uuid()).collect();
    for v in &vols {
        create_volume(addr, &sd1, &img, v, 1);
    }
    // The copy holds the image exclusively for about 8 s.
    let copy = fresh_uuid();
    let r = raw_call(
        addr,
        "SDM.copy_data",
        json!({"job_id": copy, "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": simg, "vol_id": svol},
               "destination": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": dvol, "generation": 0},
               "bandwidth_limit": 2 << 20}),
    );
    assert_eq!(r["result"], json!(true), "{r}");
    std::thread::sleep(Duration::from_millis(500));
    let before = raw_call(addr, "Host.getJobs", json!({"job_ids": [copy]}));
    eprintln!("copy before the updates: {}", before["result"][&copy]);
    let t = Instant::now();
    for v in &vols {
        let r = raw_call(
            addr,
            "SDM.update_volume",
            json!({"job_id": fresh_uuid(), "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": v, "generation": 0},
                   "vol_attr": {"description": "waits for the image lock"}}),
        );
        assert_eq!(r["result"], json!(true), "{r}");
    }
    let submitted = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let threads = proc_stats(bed.pid()).threads;
    let mut answers = Vec::new();
    for method in [
        "Host.getCapabilities",
        "Host.getStats",
        "StorageDomain.list",
        "Host.getJobs",
    ] {
        let t = Instant::now();
        let req = request_text(method, Some("{}"), 1);
        let (status, body, _) = raw_http(
            addr,
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{req}",
                req.len(),
            )
            .as_bytes(),
            Duration::from_secs(2),
        );
        let ok = status == 200 && body.contains("result");
        if !ok {
            eprintln!("{method}: HTTP {status} {}", short(&body));
        }
        answers.push((method, ok, t.elapsed()));
    }
    let r = raw_call(addr, "Job.abort", json!({"job_id": copy}));
    // Let the waiting jobs drain before the agent is stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let j = raw_call(addr, "Host.getStats", json!({}));
        if j["result"]["jobs_running"] == json!(0) && j["result"]["jobs_pending"] == json!(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "\n{n} update_volume jobs waiting for one image lock (submitted in {:.1} s), agent threads {threads}:",
        submitted.as_secs_f64()
    );
    for (m, ok, d) in &answers {
        eprintln!(
            "  {m}: {} after {:.0} ms",
            if *ok { "answered" } else { "NOT answered" },
            d.as_secs_f64() * 1e3
        );
    }
    eprintln!("abort of the copy: {r}");
    let starved: Vec<&str> = answers
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(m, _, _)| *m)
        .collect();
    assert!(
        starved.is_empty(),
        "AGENT BUG: with {n} jobs waiting for a lock, {starved:?} got no answer within 2 s: jobs wait for \
         locks on tokio blocking threads (agent/src/ops/mod.rs lock_for_job, jobs.rs spawn_blocking), \
         and once the 512 are taken every verb that runs on one (rpc.rs `blocking`) queues behind them"
    );
}
