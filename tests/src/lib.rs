//! Test harness: real `sdm-agent` processes on free loopback ports with private state
//! directories, killed by pid when the test ends (also when it fails).

pub mod block;
pub mod chains;
pub mod cluster;
pub mod copy_log;
pub mod engines;
pub mod fencing;
pub mod hostile;
pub mod journals;
pub mod postgres;
pub mod scale;
pub mod stomp_py;
pub mod volumes;

pub use copy_log::{copy_counters, try_copy_counters};
pub use volumes::*;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{JobInfo, JobStatus, Uuid};

/// Where cargo put the workspace binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("deps dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, built by `cargo test --workspace` (the `sdm-agent` and `sdmctl`
/// packages have integration tests, which makes cargo build their binaries).
pub fn bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!(
        "SDM_{}_BIN",
        name.to_ascii_uppercase().replace('-', "_")
    )) {
        return p.into();
    }
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so that it is built",
        p.display()
    );
    p
}

/// How to start an agent.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// State directory (default: a new temporary one owned by the process handle).
    pub state_dir: Option<PathBuf>,
    /// Extra TOML appended to the generated config (None: no config file, embedded default).
    pub config: Option<String>,
    /// Host id.
    pub host_id: Option<u64>,
    /// Extra environment (FAILPOINTS, SANLOCK_RUN_DIR, ...).
    pub env: Vec<(String, String)>,
}

/// A running agent.
pub struct AgentProc {
    child: Option<Child>,
    /// Bound address.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    /// State directory.
    pub state_dir: PathBuf,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    opts: AgentOptions,
}

impl AgentProc {
    /// Starts an agent on a free port and waits for its readiness line.
    pub fn start(opts: AgentOptions) -> AgentProc {
        let (tmp, state_dir) = match &opts.state_dir {
            Some(p) => (None, p.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("sdm-test-")
                    .tempdir()
                    .expect("tempdir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let mut p = AgentProc {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            url: String::new(),
            log: state_dir.join("agent.log"),
            state_dir,
            _tmp: tmp,
            opts,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        self.spawn_on("127.0.0.1:0")
    }

    fn spawn_on(&mut self, listen: &str) {
        let mut cmd = Command::new(bin("sdm-agent"));
        cmd.arg("--listen")
            .arg(listen)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(extra) = &self.opts.config {
            let cfg = self.state_dir.join("agent.toml");
            std::fs::write(&cfg, extra).expect("write config");
            cmd.arg("--config").arg(cfg);
        }
        if let Some(h) = self.opts.host_id {
            cmd.arg("--host-id").arg(h.to_string());
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        cmd.stdout(Stdio::piped())
            .stderr(log)
            .env("SDM_LOG", "info,sdm_agent=debug");
        let mut child = cmd.spawn().expect("spawn sdm-agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("sdm-agent ready on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sdm-agent did not become ready; log:\n{}", self.log_text());
            }
        };
        // Owned from here on, so that Drop kills it if a check below panics.
        self.child = Some(child);
        if self.opts.env.iter().any(|(k, _)| k == "FAILPOINTS") {
            assert!(
                self.log_text().contains("failpoints enabled"),
                "{} was built without the `failpoints` feature: build it with `cargo test --workspace` \
                 (the sdm-tests crate turns the feature on for the workspace build)",
                bin("sdm-agent").display()
            );
        }
        self.addr = addr.parse().expect("ready address");
        self.url = format!("http://{addr}");
    }

    /// Client of this agent.
    pub fn client(&self) -> AgentClient {
        AgentClient::new(&self.url).expect("client")
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let st = c.wait().expect("wait");
        (st, t.elapsed())
    }

    /// Starts the agent again on the same state directory (after a kill).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Stops the agent with SIGTERM, as a service manager restarting it does, and starts it
    /// again on the same state directory and address (its start-up garbage collection runs).
    pub fn restart_gracefully(&mut self) {
        let addr = self.addr.to_string();
        if self.child.is_some() {
            let (status, _) = self.terminate();
            assert!(status.success(), "sdm-agent stopped with {status}");
        }
        self.spawn_on(&addr);
    }

    /// Starts the agent again on the same state directory and the same address, so that
    /// clients holding its URL reach it again (after a kill).
    pub fn restart_same_port(&mut self) {
        self.kill9();
        let addr = self.addr.to_string();
        self.spawn_on(&addr);
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sdm-agent log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        self.kill9();
    }
}

/// A fresh UUID.
pub fn uuid() -> Uuid {
    Uuid::new_v4()
}

/// The agent's first two domains (embedded default).
pub async fn default_domains(c: &AgentClient) -> (Uuid, Uuid, PathBuf, PathBuf) {
    let mut l = c.api().list_domains().await.via(c).expect("list domains");
    l.sort_by(|a, b| a.description.cmp(&b.description));
    assert!(l.len() >= 2, "expected the two embedded domains, got {l:?}");
    (
        l[0].sd_id.clone(),
        l[1].sd_id.clone(),
        l[0].path.clone().into(),
        l[1].path.clone().into(),
    )
}

/// Waits for a job to finish (polling) and returns its final info.
pub async fn wait_job(c: &AgentClient, job: &Uuid) -> JobInfo {
    poll_job(
        c,
        job,
        Duration::from_secs(120),
        Duration::from_millis(50),
        "finish",
        |info| !info.status.is_active(),
    )
    .await
}

/// Waits until a job is running.
pub async fn wait_running(c: &AgentClient, job: &Uuid) -> JobInfo {
    poll_job(
        c,
        job,
        Duration::from_secs(60),
        Duration::from_millis(20),
        "start",
        |info| {
            info.status == JobStatus::Running && info.progress.is_some() || !info.status.is_active()
        },
    )
    .await
}

/// Polls `Host.getJobs` for `job` every `every` until `ready` holds for its info, failing with
/// "job .. did not `what`" after `limit`: the loop of [`wait_job`] and [`wait_running`].
async fn poll_job(
    c: &AgentClient,
    job: &Uuid,
    limit: Duration,
    every: Duration,
    what: &str,
    ready: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    let deadline = Instant::now() + limit;
    loop {
        let m = c
            .api()
            .get_jobs(None, Some(vec![job.clone()]))
            .await
            .via(c)
            .expect("getJobs");
        if let Some(info) = m.get(job) {
            if ready(info) {
                return info.clone();
            }
        }
        assert!(Instant::now() < deadline, "job {job} did not {what}");
        tokio::time::sleep(every).await;
    }
}

/// Writes `len` pseudo-random bytes at `offset` into `path` (deterministic from `seed`).
pub fn write_pattern(path: &Path, offset: u64, len: usize, seed: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for pattern");
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
}

/// sha256sum of a file, by the real tool.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// True if `qemu-img compare` says the two images have the same content.
pub fn qemu_img_compare(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img")
        .arg("compare")
        .arg("-q")
        .arg(a)
        .arg(b)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True if `qemu-img check -q` finds the image consistent.
pub fn qemu_img_check(file: &Path) -> bool {
    Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(file)
        .status()
        .unwrap()
        .success()
}

/// Fails (showing the stderr) unless a finished process exited successfully.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An `sdmctl` command aimed at the agents at `urls` (one `--agent` each).
pub fn sdmctl_cmd(urls: &[String]) -> Command {
    let mut cmd = Command::new(bin("sdmctl"));
    for u in urls {
        cmd.arg("--agent").arg(u);
    }
    cmd
}

/// True if the test runs as root (loop devices, sanlock).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sends one raw HTTP POST with `body` and returns (status code, response body). For requests
/// no typed client would send (malformed JSON, wrong types).
pub fn raw_post(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let (status, body) = status_and_body(&resp);
    (status, dechunk(&body))
}

/// Sends one raw HTTP GET of `path` and returns (status code, response body).
pub fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let (status, body) = status_and_body(&resp);
    (status, dechunk(&body))
}

/// Status code (0 if there is none) and raw body of an HTTP/1 response read to its end.
pub fn status_and_body(resp: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn dechunk(body: &str) -> String {
    // hyper may answer with chunked encoding; good enough for small bodies.
    if !body.contains("\r\n") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Calls `method` with raw JSON `params` and returns the parsed response object.
pub fn raw_call(addr: SocketAddr, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (_, text) = raw_post(addr, body.to_string().as_bytes());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad response {text:?}: {e}"))
}

/// The error code of a raw response (panics if it succeeded).
pub fn error_code(resp: &serde_json::Value) -> i64 {
    resp.get("error")
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_i64())
        .unwrap_or_else(|| panic!("expected an error, got {resp}"))
}

/// A listing of every file under `dir` with size and mtime, to prove that nothing changed.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            if p.file_name().is_some_and(|n| n == "agent.log") {
                continue;
            }
            out.push((p, m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000));
        }
    }
    out.sort();
    out
}

/// A loop device over a file, detached (by its name) when dropped, also on panic.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub dev: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` with direct IO; None (with the reason printed) where loop devices cannot
    /// be used.
    pub fn attach(file: &Path) -> Option<LoopDevice> {
        if !is_root() {
            eprintln!("skipping loop-device part: not root");
            return None;
        }
        let out = Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping loop-device part: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDevice { dev })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// True if every byte readable from `r` is zero.
pub fn all_zero(mut r: impl std::io::Read) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if buf[..n].iter().any(|b| *b != 0) {
                    return false;
                }
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}
