//! Drift test: every VDSM verb sdm serves, called on a real agent the way VDSM's clients call it
//! (VDSM's parameter names and encodings, over HTTP and over STOMP), must be accepted and must
//! answer the shape `tests/fixtures/vdsm-shapes.json` records for VDSM (facts as data, written
//! from vdsm-api.yml, Bridge.py and VDSM's code). A renamed parameter, a dropped alias, a
//! result that changes type or loses a field VDSM always sends fails here, naming the verb,
//! the transport and the path inside the result. Verbs sdm does not serve must stay unknown
//! (-32601), so that serving one forces the fixture (and this test) to follow.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sdm_stomp::{Client, ClientOptions};
use sdm_tests::*;
use serde_json::{json, Value};
use tokio::net::TcpStream;

const BLANK: &str = "00000000-0000-0000-0000-000000000000";
const POOL: &str = "b7a1c3e2-5f60-4d1e-9a8b-0c1d2e3f4a5b";

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/vdsm-shapes.json"
    ))
    .expect("fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// One way to reach the agent.
enum Wire {
    Http(std::net::SocketAddr),
    Stomp(Box<Client<TcpStream>>),
}

impl Wire {
    fn name(&self) -> &'static str {
        match self {
            Wire::Http(_) => "HTTP",
            Wire::Stomp(_) => "STOMP",
        }
    }

    /// The whole JSON-RPC response to `method(params)`.
    async fn call(&mut self, method: &str, params: &Value) -> Value {
        let id = uuid().to_string();
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        match self {
            Wire::Http(addr) => {
                let addr = *addr;
                let body = req.to_string();
                tokio::task::spawn_blocking(move || raw_post(addr, body.as_bytes()))
                    .await
                    .map(|(_, text)| serde_json::from_str(&text).expect("JSON answer"))
                    .unwrap()
            }
            Wire::Stomp(c) => {
                // As vdsm-client sends it: a one-element batch.
                let body = json!([req]).to_string();
                c.send_request("shapes.replies", body.as_bytes())
                    .await
                    .unwrap();
                loop {
                    let m = tokio::time::timeout(Duration::from_secs(60), c.next_message())
                        .await
                        .expect("a reply in time")
                        .unwrap();
                    let v: Value = serde_json::from_slice(m.body()).unwrap();
                    if v["id"] == id.as_str() {
                        return v;
                    }
                }
            }
        }
    }
}

struct Check {
    fx: Value,
    checked: BTreeSet<String>,
}

fn primitive(t: &str) -> bool {
    [
        "UUID",
        "string",
        "boolean",
        "int",
        "uint",
        "ulong",
        "float",
        "decimal-string",
        "true",
        "any",
    ]
    .contains(&t)
}

impl Check {
    /// `params` must use VDSM's names only, and name every parameter VDSM requires.
    fn params(&self, verb: &str, params: &Value) {
        let declared = self.fx["verbs"][verb]["params"].as_array().unwrap();
        let names: BTreeSet<&str> = declared
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let given = params.as_object().unwrap();
        for k in given.keys() {
            assert!(
                names.contains(k.as_str()),
                "{verb}: the test sends {k}, which is not VDSM's"
            );
        }
        for p in declared.iter().filter(|p| p["required"] == true) {
            let n = p["name"].as_str().unwrap();
            assert!(
                given.contains_key(n),
                "{verb}: the test omits {n}, which VDSM requires"
            );
        }
    }

    /// `v` has the shape of `ty`.
    fn shape(&self, ty: &Value, v: &Value, at: &str) -> Result<(), String> {
        let bad = |what: &str| Err(format!("{at}: expected {what}, got {v}"));
        if let Some(inner) = ty.get("list") {
            let Some(items) = v.as_array() else {
                return bad("a list");
            };
            for (i, x) in items.iter().enumerate() {
                self.shape(inner, x, &format!("{at}[{i}]"))?;
            }
            return Ok(());
        }
        let t = ty.as_str().expect("type name");
        match t {
            "UUID" => match v.as_str() {
                Some(s) if sdm_proto::is_canonical_uuid(s) => Ok(()),
                _ => bad("a lowercase UUID"),
            },
            "string" if v.is_string() => Ok(()),
            "boolean" if v.is_boolean() => Ok(()),
            "int" if v.is_i64() || v.is_u64() => Ok(()),
            "uint" | "ulong" if v.is_u64() => Ok(()),
            "float" if v.is_number() => Ok(()),
            "decimal-string"
                if v.as_str()
                    .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) =>
            {
                Ok(())
            }
            "true" if v == &json!(true) => Ok(()),
            "any" => Ok(()),
            t if primitive(t) => bad(t),
            name => self.named(name, v, at),
        }
    }

    fn named(&self, name: &str, v: &Value, at: &str) -> Result<(), String> {
        let d = &self.fx["types"][name];
        assert!(!d.is_null(), "fixture has no type {name}");
        match d["kind"].as_str().unwrap() {
            "opaque" if v.is_object() => Ok(()),
            "enum" => {
                let allowed = d.get("wire_values").unwrap_or(&d["values"]);
                if allowed.as_array().unwrap().contains(v) {
                    Ok(())
                } else {
                    Err(format!("{at}: {v} is not one of {allowed} ({name})"))
                }
            }
            "map" => {
                let Some(m) = v.as_object() else {
                    return Err(format!("{at}: expected a map ({name}), got {v}"));
                };
                for (k, x) in m {
                    self.shape(&d["key"], &json!(k), &format!("{at} key {k}"))?;
                    self.shape(&d["value"], x, &format!("{at}.{k}"))?;
                }
                Ok(())
            }
            "object" => {
                let Some(o) = v.as_object() else {
                    return Err(format!("{at}: expected an object ({name}), got {v}"));
                };
                for f in d["fields"].as_array().unwrap() {
                    let field = f["name"].as_str().unwrap();
                    if f["sent"] == false {
                        continue;
                    }
                    let here = format!("{at}.{field}");
                    match o.get(field) {
                        None if f["required"] == true => {
                            return Err(format!("{here}: missing ({name} always has it)"))
                        }
                        None | Some(Value::Null) if f["required"] != true => {}
                        None => unreachable!(),
                        Some(x) => {
                            let ty = match f.get("wire").and_then(Value::as_str) {
                                Some(w) if primitive(w) => json!(w),
                                _ => f["type"].clone(),
                            };
                            self.shape(&ty, x, &here)?;
                        }
                    }
                }
                Ok(())
            }
            other => Err(format!("{at}: cannot check kind {other} ({name})")),
        }
    }

    /// Calls `verb` with `params` (VDSM's names) over `wire` and checks the result's shape.
    async fn verb(&mut self, wire: &mut Wire, verb: &str, params: Value) -> Value {
        self.params(verb, &params);
        let r = wire.call(verb, &params).await;
        let Some(result) = r.get("result") else {
            panic!("{verb} over {}: refused {params}: {r}", wire.name());
        };
        let ty = &self.fx["verbs"][verb]["result"]["type"];
        if let Err(e) = self.shape(ty, result, verb) {
            panic!("{verb} over {} drifted from VDSM's shape: {e}", wire.name());
        }
        self.checked.insert(verb.to_string());
        result.clone()
    }
}

async fn wait_jobs_done(wire: &mut Wire, jobs: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = wire.call("Host.getJobs", &json!({"job_ids": jobs})).await;
        let m = r["result"].as_object().unwrap().clone();
        if jobs.iter().all(|j| m[*j]["status"] == "done") {
            return;
        }
        for j in jobs {
            let s = &m[*j]["status"];
            assert!(s != "failed" && s != "aborted", "job {j}: {}", m[*j]);
        }
        assert!(Instant::now() < deadline, "jobs not done: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exercise(check: &mut Check, wire: &mut Wire, sd1: &str, sd2: &str, root: &str) {
    let (img, src, dst) = (uuid().to_string(), uuid().to_string(), uuid().to_string());
    let size = (1u64 << 20).to_string();
    for vol in [&src, &dst] {
        let task = check
            .verb(
                wire,
                "Volume.create",
                json!({"volumeID": vol, "storagepoolID": POOL,
                "storagedomainID": sd1, "imageID": img, "size": size, "volFormat": 5,
                "preallocate": 2, "diskType": "DATA", "desc": "shape", "srcImgUUID": BLANK,
                "srcVolUUID": BLANK, "initialSize": null, "addBitmaps": false, "legal": true,
                "sequence": 1}),
            )
            .await;
        let task = task.as_str().unwrap().to_string();
        check
            .verb(wire, "Task.getStatus", json!({"taskID": task}))
            .await;
        let info = check
            .verb(wire, "Task.getInfo", json!({"taskID": task}))
            .await;
        assert_eq!(info["verb"], "createVolume");
        check
            .verb(wire, "Task.clear", json!({"taskID": task}))
            .await;
    }
    check
        .verb(
            wire,
            "Volume.getInfo",
            json!({"volumeID": src, "storagepoolID": POOL,
            "storagedomainID": sd1, "imageID": img}),
        )
        .await;
    let vols = check
        .verb(
            wire,
            "Image.getVolumes",
            json!({"imageID": img, "storagepoolID": POOL,
            "storagedomainID": sd1}),
        )
        .await;
    assert_eq!(vols.as_array().unwrap().len(), 2);
    check
        .verb(
            wire,
            "StorageDomain.getImages",
            json!({"storagedomainID": sd1}),
        )
        .await;
    check
        .verb(
            wire,
            "StorageDomain.getInfo",
            json!({"storagedomainID": sd1}),
        )
        .await;

    let copy = uuid().to_string();
    check
        .verb(
            wire,
            "SDM.copy_data",
            json!({"job_id": copy,
            "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": src},
            "destination": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": dst,
                "generation": 0, "prepared": false},
            "copy_bitmaps": false}),
        )
        .await;
    wait_jobs_done(wire, &[&copy]).await;
    let update = uuid().to_string();
    check
        .verb(
            wire,
            "SDM.update_volume",
            json!({"job_id": update,
            "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": dst, "generation": 1},
            "vol_attr": {"description": "updated"}}),
        )
        .await;
    wait_jobs_done(wire, &[&update]).await;
    let jobs = check
        .verb(
            wire,
            "Host.getJobs",
            json!({"job_type": "storage", "job_ids": [copy, update]}),
        )
        .await;
    assert_eq!(jobs.as_object().unwrap().len(), 2);

    let moved = check
        .verb(
            wire,
            "Image.move",
            json!({"imageID": img, "storagepoolID": POOL,
            "storagedomainID": sd1, "dstSdUUID": sd2, "operation": 1, "postZero": "false",
            "force": "false", "discard": false}),
        )
        .await;
    let moved = moved.as_str().unwrap().to_string();
    wait_jobs_done(wire, &[&moved]).await;
    check
        .verb(wire, "Task.stop", json!({"taskID": moved}))
        .await;
    let deleted = check
        .verb(
            wire,
            "Image.delete",
            json!({"imageID": img, "storagepoolID": POOL,
            "storagedomainID": sd2, "postZero": false, "force": false, "discard": false}),
        )
        .await;
    wait_jobs_done(wire, &[deleted.as_str().unwrap()]).await;

    // The verbs that share VDSM's names: VDSM's form where sdm maps it.
    let new_sd = uuid().to_string();
    let dir = format!("{root}/{}", wire.name());
    std::fs::create_dir_all(&dir).unwrap();
    check
        .verb(
            wire,
            "StorageDomain.create",
            json!({"storagedomainID": new_sd, "domainType": 4,
            "typeArgs": dir, "name": "shapes", "domainClass": 1, "version": 5, "blockSize": 512,
            "maxHosts": 250}),
        )
        .await;
    check
        .verb(
            wire,
            "StorageDomain.detach",
            json!({"storagedomainID": new_sd,
            "storagepoolID": POOL, "masterSdUUID": BLANK, "masterVersion": 0, "force": false}),
        )
        .await;
    check.verb(wire, "Host.getCapabilities", json!({})).await;
    check.verb(wire, "Host.getStats", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vdsm_verbs_keep_vdsm_shapes_over_http_and_stomp() {
    let roots = tempfile::tempdir().unwrap();
    let root = roots.path().to_string_lossy().into_owned();
    let agent = AgentProc::start(AgentOptions {
        config: Some(format!(
            "create_default_domains = true\ndomain_roots = [{root:?}]\n"
        )),
        ..Default::default()
    });
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let mut check = Check {
        fx: fixture(),
        checked: BTreeSet::new(),
    };
    let tcp = TcpStream::connect(agent.addr).await.unwrap();
    let mut stomp = Client::connect(tcp, ClientOptions::default())
        .await
        .unwrap();
    stomp.subscribe("shapes.replies", "r").await.unwrap();
    for mut wire in [Wire::Http(agent.addr), Wire::Stomp(Box::new(stomp))] {
        exercise(&mut check, &mut wire, sd1.as_str(), sd2.as_str(), &root).await;
    }

    // Every verb the fixture says sdm serves was checked; the others are unknown to sdm.
    let fx = fixture();
    let mut http = Wire::Http(agent.addr);
    for (verb, v) in fx["verbs"].as_object().unwrap() {
        match v["sdm"].as_str().unwrap() {
            "served" => assert!(
                check.checked.contains(verb),
                "{verb} is served but this test does not check it"
            ),
            "not_served" => {
                let r = http.call(verb, &json!({})).await;
                assert_eq!(
                    r["error"]["code"], -32601,
                    "{verb}: sdm serves it now; update tests/fixtures/vdsm-shapes.json and this test: {r}"
                );
            }
            _ => {}
        }
    }
    for verb in [
        "StorageDomain.create",
        "StorageDomain.detach",
        "Host.getCapabilities",
    ] {
        assert!(check.checked.contains(verb), "{verb}");
    }
}
