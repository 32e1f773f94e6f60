//! Job events as VDSM sends them: a JSON-RPC notification `|jobs|status|<job_id>` on
//! `jms.queue.events`, to every subscriber of exactly that destination on any connection.
//!
//! As VDSM (`jobs.py`), an event goes out when a job ends (done, failed, aborted) and when a
//! pending job is aborted, never for progress. The parameters are the job's info, flat, as
//! `Host.getJobs` reports it (VDSM's `id`, `status`, `description`, `job_type`, `progress`,
//! `error`, and sdm's additive fields), plus `notify_time`: 2^31 - 1 + the monotonic clock in
//! milliseconds, as VDSM stamps events.

use std::sync::Arc;

use bytes::Bytes;
use sdm_proto::JobInfo;
use sdm_stomp::EVENTS_QUEUE;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::router::Broker;
use crate::jobs::Jobs;
use crate::metrics;

/// The monotonic clock in milliseconds (CLOCK_MONOTONIC, as Python's `time.monotonic`).
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// VDSM's `notify_time` of an event sent now.
pub fn notify_time() -> u64 {
    (i32::MAX as u64) + monotonic_ms()
}

/// The event notification for `info`.
pub fn event_body(info: &JobInfo) -> Bytes {
    let mut params = serde_json::to_value(info).unwrap_or_else(|_| json!({}));
    if let Value::Object(p) = &mut params {
        p.insert("notify_time".into(), json!(notify_time()));
    }
    let event = json!({
        "jsonrpc": "2.0",
        "method": format!("|jobs|status|{}", info.id),
        "params": params,
    });
    Bytes::from(event.to_string())
}

/// Publishes every job event of `jobs` through `broker`, until the registry goes away.
pub fn spawn_publisher(jobs: &Arc<Jobs>, broker: Arc<Broker>) {
    let mut rx = jobs.events();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(info) => {
                    let sent = broker.publish(EVENTS_QUEUE, event_body(&info));
                    metrics::events_sent(sent as u64);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "job events were lost: too many at once");
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdm_proto::{JobStatus, Uuid};

    #[test]
    fn event_is_vdsm_shaped() {
        let id = Uuid::new_v4();
        let info = JobInfo {
            id: id.clone(),
            status: JobStatus::Failed,
            description: "copy_data".into(),
            job_type: "storage".into(),
            progress: Some(42.0),
            error: Some(sdm_proto::JobError {
                code: 201,
                message: "no".into(),
                name: None,
            }),
            bytes_done: 1,
            bytes_total: 2,
            rate_bps: 0,
            eta_s: None,
            aborting: false,
            result: None,
            copies: Vec::new(),
        };
        let v: Value = serde_json::from_slice(&event_body(&info)).unwrap();
        assert_eq!(v["method"], format!("|jobs|status|{id}"));
        assert!(v.get("id").is_none(), "a notification has no id");
        let p = &v["params"];
        assert_eq!(p["id"], id.as_str());
        assert_eq!(p["status"], "failed");
        assert_eq!(p["job_type"], "storage");
        assert_eq!(p["progress"], 42.0);
        assert_eq!(p["error"]["code"], 201);
        assert!(p["notify_time"].as_u64().unwrap() > i32::MAX as u64);
    }
}
