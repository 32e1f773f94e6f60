//! Several real agents over one set of shared domains, the way an engine's hosts share storage:
//! the first agent creates the two embedded domains, the others attach the same directories at
//! start. Leases are the `local` backend (OFD locks), which conflict across these processes just
//! as sanlock leases conflict across hosts.
//!
//! Also: test disks with known content, SIGSTOP/SIGCONT, and [`FlakyProxy`], an HTTP relay that
//! loses chosen answers on their way back (the request reaches the agent, the reply does not).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{JobInfo, JobStatus, Uuid, VolumeFormat};

use crate::{create_volume, volume_info, volume_path, write_pattern, AgentOptions, AgentProc};

/// Agents sharing two domains.
pub struct Cluster {
    /// The agents; agent 0 owns the domain directories (in its state directory).
    pub agents: Vec<AgentProc>,
    /// First domain ("sdm local domain 1").
    pub sd1: Uuid,
    /// Second domain.
    pub sd2: Uuid,
    /// Directory of `sd1`.
    pub dir1: PathBuf,
    /// Directory of `sd2`.
    pub dir2: PathBuf,
}

impl Cluster {
    /// Starts `n` agents (host ids 1..=n) over the two domains of the first.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Like [`start`](Self::start); `env` goes to every agent.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_each(n, |_| env.to_vec()).await
    }

    /// Like [`start`](Self::start); agent `i` (0-based) gets the environment `env(i)`.
    pub async fn start_each<'a>(
        n: usize,
        env: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
    ) -> Cluster {
        Self::start_configured(n, env, "").await
    }

    /// Like [`start_each`](Self::start_each), with `extra` TOML (e.g. an `[io]` table) in
    /// every agent's config.
    pub async fn start_configured<'a>(
        n: usize,
        env: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
        extra: &str,
    ) -> Cluster {
        let env_of = |i: usize| -> Vec<(String, String)> {
            env(i)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let first = AgentProc::start(AgentOptions {
            host_id: Some(1),
            config: (!extra.is_empty()).then(|| format!("create_default_domains = true\n{extra}")),
            env: env_of(0),
            ..Default::default()
        });
        let (sd1, sd2, dir1, dir2) = crate::default_domains(&first.client()).await;
        let mut agents = vec![first];
        for i in 2..=n {
            let config = format!(
                "create_default_domains = false\n\n[[domains]]\npath = {:?}\n\n[[domains]]\npath = {:?}\n{extra}",
                dir1.display().to_string(),
                dir2.display().to_string()
            );
            agents.push(AgentProc::start(AgentOptions {
                host_id: Some(i as u64),
                config: Some(config),
                env: env_of(i - 1),
                ..Default::default()
            }));
        }
        for a in &agents {
            let caps = a
                .client()
                .api()
                .get_capabilities()
                .await
                .via(&a.client())
                .expect("caps");
            assert!(
                caps.domains.contains(&sd1) && caps.domains.contains(&sd2),
                "agent {} sees both domains",
                a.url
            );
        }
        Cluster {
            agents,
            sd1,
            sd2,
            dir1,
            dir2,
        }
    }

    /// URLs of the agents.
    pub fn urls(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.url.clone()).collect()
    }

    /// Client of agent `i`.
    pub fn client(&self, i: usize) -> AgentClient {
        self.agents[i].client()
    }

    /// Index of the agent at `url`.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.url == url)
    }

    /// Directory of a domain.
    pub fn dir(&self, sd: &Uuid) -> &Path {
        if sd == &self.sd1 {
            &self.dir1
        } else {
            &self.dir2
        }
    }

    /// The data file of a volume.
    pub fn volume_path(&self, sd: &Uuid, img: &Uuid, vol: &Uuid) -> PathBuf {
        volume_path(self.dir(sd), img, vol)
    }

    /// Every job of every live agent: (agent index, job). Agents are asked at once, each with a
    /// short timeout, so a frozen agent costs one timeout.
    pub async fn jobs(&self) -> Vec<(usize, JobInfo)> {
        let mut asks = tokio::task::JoinSet::new();
        for (i, a) in self.agents.iter().enumerate().filter(|(_, a)| a.pid() != 0) {
            let c = a
                .client()
                .with_timeout(Duration::from_secs(2))
                .expect("client");
            asks.spawn(async move {
                let m = match c.api().get_jobs(None, None).await {
                    Ok(m) => m,
                    Err(e) => {
                        if std::env::var_os("SDM_TEST_DEBUG").is_some() {
                            eprintln!("agent {i}: getJobs failed: {e}");
                        }
                        Default::default()
                    }
                };
                m.into_values().map(|j| (i, j)).collect::<Vec<_>>()
            });
        }
        let mut out: Vec<(usize, JobInfo)> = asks.join_all().await.into_iter().flatten().collect();
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Waits until some agent runs a job with `description` that has started moving data (its
    /// destination is ILLEGAL and leased) and reports at least `min_bytes` done; returns the
    /// agent's index and the job.
    pub async fn wait_running(
        &self,
        description: &str,
        min_bytes: u64,
        timeout: Duration,
    ) -> (usize, JobInfo) {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, j) in self.jobs().await {
                if std::env::var_os("SDM_TEST_DEBUG").is_some() {
                    eprintln!(
                        "agent {i}: {} {} {}/{} {:?}",
                        j.description, j.status, j.bytes_done, j.bytes_total, j.progress
                    );
                }
                if j.description == description
                    && j.status == JobStatus::Running
                    && j.progress.is_some()
                    && j.bytes_done >= min_bytes
                {
                    return (i, j);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {description} job started moving data within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes agent `i` (SIGSTOP): its sockets stay open and its locks stay held.
    pub fn freeze(&self, i: usize) {
        signal(self.agents[i].pid(), libc::SIGSTOP);
    }

    /// Thaws agent `i` (SIGCONT).
    pub fn thaw(&self, i: usize) {
        signal(self.agents[i].pid(), libc::SIGCONT);
    }

    /// kill -9 of agent `i`.
    pub fn kill9(&mut self, i: usize) {
        self.agents[i].kill9();
    }

    /// Fails if any live agent still runs a job or if either domain has leftovers or findings
    /// other than the ones allowed.
    pub async fn assert_clean(&self) {
        for (i, j) in self.jobs().await {
            assert!(!j.status.is_active(), "agent {i} still runs {j:?}");
        }
        let c = self.live_client();
        for sd in [&self.sd1, &self.sd2] {
            let fixes = c
                .api()
                .check_domain(sd.clone())
                .await
                .via(&c)
                .expect("check");
            assert!(fixes.is_empty(), "domain {sd} has findings: {fixes:?}");
        }
    }

    /// A client of the first live agent.
    pub fn live_client(&self) -> AgentClient {
        self.agents
            .iter()
            .find(|a| a.pid() != 0)
            .expect("a live agent")
            .client()
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    assert!(pid != 0, "agent is not running");
    // SAFETY: kill(2) on the pid of a child process we own and have not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// A volume of a test disk.
#[derive(Clone, Debug)]
pub struct TestVolume {
    /// Volume id.
    pub vol: Uuid,
    /// SHA-256 of its file.
    pub sha256: String,
}

/// A disk created for a test: a RAW base filled with pseudo-random data, and `cow_layers` COW
/// volumes on top, each with a few written extents.
#[derive(Clone, Debug)]
pub struct TestDisk {
    /// Image id.
    pub img: Uuid,
    /// Volumes, parents first.
    pub volumes: Vec<TestVolume>,
}

/// Creates a [`TestDisk`] of a `base_mib` MiB RAW base and `cow_layers` COW layers on `sd`.
pub async fn create_disk(
    cluster: &Cluster,
    sd: &Uuid,
    base_mib: u64,
    cow_layers: usize,
) -> TestDisk {
    let c = cluster.client(0);
    let img = Uuid::new_v4();
    let size = base_mib << 20;
    let base = Uuid::new_v4();
    create_volume(&c, sd, &img, &base, size, VolumeFormat::Raw, None, None).await;
    let path = cluster.volume_path(sd, &img, &base);
    write_pattern(
        &path,
        0,
        (base_mib << 20) as usize,
        img.as_str().len() as u64 + base_mib,
    );
    let mut vols = vec![base];
    for layer in 0..cow_layers {
        let parent = vols.last().cloned();
        let v = Uuid::new_v4();
        // Each layer one higher in the chain order (SEQ), which moves and copies keep
        // (`sequence` is a parameter sdm's typed client does not send).
        let r = crate::raw_call(
            cluster.agents[0].addr,
            "Volume.create",
            serde_json::json!({"sd_id": sd, "img_id": img, "vol_id": v, "capacity": size,
                "format": "COW", "preallocate": "SPARSE", "parent_vol_id": parent,
                "sequence": layer + 1}),
        );
        assert!(r.get("error").is_none(), "Volume.create: {r}");
        let p = cluster.volume_path(sd, &img, &v);
        let offset = (layer as u64 * 3 + 1) << 18;
        let out = Command::new("qemu-io")
            .arg("-f")
            .arg("qcow2")
            .arg("-c")
            .arg(format!("write -P {} {} 192k", 0x40 + layer, offset))
            .arg(&p)
            // The backing file is named relative to the image directory.
            .current_dir(p.parent().unwrap())
            .output()
            .expect("qemu-io");
        assert!(
            out.status.success(),
            "qemu-io: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        vols.push(v);
    }
    let volumes = vols
        .into_iter()
        .map(|vol| {
            let sha256 = crate::sha256sum(&cluster.volume_path(sd, &img, &vol));
            TestVolume { vol, sha256 }
        })
        .collect();
    TestDisk { img, volumes }
}

/// An HTTP relay in front of an agent that loses the answers to the first `n` requests whose
/// body contains `marker`: the request reaches the agent, which acts on it; then the relay
/// closes the client's connection without a reply, as a network failure would. Everything else
/// (other requests, WebSocket upgrades) passes through.
pub struct FlakyProxy {
    /// `http://` URL of the relay.
    pub url: String,
    lost: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
}

impl FlakyProxy {
    /// Starts a relay to `target`.
    pub fn start(target: SocketAddr, marker: &str, n: usize) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let to_lose = Arc::new(AtomicUsize::new(n));
        let lost = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let marker = marker.as_bytes().to_vec();
        let (l2, s2) = (lost.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { break };
                let (marker, to_lose, lost, seen) =
                    (marker.clone(), to_lose.clone(), l2.clone(), s2.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, target, &marker, &to_lose, &lost, &seen);
                });
            }
        });
        FlakyProxy { url, lost, seen }
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// Requests with the marker seen so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP message head (up to the blank line) and returns it with its Content-Length
/// and whether it is chunked.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(Vec<u8>, usize, bool)>> {
    let mut head = Vec::new();
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            return Ok(Some((head, len, chunked)));
        }
    }
}

/// Reads a message body (Content-Length or chunked) as it is on the wire.
fn read_body(r: &mut BufReader<TcpStream>, len: usize, chunked: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if !chunked {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    loop {
        let mut size_line = String::new();
        r.read_line(&mut size_line)?;
        body.extend_from_slice(size_line.as_bytes());
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .unwrap_or(0);
        let mut chunk = vec![0u8; size + 2];
        r.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk);
        if size == 0 {
            return Ok(body);
        }
    }
}

fn splice(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

fn relay(
    client: TcpStream,
    target: SocketAddr,
    marker: &[u8],
    to_lose: &AtomicUsize,
    lost: &AtomicUsize,
    seen: &AtomicUsize,
) -> std::io::Result<()> {
    let upstream = TcpStream::connect(target)?;
    let mut cr = BufReader::new(client.try_clone()?);
    let mut ur = BufReader::new(upstream.try_clone()?);
    let (mut cw, mut uw) = (client, upstream);
    loop {
        let Some((head, len, chunked)) = read_head(&mut cr)? else {
            return Ok(());
        };
        let body = read_body(&mut cr, len, chunked)?;
        let upgrade = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("upgrade: websocket");
        let marked = body.windows(marker.len().max(1)).any(|w| w == marker);
        if marked {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let lose = marked
            && to_lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        uw.write_all(&head)?;
        uw.write_all(&body)?;
        let Some((rhead, rlen, rchunked)) = read_head(&mut ur)? else {
            return Ok(());
        };
        if upgrade {
            cw.write_all(&rhead)?;
            let buffered = ur.buffer().to_vec();
            cw.write_all(&buffered)?;
            // The client's side may have buffered bytes too (none for a fresh handshake).
            splice(cw, uw);
            return Ok(());
        }
        let rbody = read_body(&mut ur, rlen, rchunked)?;
        if lose {
            // The agent has acted; the client never hears of it.
            lost.fetch_add(1, Ordering::SeqCst);
            let _ = cw.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        cw.write_all(&rhead)?;
        cw.write_all(&rbody)?;
    }
}

/// Collects a disk operation's events for assertions (and can forward them to a channel).
#[derive(Default)]
pub struct EventLog {
    events: std::sync::Mutex<Vec<sdm_client::Event>>,
    tx: Option<tokio::sync::mpsc::UnboundedSender<sdm_client::Event>>,
}

impl EventLog {
    /// A log that also sends every event to `tx`.
    pub fn with_channel(tx: tokio::sync::mpsc::UnboundedSender<sdm_client::Event>) -> EventLog {
        EventLog {
            events: Default::default(),
            tx: Some(tx),
        }
    }

    /// Events so far.
    pub fn events(&self) -> Vec<sdm_client::Event> {
        self.events.lock().unwrap().clone()
    }

    /// Events so far, as JSON values (easy to match on).
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.events()
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    /// Recovery decisions so far, by name.
    pub fn decisions(&self) -> Vec<String> {
        self.json()
            .into_iter()
            .filter(|e| e["event"] == "recovery")
            .map(|e| e["decision"]["decision"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Position of the first event named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.json().iter().position(|e| e["event"] == name)
    }
}

impl sdm_client::EventSink for EventLog {
    fn event(&self, e: &sdm_client::Event) {
        self.events.lock().unwrap().push(e.clone());
        if let Some(tx) = &self.tx {
            let _ = tx.send(e.clone());
        }
    }
}

/// Pool and follow settings for tests: short probe timeouts so that dead and frozen hosts are
/// noticed in about a second.
pub fn test_pool(urls: &[String]) -> Arc<sdm_client::HostPool> {
    let opts = sdm_client::pool::PoolOptions {
        probe_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        stats_max_age: Duration::from_millis(300),
        tls: None,
    };
    Arc::new(
        sdm_client::HostPool::with_options(urls, opts, Box::new(sdm_client::LeastLoaded))
            .expect("pool"),
    )
}

/// Follow settings for tests.
pub fn test_follow() -> sdm_client::FollowOptions {
    sdm_client::FollowOptions {
        poll_interval: Duration::from_millis(200),
        fence_timeout: Duration::from_secs(10),
        give_up_after: Some(Duration::from_secs(120)),
        ..Default::default()
    }
}

/// Opens a journal, waiting while a dying owner still holds its lock.
pub async fn open_journal(path: &Path) -> Arc<sdm_client::Journal> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sdm_client::Journal::open(path) {
            Ok(j) => return Arc::new(j),
            Err(sdm_client::JournalError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("open journal {}: {e}", path.display()),
        }
    }
}

/// A `Disks` over the cluster with test settings.
pub async fn engine(cluster: &Cluster, journal: &Path) -> sdm_client::Disks {
    engine_over(&cluster.urls(), journal).await
}

/// A `Disks` over the agents at `urls` only, with test settings.
pub async fn engine_over(urls: &[String], journal: &Path) -> sdm_client::Disks {
    sdm_client::Disks::new(test_pool(urls), open_journal(journal).await)
        .with_follow_options(test_follow())
}

/// Runs `disks.move_disk` of `img` from `src` to `dst` in a task of its own, so that the test
/// can interfere (kill, freeze, crash the engine) while it runs.
pub fn spawn_move(
    disks: &Arc<sdm_client::Disks>,
    log: &Arc<EventLog>,
    img: &Uuid,
    src: &Uuid,
    dst: &Uuid,
    policy: sdm_client::MovePolicy,
) -> tokio::task::JoinHandle<Result<sdm_client::OpReport, sdm_client::Error>> {
    let (disks, log, img, src, dst) = (
        disks.clone(),
        log.clone(),
        img.clone(),
        src.clone(),
        dst.clone(),
    );
    tokio::spawn(async move {
        disks
            .move_disk(&img, &src, &dst, policy, log.as_ref())
            .await
    })
}

/// Checks, asking `c`, that every volume of `disk` is still LEGAL on `src` ("source
/// untouched"), and that its file on `bytes_on` holds the bytes the disk was created with.
pub async fn assert_source_untouched(
    c: &AgentClient,
    cluster: &Cluster,
    disk: &TestDisk,
    src: &Uuid,
    bytes_on: &Uuid,
) {
    for v in &disk.volumes {
        let info = volume_info(c, src, &disk.img, &v.vol).await;
        assert_eq!(
            info.legality,
            sdm_proto::Legality::Legal,
            "source untouched"
        );
        assert_eq!(
            crate::sha256sum(&cluster.volume_path(bytes_on, &disk.img, &v.vol)),
            v.sha256
        );
    }
}

/// Checks that `disk` now lives on `dst` exactly (same bytes, LEGAL at `generation` for each
/// volume as listed, same chain), and is gone from `src` without leftovers.
pub async fn assert_moved(cluster: &Cluster, disk: &TestDisk, src: &Uuid, dst: &Uuid) {
    let c = cluster.live_client();
    let mut listed = c
        .api()
        .get_volumes(dst.clone(), disk.img.clone())
        .await
        .via(&c)
        .expect("dst volumes");
    listed.sort();
    let mut want: Vec<Uuid> = disk.volumes.iter().map(|v| v.vol.clone()).collect();
    want.sort();
    assert_eq!(listed, want, "destination has exactly the source's volumes");
    let mut parent = Uuid::blank();
    for v in &disk.volumes {
        let info = volume_info(&c, dst, &disk.img, &v.vol).await;
        assert_eq!(
            info.legality,
            sdm_proto::Legality::Legal,
            "volume {} is LEGAL",
            v.vol
        );
        assert!(
            info.lease.owners.is_empty(),
            "volume {} lease is free",
            v.vol
        );
        assert_eq!(info.parent, parent, "volume {} keeps its parent", v.vol);
        assert_eq!(
            info.sequence as usize,
            disk.volumes.iter().position(|x| x.vol == v.vol).unwrap(),
            "volume {} keeps its place in the chain (SEQ)",
            v.vol
        );
        parent = v.vol.clone();
        let got = crate::sha256sum(&cluster.volume_path(dst, &disk.img, &v.vol));
        assert_eq!(got, v.sha256, "volume {} has the source's bytes", v.vol);
    }
    let images = c.api().get_images(src.clone()).await.via(&c).unwrap();
    assert!(!images.contains(&disk.img), "source image is deleted");
    assert!(!cluster
        .dir(src)
        .join("images")
        .join(disk.img.as_str())
        .exists());
}
