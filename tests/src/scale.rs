//! The scale run's pieces: agents with their own sanlock daemons over shared domains, the work
//! table engines take moves from, engine processes, and the audit over the journal and the
//! domains (`tests/tests/scale.rs` drives them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_lease::test_support::SanlockDaemon;
use sdm_proto::Uuid;

use crate::cluster::{Cluster, TestDisk};
use crate::{AgentOptions, AgentProc};

/// Agents over two shared domains, each agent with its own sanlock daemon (its "host").
pub struct SanlockCluster {
    /// The agents and domains.
    pub cluster: Cluster,
    /// One daemon per agent, in the same order; dropped after the agents.
    pub daemons: Vec<SanlockDaemon>,
    _root: tempfile::TempDir,
}

impl Drop for SanlockCluster {
    fn drop(&mut self) {
        // Agents first: their daemons must outlive the processes registered with them.
        for a in &mut self.cluster.agents {
            a.kill9();
        }
    }
}

fn sanlock_config(root: &Path, run_dir: &Path) -> String {
    format!(
        "create_default_domains = false\ndomain_roots = [{root:?}]\n[leases]\ndefault_backend = \"sanlock\"\nsanlock_io_timeout_s = 1\nsanlock_run_dir = {run_dir:?}\n"
    )
}

/// Starts `n` agents (host ids 1..=n), each with a private sanlock daemon, over two domains
/// created by the first in a shared directory.
pub async fn sanlock_cluster(n: usize) -> SanlockCluster {
    let root = tempfile::Builder::new()
        .prefix("sdm-scale-")
        .tempdir()
        .unwrap();
    let daemons: Vec<SanlockDaemon> = (1..=n)
        .map(|i| SanlockDaemon::start(&format!("scale-h{i}")))
        .collect();
    let start = |i: usize| {
        AgentProc::start(AgentOptions {
            config: Some(sanlock_config(root.path(), daemons[i].run_dir())),
            host_id: Some(i as u64 + 1),
            ..Default::default()
        })
    };
    let first = start(0);
    let c = first.client();
    let (sd1, sd2) = (Uuid::new_v4(), Uuid::new_v4());
    for (sd, d) in [(&sd1, "scale 1"), (&sd2, "scale 2")] {
        c.api()
            .create_domain(
                sd.clone(),
                Some(root.path().display().to_string()),
                sdm_proto::Description::parse(d).ok(),
                None,
                None,
                None,
                None,
            )
            .await
            .via(&c)
            .expect("create domain");
    }
    let mut agents = vec![first];
    let rest: Vec<AgentProc> = std::thread::scope(|s| {
        let hs: Vec<_> = (1..n).map(|i| s.spawn(move || start(i))).collect();
        hs.into_iter().map(|h| h.join().expect("agent")).collect()
    });
    agents.extend(rest);
    let (dir1, dir2) = (
        root.path().join(sd1.as_str()),
        root.path().join(sd2.as_str()),
    );
    // The others attach both (joining each lockspace, ~3 s each); the agents remember them
    // across restarts.
    let attaches = agents[1..].iter().map(|a| {
        let c = a.client();
        let dirs = [dir1.display().to_string(), dir2.display().to_string()];
        async move {
            for d in dirs {
                c.api()
                    .attach_domain(d, None, None, None, None)
                    .await
                    .via(&c)
                    .expect("attach domain");
            }
        }
    });
    futures::future::join_all(attaches).await;
    wait_for_domains(&agents, &sd1, &sd2).await;
    SanlockCluster {
        cluster: Cluster {
            agents,
            sd1,
            sd2,
            dir1,
            dir2,
        },
        daemons,
        _root: root,
    }
}

/// Waits until every agent has both domains attached.
async fn wait_for_domains(agents: &[AgentProc], sd1: &Uuid, sd2: &Uuid) {
    for a in agents {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let caps = a.client().api().get_capabilities().await.via(&a.client());
            if caps.is_ok_and(|c| c.domains.contains(sd1) && c.domains.contains(sd2)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent {} sees both domains",
                a.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Restarts every agent once (SIGTERM, then start), as an operator restarting the service
/// would, so that each collects what its killed incarnations left (start-up garbage
/// collection), and waits until they are back with both domains and idle.
pub async fn restart_agents(cluster: &mut Cluster) {
    std::thread::scope(|s| {
        for a in cluster.agents.iter_mut() {
            s.spawn(move || a.restart_gracefully());
        }
    });
    wait_for_domains(&cluster.agents, &cluster.sd1, &cluster.sd2).await;
    // Garbage collection may have started wipes of deletion leftovers.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cluster
        .jobs()
        .await
        .iter()
        .any(|(_, j)| j.status.is_active())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "agents still busy after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The work table engines take moves from.
pub const QUEUE_SCHEMA: &str = "CREATE SCHEMA scale;
CREATE TABLE scale.queue (
    seq      serial,
    image    uuid PRIMARY KEY,
    src      uuid NOT NULL,
    dst      uuid NOT NULL,
    state    text NOT NULL DEFAULT 'todo',
    taken_by text,
    taken_at timestamptz,
    note     text,
    tries    integer NOT NULL DEFAULT 0
);";

/// One `sdm_scale_engine` process, killed by pid when dropped.
pub struct ScaleEngine {
    child: Option<Child>,
    /// Its engine id.
    pub id: String,
    log: PathBuf,
}

impl ScaleEngine {
    /// Starts an engine `id` on `journal` over `agents`, logging into `dir`.
    pub fn start(bin: &Path, id: &str, journal: &str, agents: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).expect("engine log");
        let child = Command::new(bin)
            .env("SCALE_JOURNAL", journal)
            .env("SCALE_AGENTS", agents.join(","))
            .env("SCALE_ENGINE_ID", id)
            .env("SCALE_PARALLEL", "4")
            .env("SCALE_LEASE_MS", "2000")
            .env("SCALE_RENEW_MS", "500")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn scale engine");
        ScaleEngine {
            child: Some(child),
            id: id.into(),
            log,
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ScaleEngine {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Disks moved (committed, on the destination only).
    pub moved: usize,
    /// Disks still on the source (never moved, or rolled back).
    pub on_source: usize,
    /// Disks on neither domain intact.
    pub lost: Vec<String>,
    /// Disks with more than one committed operation, or on both domains.
    pub moved_twice: Vec<String>,
    /// Operations that submitted a source deletion before their commit.
    pub deleted_before_commit: Vec<String>,
    /// Findings of `StorageDomain.check` after the run and after every agent restarted once
    /// (leftovers that garbage collection at start-up did not remove).
    pub leftovers: Vec<String>,
    /// Findings of `StorageDomain.check` before the restart: what the running agents left for
    /// their next start-up garbage collection (reported, not a failure).
    pub leftovers_before_restart: Vec<String>,
    /// Journal: operations committed, rolled back, other.
    pub ops_committed: i64,
    /// Operations rolled back.
    pub ops_rolled_back: i64,
    /// Operations not ended.
    pub ops_unfinished: i64,
    /// Sum of takeovers.
    pub takeovers: i64,
}

/// What the moves that are not done are at, for a run that did not finish: the work table's
/// row, each operation's owner and records, and the image's files on both domains.
pub async fn pending_report(db: &tokio_postgres::Client, cluster: &Cluster) -> String {
    let rows = db
        .query(
            "SELECT q.image::text, q.state, q.tries, coalesce(q.note, ''), coalesce(q.taken_by, '')
             FROM scale.queue q
             WHERE NOT EXISTS (SELECT 1 FROM sdm.operations o
                               WHERE o.image = q.image AND o.outcome = 'committed')
                OR EXISTS (SELECT 1 FROM sdm.operations o WHERE o.image = q.image AND NOT o.ended)",
            &[],
        )
        .await
        .map_err(|e| format!("{e}"));
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return format!("(no report: {e})"),
    };
    let mut out = String::new();
    for r in rows {
        let img: String = r.get(0);
        out.push_str(&format!(
            "image {img}: queue state {} (by {:?}), tries {}, note {:?}\n",
            r.get::<_, String>(1),
            r.get::<_, String>(4),
            r.get::<_, i32>(2),
            r.get::<_, String>(3)
        ));
        let ops = db
            .query(
                "SELECT o.op::text, o.owner, o.epoch, o.ended, coalesce(o.outcome, ''), o.takeovers,
                        (SELECT string_agg(r.entry->'rec'->>'type' ||
                                coalesce(' ' || (r.entry->'rec'->'error')::text, '') ||
                                coalesce(' ' || (r.entry->'rec'->>'reason'), ''), ', ' ORDER BY r.seq)
                         FROM sdm.records r WHERE r.op = o.op)
                 FROM sdm.operations o WHERE o.image = $1::text::uuid",
                &[&img],
            )
            .await
            .unwrap_or_default();
        for o in ops {
            out.push_str(&format!(
                "  op {} owner {} epoch {} ended {} outcome {:?} takeovers {}: {}\n",
                o.get::<_, String>(0),
                o.get::<_, String>(1),
                o.get::<_, i64>(2),
                o.get::<_, bool>(3),
                o.get::<_, String>(4),
                o.get::<_, i32>(5),
                o.get::<_, Option<String>>(6).unwrap_or_default()
            ));
        }
        for dir in [&cluster.dir1, &cluster.dir2] {
            let mut files: Vec<String> = std::fs::read_dir(dir.join("images").join(&img))
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            out.push_str(&format!("  {}: {files:?}\n", dir.display()));
        }
    }
    out
}

/// True when every volume of `disk` is in `dir` as its image, LEGAL, with its bytes.
fn intact(dir: &Path, disk: &TestDisk) -> bool {
    disk.volumes.iter().all(|v| {
        let img = dir.join("images").join(disk.img.as_str());
        let meta = std::fs::read_to_string(img.join(format!("{}.meta", v.vol))).unwrap_or_default();
        meta.contains("LEGALITY=LEGAL\n") && crate::sha256sum(&img.join(v.vol.as_str())) == v.sha256
    })
}

/// Audits the journal database `db` and the domains of `cluster` for `disks`. The domains
/// are checked after every agent restarted once ([`restart_agents`]): "no leftovers after GC"
/// means after the garbage collection a deployment runs.
pub async fn audit(
    db: &tokio_postgres::Client,
    cluster: &mut Cluster,
    disks: &[TestDisk],
) -> Audit {
    let mut a = Audit::default();
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE outcome = 'committed'),
                    count(*) FILTER (WHERE outcome = 'rolled back'),
                    count(*) FILTER (WHERE NOT ended),
                    coalesce(sum(takeovers), 0)
             FROM sdm.operations",
            &[],
        )
        .await
        .expect("count operations");
    (
        a.ops_committed,
        a.ops_rolled_back,
        a.ops_unfinished,
        a.takeovers,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let committed: HashMap<String, i64> = db
        .query(
            "SELECT image::text, count(*) FROM sdm.operations WHERE outcome = 'committed' GROUP BY image",
            &[],
        )
        .await
        .expect("committed per image")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // A source deletion (a delete_submit on the operation's source domain) before its commit.
    a.deleted_before_commit = db
        .query(
            "SELECT o.op::text FROM sdm.operations o
             CROSS JOIN LATERAL (SELECT r.entry->'rec'->>'src_sd' AS src, r.entry->'rec'->>'kind' AS kind
                                 FROM sdm.records r WHERE r.op = o.op AND r.seq = 0) b
             JOIN sdm.records d ON d.op = o.op AND d.entry->'rec'->>'type' = 'delete_submit'
                  AND d.entry->'rec'->>'sd' = b.src
             WHERE b.kind <> 'delete' AND NOT EXISTS (
                 SELECT 1 FROM sdm.records c WHERE c.op = o.op
                 AND c.entry->'rec'->>'type' = 'commit' AND c.seq < d.seq)",
            &[],
        )
        .await
        .expect("deletions before commit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for d in disks {
        let on_src = intact(&cluster.dir1, d);
        let on_dst = intact(&cluster.dir2, d);
        let n = committed.get(d.img.as_str()).copied().unwrap_or(0);
        match (on_src, on_dst) {
            (true, true) => a.moved_twice.push(format!("{} on both domains", d.img)),
            (false, false) => a.lost.push(d.img.to_string()),
            (false, true) if n == 1 => a.moved += 1,
            (true, false) if n == 0 => a.on_source += 1,
            _ => a.lost.push(format!("{} ({n} committed operations)", d.img)),
        }
        if n > 1 {
            a.moved_twice
                .push(format!("{}: {n} committed operations", d.img));
        }
    }
    a.leftovers_before_restart = check_domains(cluster).await;
    restart_agents(cluster).await;
    a.leftovers = check_domains(cluster).await;
    a
}

/// `StorageDomain.check` of both domains, one line per finding.
async fn check_domains(cluster: &Cluster) -> Vec<String> {
    let c: AgentClient = cluster.live_client();
    let mut out = Vec::new();
    for sd in [&cluster.sd1, &cluster.sd2] {
        let fixes = c
            .api()
            .check_domain(sd.clone())
            .await
            .via(&c)
            .expect("check");
        out.extend(
            fixes
                .iter()
                .map(|f| format!("{sd}: {}", serde_json::to_string(f).unwrap_or_default())),
        );
    }
    out
}
