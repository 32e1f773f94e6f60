//! A private PostgreSQL server per test, and a TCP relay that can freeze or cut the connections
//! through it (a partitioned engine).
//!
//! [`PgServer::start`] runs Debian's `postgresql` binaries (`scripts/install-deps` installs
//! them): `initdb` into a new temporary directory, then `postgres` on a free loopback port with
//! its socket directory in the same place. The server refuses to run as root, so as root both
//! run as the `postgres` user the package creates (the directory is handed to it). The server
//! is this process's child: it is stopped by pid when the handle drops, also on panic. Where
//! the binaries or the user are missing, `start` says why, and the test skips.
//!
//! The superuser `postgres` has a password over TCP (scram-sha-256), so that a test can also
//! try wrong credentials; [`PgServer::url`] carries it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The superuser's password in every test server.
pub const PASSWORD: &str = "sdm-test";

/// A PostgreSQL server of one test.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Uid and gid to run as (as root: the `postgres` user).
    user: Option<(u32, u32)>,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    child: Mutex<Option<Child>>,
}

/// The directory holding `postgres` and `initdb`: Debian's newest
/// `/usr/lib/postgresql/<version>/bin`, else the directory of `initdb` on PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
}

/// Uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PgServer {
    /// Starts a server, or says why it cannot run here (the caller skips).
    pub fn start() -> Result<PgServer, String> {
        let bin = bin_dir().ok_or(
            "PostgreSQL is not installed (scripts/install-deps installs Debian's postgresql)",
        )?;
        let user = if crate::is_root() {
            Some(postgres_user().ok_or("running as root and there is no `postgres` user")?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("sdm-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("pw"), PASSWORD).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            for p in [dir.path().to_path_buf(), dir.path().join("pw")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let mut s = PgServer {
            dir,
            bin,
            user,
            port: 0,
            child: Mutex::new(None),
        };
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(s.data())
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", s.dir.path().join("pw").display()))
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // A port taken between choosing and binding: try another.
        let mut last = String::new();
        for _ in 0..3 {
            s.port = free_port();
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn command(&self, name: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bin.join(name));
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(self.log(), Some(uid), Some(gid));
        }
        let from = self.log_text().len();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        *self.child() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.log_text();
            let new = text.get(from..).unwrap_or("");
            if new.contains("ready to accept connections") {
                return Ok(());
            }
            let exited = self
                .child()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.kill9();
                return Err(format!("postgres did not start:\n{new}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The postmaster's pid (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child().as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/DB`.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The URL of the default database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The same server reached through `addr` (a relay), database `db`.
    pub fn url_via(&self, addr: SocketAddr, db: &str) -> String {
        format!("postgres://postgres:{PASSWORD}@{addr}/{db}")
    }

    /// A connection for checks and set-up (its driver task runs on the current runtime).
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        // A loaded machine may still answer "the database system is starting up" (57P03)
        // after the server logged that it is ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (c, conn) = loop {
            match tokio_postgres::connect(&self.url_for(db), tokio_postgres::NoTls).await {
                Ok(c) => break c,
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!(
                    "connect to test database {db}: {e}: {:?}\n{}",
                    e.as_db_error(),
                    self.log_text()
                ),
            }
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        c
    }

    /// Creates database `db` and returns its URL.
    pub async fn create_db(&self, db: &str) -> String {
        self.client("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {db}: {e}"));
        self.url_for(db)
    }

    /// Fast shutdown (SIGINT), waiting for the postmaster to exit.
    pub fn stop(&self) {
        self.signal_and_wait(libc::SIGINT, Duration::from_secs(10));
        self.kill9();
    }

    /// kill -9 of the postmaster (a crash; its backends exit when they notice).
    pub fn kill9(&self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal_and_wait(&self, sig: libc::c_int, limit: Duration) {
        let mut guard = self.child();
        let Some(c) = guard.as_mut() else { return };
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, sig);
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                *guard = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory and port (after `stop`/`kill9`).
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Backends of a killed postmaster may hold its shared memory for a moment.
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restarting postgres: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The temporary directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- postgres log (tail) ---\n{tail}");
        }
        self.signal_and_wait(libc::SIGQUIT, Duration::from_secs(5));
        self.kill9();
    }
}

/// Starts a server, or prints why not and returns None (`test`: the test's name).
pub fn server_or_skip(test: &str) -> Option<PgServer> {
    match PgServer::start() {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// A TCP relay to one address whose connections can be frozen (bytes held, sockets open: a
/// partition the peers cannot see) or severed (every connection reset).
pub struct TcpRelay {
    /// The relay's address.
    pub addr: SocketAddr,
    state: Arc<RelayState>,
}

struct RelayState {
    frozen: AtomicBool,
    closed: AtomicBool,
    /// Bumped by `sever`: pumps of older connections stop.
    generation: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
    /// Bytes that freeze the relay when a client sends them ([`TcpRelay::freeze_when_sent`]).
    trap: Mutex<Option<Vec<u8>>>,
    /// Set when the trap caught a chunk (held, not forwarded, until `thaw`).
    trapped: AtomicBool,
}

impl TcpRelay {
    /// Relays connections made to the returned address to `target`.
    pub fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RelayState {
            frozen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            trap: Mutex::new(None),
            trapped: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                let generation = st.generation.load(Ordering::SeqCst);
                {
                    let mut conns = st.conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(upstream.try_clone().unwrap());
                }
                for (from, to, from_client) in [
                    (
                        client.try_clone().unwrap(),
                        upstream.try_clone().unwrap(),
                        true,
                    ),
                    (upstream, client, false),
                ] {
                    let st = st.clone();
                    std::thread::spawn(move || pump(from, to, &st, generation, from_client));
                }
            }
        });
        TcpRelay { addr, state }
    }

    /// Holds every byte in both directions, on open and new connections, until `thaw`.
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
    }

    /// Freezes the relay as soon as a client sends a chunk holding `bytes`, before that chunk
    /// reaches the server: a partition at a chosen point of the client's conversation (say,
    /// inside a transaction, between two statements). [`TcpRelay::trapped`] tells when it hit.
    pub fn freeze_when_sent(&self, bytes: &[u8]) {
        self.state.trapped.store(false, Ordering::SeqCst);
        *self.state.trap.lock().unwrap() = Some(bytes.to_vec());
    }

    /// Whether the trap of [`TcpRelay::freeze_when_sent`] froze the relay.
    pub fn trapped(&self) -> bool {
        self.state.trapped.load(Ordering::SeqCst)
    }

    /// Lets bytes through again.
    pub fn thaw(&self) {
        self.state.frozen.store(false, Ordering::SeqCst);
    }

    /// Resets every open connection (new ones are relayed).
    pub fn sever(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        self.thaw();
        self.sever();
        // Wake the accept loop so that it sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    st: &RelayState,
    generation: u64,
    from_client: bool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 << 10];
    let live = || st.generation.load(Ordering::SeqCst) == generation;
    while live() {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if from_client {
            let mut trap = st.trap.lock().unwrap();
            let hit = trap.as_ref().is_some_and(|t| {
                !t.is_empty() && buf[..n].windows(t.len()).any(|w| w == t.as_slice())
            });
            if hit {
                *trap = None;
                st.frozen.store(true, Ordering::SeqCst);
                st.trapped.store(true, Ordering::SeqCst);
            }
        }
        while st.frozen.load(Ordering::SeqCst) && live() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !live() || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
