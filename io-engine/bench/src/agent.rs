//! The agent as a contender: a real `sdm-agent` (the release binary next to this one) on a
//! loopback port, driven over plain JSON-RPC on HTTP, so a row can be timed from the RPC call
//! to the job's end, with the agent's own CPU time counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::RngCore;
use serde_json::{json, Value};

/// A running agent, killed on drop.
pub struct Agent {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub pid: u32,
}

impl Agent {
    /// Starts `sdm-agent` from the directory of this executable with `state` as its state
    /// directory (its two default domains are made there).
    pub fn start(state: &Path) -> Result<Agent> {
        let exe = std::env::current_exe().context("own executable")?;
        let bin: PathBuf = exe.with_file_name("sdm-agent");
        if !bin.exists() {
            bail!(
                "{} is missing: cargo build --release -p sdm-agent",
                bin.display()
            );
        }
        std::fs::create_dir_all(state).with_context(|| state.display().to_string())?;
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .env("SDM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let out = child.stdout.take().context("agent stdout")?;
        let mut addr = None;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("sdm-agent ready on ") {
                addr = Some(a.trim().to_string());
                break;
            }
        }
        let pid = child.id();
        let Some(addr) = addr else {
            let _ = child.kill();
            bail!("sdm-agent did not start");
        };
        Ok(Agent {
            child,
            url: format!("http://{addr}"),
            pid,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `method` with `params`; returns the result, or fails with the error.
pub fn call(url: &str, method: &str, params: Value) -> Result<Value> {
    let addr = url.strip_prefix("http://").unwrap_or(url);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v: Value = serde_json::from_str(&body).with_context(|| format!("response {body:?}"))?;
    if let Some(e) = v.get("error") {
        bail!("{method}: {e}");
    }
    Ok(v["result"].clone())
}

fn dechunk(body: &str) -> String {
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A random UUID (version 4), lowercase.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `__agent_copy`: `SDM.copy_data` with `params` (JSON, without `job_id`), then `Host.getJobs`
/// every 2 ms until the job is done.
pub fn copy(url: &str, params: &str) -> Result<()> {
    let mut p: Value = serde_json::from_str(params).context("params")?;
    let job = uuid();
    p["job_id"] = json!(job);
    call(url, "SDM.copy_data", p)?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let jobs = call(url, "Host.getJobs", json!({"job_ids": [job]}))?;
        match jobs[&job]["status"].as_str() {
            Some("done") => return Ok(()),
            Some("failed" | "aborted") => bail!("copy job ended: {}", jobs[&job]),
            _ if Instant::now() > deadline => bail!("copy job did not finish"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
