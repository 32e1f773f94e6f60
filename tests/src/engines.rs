//! Engine processes on a shared journal: `sdmctl disk move` as a mover, `sdmctl resume --watch`
//! as a takeover daemon, each killed by pid when its handle drops; and what the journal
//! database says about an image's operation.

use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sdm_proto::Uuid;

/// One `sdmctl` engine process.
pub struct EngineProc {
    child: Option<Child>,
    /// Its engine id (`--engine-id`).
    pub name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl EngineProc {
    fn spawn(name: &str, agents: &[String], args: &[String], env: &[(&str, &str)]) -> EngineProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("engine.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = crate::sdmctl_cmd(agents);
        cmd.args(args)
            .args(["--engine-id", name])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sdmctl");
        EngineProc {
            child: Some(child),
            name: name.into(),
            log,
            _dir: dir,
        }
    }

    /// `sdmctl resume --watch` every `interval_s` on the journal of `journal_args`.
    pub fn watch(name: &str, agents: &[String], journal_args: &[String], interval_s: f64) -> Self {
        let mut args: Vec<String> = vec!["resume".into(), "--watch".into()];
        args.extend(["--interval".into(), interval_s.to_string()]);
        args.extend_from_slice(journal_args);
        EngineProc::spawn(name, agents, &args, &[])
    }

    /// `sdmctl disk move IMG --from SRC --to DST` with `extra` arguments and `env`.
    #[allow(clippy::too_many_arguments)]
    pub fn mover(
        name: &str,
        agents: &[String],
        journal_args: &[String],
        img: &Uuid,
        src: &Uuid,
        dst: &Uuid,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<String> = ["disk", "move", img.as_str(), "--from", src.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--to".into(), dst.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend_from_slice(journal_args);
        EngineProc::spawn(name, agents, &args, env)
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// kill -9, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (kill -9 after 10 s).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(Duration::from_secs(10));
        self.kill9();
        st
    }

    /// stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- engine {} ---\n{}", self.name, self.log_text());
        }
        self.kill9();
    }
}

/// An image's latest operation, as the journal database has it.
#[derive(Clone, Debug)]
pub struct OpRow {
    /// Operation id.
    pub op: String,
    /// Owner now.
    pub owner: String,
    /// Epoch now.
    pub epoch: i64,
    /// Ended.
    pub ended: bool,
    /// Outcome, once ended.
    pub outcome: Option<String>,
    /// Claims from another engine.
    pub takeovers: i32,
    /// Type of the last record.
    pub last: String,
    /// Last change, milliseconds since the epoch by the server's clock.
    pub updated_ms: i64,
}

/// The latest operation of `img` in the journal database `db`.
pub async fn op_of(db: &tokio_postgres::Client, img: &Uuid) -> Option<OpRow> {
    let img = uuid::Uuid::parse_str(img.as_str()).unwrap();
    let row = db
        .query_opt(
            "SELECT o.op::text, o.owner, o.epoch, o.ended, o.outcome, o.takeovers,
                    (SELECT r.entry->'rec'->>'type' FROM sdm.records r WHERE r.op = o.op ORDER BY r.seq DESC LIMIT 1),
                    (extract(epoch FROM o.updated_at) * 1000)::bigint
             FROM sdm.operations o WHERE o.image = $1 ORDER BY o.created_at DESC LIMIT 1",
            &[&img],
        )
        .await
        .expect("query operation")?;
    Some(OpRow {
        op: row.get(0),
        owner: row.get(1),
        epoch: row.get(2),
        ended: row.get(3),
        outcome: row.get(4),
        takeovers: row.get(5),
        last: row.get::<_, Option<String>>(6).unwrap_or_default(),
        updated_ms: row.get(7),
    })
}

/// Waits until `img`'s operation has a record of type `rec` (at most `limit`).
pub async fn wait_record(db: &tokio_postgres::Client, img: &Uuid, rec: &str, limit: Duration) {
    let img_u = uuid::Uuid::parse_str(img.as_str()).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM sdm.records r JOIN sdm.operations o USING (op)
                 WHERE o.image = $1 AND r.entry->'rec'->>'type' = $2",
                &[&img_u, &rec],
            )
            .await
            .expect("query records")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no {rec} record for image {img}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `img`'s operation ended (at most `limit`) and returns it.
pub async fn wait_ended(db: &tokio_postgres::Client, img: &Uuid, limit: Duration) -> OpRow {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(r) = op_of(db, img).await.filter(|r| r.ended) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "operation of image {img} did not end within {limit:?}: {:?}",
            op_of(db, img).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lease's expiry as the database last saw it, in milliseconds since the epoch (server
/// clock) of `img`'s operation, and the server's now.
pub async fn expiry_of(db: &tokio_postgres::Client, img: &Uuid) -> (i64, i64) {
    let img = uuid::Uuid::parse_str(img.as_str()).unwrap();
    let row = db
        .query_one(
            "SELECT (extract(epoch FROM expires_at) * 1000)::bigint, (extract(epoch FROM now()) * 1000)::bigint
             FROM sdm.operations WHERE image = $1 ORDER BY created_at DESC LIMIT 1",
            &[&img],
        )
        .await
        .expect("query expiry");
    (row.get(0), row.get(1))
}
