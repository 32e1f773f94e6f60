//! VDSM's wire against a real agent, driven by stomp.py (a STOMP client nobody here wrote) the
//! way an engine drives VDSM: CONNECT, SUBSCRIBE to a reply destination and to
//! `jms.queue.events`, JSON-RPC requests with VDSM's parameter names as SEND frames, replies as
//! MESSAGE frames routed by `reply-to` (also to another connection), job events, batches,
//! errors with VDSM's codes, heart-beats over a minute of silence, and STOMP over mutual TLS.
//! `sdmctl --stomp` proves the same path from sdm's own client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sdm_tests::stomp_py::{sdm_stomp_request_queue, StompPy};
use sdm_tests::*;
use serde_json::{json, Value};

const BLANK: &str = "00000000-0000-0000-0000-000000000000";
const REPLIES: &str = "engine.replies.a";
const EVENTS: &str = "jms.queue.events";

fn id() -> String {
    uuid().to_string()
}

/// The result of a reply, or a panic with its error.
fn result(r: &Value) -> &Value {
    assert!(r.get("error").is_none(), "unexpected error: {r}");
    assert_eq!(r["jsonrpc"], "2.0", "{r}");
    &r["result"]
}

fn code(r: &Value) -> i64 {
    r["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error: {r}"))
}

/// The job event `|jobs|status|<job>` (the first one announcing a finished job).
fn event(py: &mut StompPy, job: &str) -> Value {
    let m = py.cmd(json!({"op": "wait", "name": "a", "dest": EVENTS,
        "method_prefix": format!("|jobs|status|{job}"), "timeout": 120}));
    let v: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
    assert!(v.get("id").is_none(), "events are notifications: {v}");
    assert_eq!(v["jsonrpc"], "2.0");
    v["params"].clone()
}

/// A volume created over STOMP with VDSM's names and codes; returns its path.
fn vdsm_create(py: &mut StompPy, sd: &str, dom: &str, img: &str, vol: &str, size: u64) -> PathBuf {
    let r = py.call(
        "a",
        REPLIES,
        "Volume.create",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img, "volumeID": vol,
            "size": size.to_string(), "volFormat": 5, "preallocate": 2, "diskType": "DATA",
            "desc": "created over STOMP", "srcImgUUID": BLANK, "srcVolUUID": BLANK,
            "initialSize": null, "legal": true, "sequence": 3}),
    );
    let task = result(&r)
        .as_str()
        .expect("Volume.create answers a task UUID");
    let s = py.call("a", REPLIES, "Task.getStatus", json!({"taskID": task}));
    assert_eq!(result(&s)["taskState"], "finished", "{s}");
    assert_eq!(result(&s)["taskResult"], "success", "{s}");
    PathBuf::from(dom).join("images").join(img).join(vol)
}

#[test]
fn engine_session_over_stomp_py() {
    let Some(mut py) = StompPy::start("engine_session_over_stomp_py") else {
        return;
    };
    let agent = AgentProc::start(AgentOptions::default());
    let port = agent.addr.port();
    let hello = py.connect("a", port, (0, 10_000));
    assert_eq!(hello["connected"]["version"], "1.2", "{hello}");
    assert_eq!(hello["connected"]["heart-beat"], "10000,0", "{hello}");
    py.subscribe("a", REPLIES, "replies");
    py.subscribe("a", EVENTS, "events");

    // A one-element batch (as vdsm-client sends) is answered with a bare object.
    let jobs = py.call("a", REPLIES, "Host.getJobs", json!({}));
    assert!(result(&jobs).is_object(), "{jobs}");
    let list = py.call("a", REPLIES, "StorageDomain.list", json!({}));
    let mut doms: Vec<(String, String, String)> = result(&list)
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["description"].as_str().unwrap().to_string(),
                d["sd_id"].as_str().unwrap().to_string(),
                d["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    doms.sort();
    let ((_, sd1, dom1), (_, sd2, _)) = (doms[0].clone(), doms[1].clone());

    // SDM.copy_data, followed by its event.
    let (img, src, dst) = (id(), id(), id());
    let size = 4u64 << 20;
    let src_path = vdsm_create(&mut py, &sd1, &dom1, &img, &src, size);
    let dst_path = vdsm_create(&mut py, &sd1, &dom1, &img, &dst, size);
    write_pattern(&src_path, 0, size as usize, 16);
    let info = py.call(
        "a",
        REPLIES,
        "Volume.getInfo",
        json!({"storagepoolID": BLANK, "storagedomainID": sd1, "imageID": img, "volumeID": src}),
    );
    let info = result(&info);
    assert_eq!(
        (
            &info["sequence"],
            &info["ctime"].is_string(),
            &info["mtime"],
            &info["pool"]
        ),
        (&json!(3), &true, &json!("0"), &json!("")),
        "{info}"
    );
    let job = id();
    let r = py.call(
        "a",
        REPLIES,
        "SDM.copy_data",
        json!({"job_id": job,
        "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": src},
        "destination": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": dst,
            "generation": 0}}),
    );
    assert_eq!(result(&r), &json!(true));
    let ev = event(&mut py, &job);
    assert_eq!(
        (
            &ev["id"],
            &ev["status"],
            &ev["description"],
            &ev["job_type"]
        ),
        (
            &json!(job),
            &json!("done"),
            &json!("copy_data"),
            &json!("storage")
        ),
        "{ev}"
    );
    assert_eq!(ev["progress"], 100.0, "{ev}");
    assert!(ev.get("error").is_none(), "{ev}");
    assert!(
        ev["notify_time"].as_u64().unwrap() > i32::MAX as u64,
        "{ev}"
    );
    assert_eq!(sha256sum(&src_path), sha256sum(&dst_path));
    // The same job id again: JobExists (sdm's code; VDSM says 100).
    let again = py.call(
        "a",
        REPLIES,
        "SDM.copy_data",
        json!({"job_id": job,
        "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": src},
        "destination": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": dst}}),
    );
    assert_eq!(code(&again), 69, "{again}");

    // Image.move: the bare task UUID, an event, and VDSM's Task.* verbs.
    let r = py.call(
        "a",
        REPLIES,
        "Image.move",
        json!({"storagepoolID": BLANK,
        "storagedomainID": sd1, "imageID": img, "dstSdUUID": sd2, "operation": 1,
        "postZero": "false", "force": "false"}),
    );
    let moved = result(&r).as_str().expect("a bare UUID").to_string();
    assert_eq!(event(&mut py, &moved)["status"], "done");
    let s = py.call("a", REPLIES, "Task.getStatus", json!({"taskID": moved}));
    assert_eq!(
        result(&s),
        &json!({"taskID": moved, "taskState": "finished",
        "taskResult": "success", "code": 0, "message": "1 jobs completed successfully"})
    );
    let all = py.call("a", REPLIES, "Host.getAllTasksStatuses", json!({}));
    assert_eq!(result(&all)[moved.as_str()], *result(&s), "{all}");
    let i = py.call("a", REPLIES, "Task.getInfo", json!({"taskID": moved}));
    assert_eq!(result(&i), &json!({"id": moved, "verb": "moveImage"}));
    let c = py.call("a", REPLIES, "Task.clear", json!({"taskID": moved}));
    assert_eq!(result(&c), &json!(true));
    let gone = py.call("a", REPLIES, "Task.getStatus", json!({"taskID": moved}));
    assert_eq!(code(&gone), 401, "{gone}");
    let all = py.call("a", REPLIES, "Host.getAllTasksStatuses", json!({}));
    assert!(result(&all).get(moved.as_str()).is_none(), "{all}");
    let vols = py.call(
        "a",
        REPLIES,
        "Image.getVolumes",
        json!({"storagepoolID": BLANK, "storagedomainID": sd2, "imageID": img}),
    );
    assert_eq!(result(&vols).as_array().unwrap().len(), 2, "{vols}");
    // The copy on the destination kept its place in the chain (SEQ), and is LEGAL.
    let moved_info = py.call(
        "a",
        REPLIES,
        "Volume.getInfo",
        json!({"storagedomainID": sd2, "imageID": img, "volumeID": src}),
    );
    assert_eq!(result(&moved_info)["sequence"], 3, "{moved_info}");
    assert_eq!(result(&moved_info)["legality"], "LEGAL", "{moved_info}");

    // Image.delete, then the image has no volumes (VDSM answers [] for an unknown image).
    let r = py.call(
        "a",
        REPLIES,
        "Image.delete",
        json!({"storagepoolID": BLANK,
        "storagedomainID": sd2, "imageID": img, "postZero": "true", "force": "false",
        "discard": false}),
    );
    let deleted = result(&r).as_str().expect("a bare UUID").to_string();
    assert_eq!(event(&mut py, &deleted)["description"], "delete_image");
    let vols = py.call(
        "a",
        REPLIES,
        "Image.getVolumes",
        json!({"storagepoolID": BLANK, "storagedomainID": sd2, "imageID": img}),
    );
    assert_eq!(result(&vols), &json!([]));

    // A batch: every answer is its own MESSAGE, a bare object routed by its id.
    let (b1, b2) = (id(), id());
    let batch = json!([
        {"jsonrpc": "2.0", "id": b1, "method": "Host.getJobs", "params": {"job_ids": [job]}},
        {"jsonrpc": "2.0", "id": b2, "method": "StorageDomain.getInfo",
            "params": {"storagedomainID": sd1}},
        {"jsonrpc": "2.0", "method": "Host.getJobs", "params": {}}
    ]);
    py.send(
        "a",
        sdm_stomp_request_queue(),
        &batch.to_string(),
        json!({"reply-to": REPLIES}),
    );
    let (_, r1) = py.reply("a", REPLIES, &b1);
    assert_eq!(result(&r1)[&job]["status"], "done", "{r1}");
    let (h2, r2) = py.reply("a", REPLIES, &b2);
    assert_eq!(result(&r2)["uuid"], sd1.as_str(), "{r2}");
    assert_eq!(result(&r2)["type"], "LOCALFS", "{r2}");
    assert_eq!(h2["content-type"], "application/json");
    assert_eq!(h2["subscription"], "replies");
    assert_eq!(h2["destination"], REPLIES);

    // Errors with VDSM's codes, and sdm's where its contract is explicit.
    let r = py.call("a", REPLIES, "Nope.nothing", json!({}));
    assert_eq!(code(&r), -32601, "{r}");
    let r = py.call(
        "a",
        REPLIES,
        "Volume.getInfo",
        json!({"storagedomainID": "NOT-A-UUID",
        "imageID": img, "volumeID": src}),
    );
    assert_eq!(code(&r), 1000, "{r}");
    let r = py.call("a", REPLIES, "SDM.copy_data", json!({"job_id": id()}));
    assert_eq!(code(&r), 1000, "missing parameters: {r}");
    let r = py.call(
        "a",
        REPLIES,
        "Image.move",
        json!({"storagedomainID": sd1, "imageID": img,
        "dstSdUUID": sd2, "operation": 2, "postZero": false, "force": false}),
    );
    assert_eq!(code(&r), 2009, "{r}");
    let r = py.call(
        "a",
        REPLIES,
        "Volume.getInfo",
        json!({"storagedomainID": sd1,
        "imageID": id(), "volumeID": id()}),
    );
    assert_eq!(code(&r), 201, "{r}");
    // Unparsable: the error has no id and goes to the default response queue.
    py.subscribe("a", "jms.topic.vdsm_responses", "default");
    py.send(
        "a",
        sdm_stomp_request_queue(),
        "{not json",
        json!({"reply-to": REPLIES}),
    );
    let m = py.cmd(
        json!({"op": "wait", "name": "a", "dest": "jms.topic.vdsm_responses",
        "timeout": 30}),
    );
    let v: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
    assert_eq!((code(&v), &v["id"]), (-32700, &Value::Null), "{v}");

    // A second connection receives the replies to requests it did not send, by reply-to.
    py.connect("b", port, (0, 0));
    py.subscribe("b", "engine.replies.shared", "shared");
    let shared_id = id();
    let body = json!({"jsonrpc": "2.0", "id": shared_id, "method": "Host.getCapabilities"});
    py.send(
        "a",
        sdm_stomp_request_queue(),
        &body.to_string(),
        json!({"reply-to": "engine.replies.shared"}),
    );
    let (h, r) = py.reply("b", "engine.replies.shared", &shared_id);
    assert_eq!(h["subscription"], "shared");
    assert!(result(&r)["host_id"].is_u64(), "{r}");
    // Other destinations are forwarded to their subscribers (and their dot-prefixes)...
    py.subscribe("b", "app.topic", "app");
    py.send("a", "app.topic.x", "hello", json!({"reply-to": "nobody"}));
    let m = py.cmd(json!({"op": "wait", "name": "b", "dest": "app.topic.x", "timeout": 30}));
    assert_eq!(
        (m["body"].as_str(), m["headers"]["subscription"].as_str()),
        (Some("hello"), Some("app"))
    );
    // ... and answered with ERROR when nobody listens.
    py.send("a", "nobody.listens", "x", json!({}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = py.stats("a");
        if s["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "Subscription not available")
        {
            assert_eq!(
                s["connected"], true,
                "an ERROR for SEND keeps the session: {s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no ERROR: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let nothing = py.cmd(json!({"op": "drain", "name": "a"}));
    assert!(
        !nothing.to_string().contains(&shared_id),
        "the reply went to a connection not subscribed to its reply-to: {nothing}"
    );

    py.cmd(json!({"op": "disconnect", "name": "b", "receipt": "bye-b"}));
    py.cmd(json!({"op": "disconnect", "name": "a", "receipt": "bye-a"}));
    assert!(
        py.stats("a")["receipts"].to_string().contains("bye-a"),
        "DISCONNECT is answered with its RECEIPT"
    );
}

#[test]
fn heart_beats_keep_an_idle_session_for_a_minute_and_silence_is_dropped() {
    let Some(mut py) = StompPy::start("heart_beats_keep_an_idle_session") else {
        return;
    };
    let agent = AgentProc::start(AgentOptions::default());
    // stomp.py promises a heart-beat every 2 s and wants one every 2 s.
    let hello = py.connect("a", agent.addr.port(), (2000, 2000));
    assert_eq!(hello["connected"]["heart-beat"], "2000,2000", "{hello}");
    py.subscribe("a", REPLIES, "replies");

    // A client that promises heart-beats and sends nothing is dropped after the negotiated
    // interval (with a grace of half of it).
    let mut silent = std::net::TcpStream::connect(agent.addr).unwrap();
    use std::io::{Read, Write};
    silent
        .write_all(b"CONNECT\naccept-version:1.2\nheart-beat:1000,0\n\n\0")
        .unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    let took = t.elapsed();
    assert!(
        String::from_utf8_lossy(&got).starts_with("CONNECTED\nversion:1.2\nheart-beat:0,1000\n"),
        "{got:?}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "a silent client was dropped after {took:?}"
    );

    py.cmd(json!({"op": "sleep", "secs": 60}));
    let s = py.stats("a");
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(s["heartbeat_timeouts"], 0, "{s}");
    assert!(
        s["heartbeats"].as_u64().unwrap() >= 20,
        "too few heart-beats: {s}"
    );
    let r = py.call("a", REPLIES, "Host.getJobs", json!({}));
    assert!(result(&r).is_object(), "{r}");
}

#[test]
fn stomp_over_mutual_tls() {
    let Some(mut py) = StompPy::start("stomp_over_mutual_tls") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("pki");
    let out = std::process::Command::new(bin("sdmctl"))
        .args(["certs", "dev", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert_success(&out);
    let pem = |n: &str| certs.join(n).to_string_lossy().into_owned();
    let agent = AgentProc::start(AgentOptions {
        config: Some(format!(
            "create_default_domains = true\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pem("ca.pem"),
            pem("agent.pem"),
            pem("agent-key.pem")
        )),
        ..Default::default()
    });
    let tls = json!({"ca": pem("ca.pem"), "cert": pem("client.pem"), "key": pem("client-key.pem")});
    let hello = py.cmd(
        json!({"op": "connect", "name": "a", "port": agent.addr.port(),
        "hb": [0, 0], "tls": tls}),
    );
    assert_eq!(hello["connected"]["version"], "1.2", "{hello}");
    py.subscribe("a", REPLIES, "replies");
    let r = py.call("a", REPLIES, "Host.getCapabilities", json!({}));
    assert_eq!(result(&r)["host_id"], 1, "{r}");
    // Without a client certificate the handshake fails: no session.
    let no_cert = json!({"ca": pem("ca.pem"), "cert": null, "key": null});
    let refused = py.try_cmd(
        json!({"op": "connect", "name": "b", "port": agent.addr.port(),
        "hb": [0, 0], "tls": no_cert}),
    );
    assert!(refused.get("error").is_some(), "{refused}");
    // Plain STOMP to the TLS port is not served either: closed without CONNECTED.
    let mut plain = std::net::TcpStream::connect(agent.addr).unwrap();
    use std::io::{Read, Write};
    plain
        .write_all(b"CONNECT\naccept-version:1.2\n\n\0")
        .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("CONNECTED"),
        "{got:?}"
    );
    // sdm's own client over stomps://.
    let out = std::process::Command::new(bin("sdmctl"))
        .arg("--agent")
        .arg(format!("stomps://localhost:{}", agent.addr.port()))
        .args([
            "--ca",
            &pem("ca.pem"),
            "--cert",
            &pem("client.pem"),
            "--key",
        ])
        .arg(pem("client-key.pem"))
        .args(["host", "caps"])
        .output()
        .unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("host id"));
}

#[test]
fn sdmctl_over_stomp() {
    let agent = AgentProc::start(AgentOptions::default());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("sdmctl"))
            .args(["--agent", &agent.url, "--stomp", "--json"])
            .args(args)
            .output()
            .unwrap();
        assert_success(&out);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let doms = run(&["domain", "list"]);
    let sd = doms[0]["sd_id"].as_str().unwrap().to_string();
    let img = id();
    let made = run(&["volume", "create", &sd, &img, "--size", "1M"]);
    let task = made["task_id"].as_str().unwrap().to_string();
    let vol = made["vol_id"].as_str().unwrap().to_string();
    let jobs = run(&["jobs", "list", &task]);
    assert_eq!(jobs[&task]["description"], "create_volume", "{jobs}");
    let info = run(&["volume", "info", &sd, &img, &vol]);
    assert_eq!(info["uuid"], vol.as_str());
    let dom = run(&["domain", "info", &sd]);
    assert_eq!(dom["version"], "5");
    // The calls went over STOMP: the agent counted them so.
    let (status, text) = raw_get(agent.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"sdm_rpc_calls_total{method="Volume.create",transport="stomp"} 1"#),
        "{text}"
    );
}
