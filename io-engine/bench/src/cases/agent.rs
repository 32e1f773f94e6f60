//! The tmpfs copy through a real agent: from the `SDM.copy_data` call to the job's end
//! (polled with `Host.getJobs`), the agent's CPU time counted with the client's.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::agent::{call, uuid, Agent};
use crate::bench::Bench;
use crate::tools::{s, sh, Tool};

/// Starts an agent whose domains live in tmpfs, with a RAW source volume holding `src` (a
/// hard link: no second copy in memory) and an empty RAW destination; returns it with the tool
/// that copies one into the other. None (and why, on stderr) when the agent binary is missing.
pub fn tmpfs_tool(b: &Bench, src: &Path, n: u64) -> Result<Option<(Agent, Tool)>> {
    let agent = match Agent::start(&b.shm.join("agent")) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skipping the agent row: {e:#}");
            return Ok(None);
        }
    };
    let domains = call(&agent.url, "StorageDomain.list", json!({}))?;
    let doms = domains.as_array().context("domain list")?;
    anyhow::ensure!(doms.len() >= 2, "the agent has {} domains", doms.len());
    let mut vols = Vec::new();
    for d in &doms[..2] {
        let (sd, img, vol) = (d["sd_id"].clone(), uuid(), uuid());
        call(
            &agent.url,
            "Volume.create",
            json!({"sd_id": sd, "img_id": img, "vol_id": vol, "capacity": n.to_string(),
                   "format": "RAW", "preallocate": "SPARSE"}),
        )?;
        let dir = d["path"].as_str().context("domain path")?;
        let path = Path::new(dir).join("images").join(&img).join(&vol);
        vols.push((
            json!({"endpoint_type": "div", "sd_id": sd, "img_id": img, "vol_id": vol}),
            path,
        ));
    }
    std::fs::remove_file(&vols[0].1)?;
    std::fs::hard_link(src, &vols[0].1).context("link the source into the agent's domain")?;
    let params = json!({"source": vols[0].0, "destination": vols[1].0}).to_string();
    let dst = s(&vols[1].1);
    let mut t = Tool::new(
        "sdm agent: SDM.copy_data call to job done",
        vec![
            b.exe.clone(),
            "__agent_copy".into(),
            agent.url.clone(),
            params,
        ],
        None,
        false,
    );
    t.setup = Some(sh(&format!("truncate -s 0 {dst} && truncate -s {n} {dst}")));
    t.verify = Some(vec!["cmp".into(), s(src), dst]);
    t.extra_cpu_pid = Some(agent.pid);
    Ok(Some((agent, t)))
}
