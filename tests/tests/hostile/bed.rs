//! The test bed: an agent whose state directory and a sentinel directory share one temporary
//! root, the witnesses of what it touched, and volume helpers over raw JSON-RPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sdm_tests::hostile::*;
use sdm_tests::*;
use serde_json::{json, Value};

/// Ceiling for the agent's resident memory during the hostile suites (issue 8: 128 MiB).
pub(crate) const RSS_LIMIT: u64 = 128 << 20;

/// A test bed: an agent whose state directory and a sentinel directory share one temporary
/// root, so that one file-system state covers everything the agent could reach by mistake.
pub(crate) struct Bed {
    pub(crate) root: PathBuf,
    pub(crate) agent: AgentProc,
    pub(crate) sentinel: PathBuf,
    pub(crate) targets: Targets,
    pub(crate) api: Api,
    pub(crate) known: BTreeMap<i64, String>,
    _tmp: tempfile::TempDir,
}

impl Bed {
    pub(crate) fn start(config: Option<String>) -> Bed {
        let tmp = tempfile::Builder::new()
            .prefix("sdm-hostile-")
            .tempdir()
            .unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let sentinel = root.join("sentinel");
        make_sentinel(&sentinel);
        let agent = AgentProc::start(AgentOptions {
            state_dir: Some(root.join("state")),
            config,
            ..Default::default()
        });
        let domain_root = root.join("state").join("domains");
        std::fs::create_dir_all(&domain_root).unwrap();
        // A link inside the domain root that leads out of it.
        std::os::unix::fs::symlink(&sentinel, domain_root.join("evil-link")).unwrap();
        let api = Api::load();
        let known = api.error_codes();
        Bed {
            targets: Targets {
                sentinel: sentinel.clone(),
                domain_root,
            },
            root,
            agent,
            sentinel,
            api,
            known,
            _tmp: tmp,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.agent.addr
    }

    pub(crate) fn pid(&self) -> u32 {
        self.agent.pid()
    }

    /// The directories of the attached domains.
    pub(crate) fn domain_dirs(&self) -> Vec<PathBuf> {
        let r = raw_call(self.addr(), "StorageDomain.list", json!({}));
        r["result"]
            .as_array()
            .expect("domain list")
            .iter()
            .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
            .collect()
    }

    /// Panics with the agent log if the agent does not answer Host.getCapabilities.
    pub(crate) fn alive(&self, after: &str) {
        let r =
            std::panic::catch_unwind(|| raw_call(self.addr(), "Host.getCapabilities", json!({})));
        match r {
            Ok(v) if v.get("result").is_some() => {}
            other => panic!(
                "AGENT BUG: the agent stopped answering after {after}: {other:?}; exited: {}",
                !Path::new(&format!("/proc/{}", self.pid())).exists()
            ),
        }
    }

    /// Files the agent may hold open for writing: its log and the attached domains.
    pub(crate) fn allowed_writes(&self) -> Vec<PathBuf> {
        let mut a = self.domain_dirs();
        a.push(self.agent.state_dir.join("agent.log"));
        a
    }
}

/// The sentinel: files a traversal would reach, a fake domain, a leftover directory.
pub(crate) fn make_sentinel(dir: &Path) {
    let u = fresh_uuid();
    std::fs::create_dir_all(dir.join(&u).join("dom_md")).unwrap();
    std::fs::create_dir_all(dir.join(&u).join("images").join(&u)).unwrap();
    std::fs::write(dir.join(&u).join("dom_md/metadata"), "CLASS=Data\nEOF\n").unwrap();
    std::fs::write(
        dir.join(&u).join("images").join(&u).join(&u),
        vec![7u8; 4096],
    )
    .unwrap();
    std::fs::write(
        dir.join(&u)
            .join("images")
            .join(&u)
            .join(format!("{u}.meta")),
        "LEGALITY=LEGAL\nEOF\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join(format!("_remove_me_{u}"))).unwrap();
    std::fs::write(
        dir.join(format!("_remove_me_{u}")).join(&u),
        vec![1u8; 4096],
    )
    .unwrap();
    std::fs::File::create(dir.join("victim")).unwrap();
    write_pattern(&dir.join("victim"), 0, 64 * 1024, 42);
    std::fs::write(dir.join("readonly"), "do not touch\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("readonly"), std::fs::Permissions::from_mode(0o444)).unwrap();
}

/// Events of `w` that are not the agent's log, its state file, or under `except`.
pub(crate) fn foreign_events(w: &mut Watch, except: &[PathBuf]) -> Vec<String> {
    w.events()
        .into_iter()
        .filter(|(p, _)| !p.ends_with("agent.log") && !except.iter().any(|e| p.starts_with(e)))
        .map(|(p, ev)| format!("{ev} {}", p.display()))
        .collect()
}

pub(crate) fn create_volume(addr: SocketAddr, sd: &str, img: &str, vol: &str, mib: u64) {
    let r = raw_call(
        addr,
        "Volume.create",
        json!({"sd_id": sd, "img_id": img, "vol_id": vol, "capacity": mib << 20, "format": "RAW", "preallocate": "SPARSE"}),
    );
    // The id of the job recorded as done (VDSM's task id).
    assert!(r["result"].is_string(), "create: {r}");
}

pub(crate) fn wait_raw_job(addr: SocketAddr, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = raw_call(addr, "Host.getJobs", json!({"job_ids": [job]}));
        if let Some(j) = r["result"].get(job) {
            let st = j["status"].as_str().unwrap_or("");
            if st != "pending" && st != "running" {
                return j.clone();
            }
        }
        assert!(Instant::now() < deadline, "job {job} did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request's outcome: its error code, or the final state and error code of the job it
/// started.
pub(crate) fn outcome_of(addr: SocketAddr, method: &str, params: Value) -> String {
    let r = raw_call(addr, method, params.clone());
    if let Some(e) = r.get("error") {
        return format!("error {}", e["code"]);
    }
    let job = match method {
        "Image.move" | "Image.delete" | "StorageDomain.fix" => {
            r["result"]["uuid"].as_str().map(str::to_string)
        }
        _ => params
            .get("job_id")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    match job {
        Some(j) => {
            let info = wait_raw_job(addr, &j);
            format!(
                "job {} {}",
                info["status"].as_str().unwrap_or("?"),
                info["error"]["code"]
            )
        }
        None => format!("result {}", short(&r["result"].to_string())),
    }
}
