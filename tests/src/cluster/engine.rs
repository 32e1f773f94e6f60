//! The engine side of a test: an event log, pool and follow settings with short timeouts, a
//! journal, the disk-move engine over a cluster, and a move run in the background.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_proto::Uuid;

use super::Cluster;

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
