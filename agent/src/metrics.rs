//! Prometheus metrics (`GET /metrics`, OpenMetrics text exposition via `prometheus-client`).
//!
//! One process-wide set, updated where things happen (job state changes in `jobs`, lease
//! acquisition in `storage::domain`, connections in `rpc::listen`, calls in the RPC middleware
//! of both transports). Every metric is an atomic or a label family behind its own short
//! read-write lock: encoding a scrape never takes the job registry's or any storage lock, so a
//! scrape cannot stall the control plane and a busy control plane cannot stall a scrape.
//!
//! Label values come from closed sets (method names of the table, job descriptions the agent
//! uses, error codes the agent sends), so hostile input cannot grow the label space: an unknown
//! method is counted as `unknown`.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sdm_proto::JobStatus;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A transport a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// HTTP/1 JSON-RPC (and `/metrics`).
    Http,
    /// A WebSocket upgraded from HTTP.
    WebSocket,
    /// STOMP 1.2 (VDSM's dialect).
    Stomp,
}

impl Dialect {
    fn as_str(self) -> &'static str {
        match self {
            Dialect::Http => "http",
            Dialect::WebSocket => "websocket",
            Dialect::Stomp => "stomp",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    r#type: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialectLabel {
    dialect: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: &'static str,
    code: i64,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

fn duration_histogram() -> Histogram {
    // 10 ms .. about 45 h.
    Histogram::new(exponential_buckets(0.01, 4.0, 13))
}

/// Every metric of the agent.
struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    jobs_finished: Family<JobLabels, Counter>,
    job_duration: Family<TypeLabel, Histogram, fn() -> Histogram>,
    bytes: Family<OpLabel, Counter>,
    lease_acquire: Histogram,
    lease_failures: Family<ReasonLabel, Counter>,
    connections: Family<DialectLabel, Gauge>,
    connections_accepted: Family<DialectLabel, Counter>,
    rpc_calls: Family<CallLabels, Counter>,
    rpc_errors: Family<ErrorLabels, Counter>,
    io_backend: Family<BackendLabel, Gauge>,
    events_sent: Counter,
    stomp_dropped: Family<ReasonLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Method names a label may carry: the table's, the subscription's, nothing else.
static METHODS: LazyLock<HashMap<&'static str, ()>> = LazyLock::new(|| {
    sdm_proto::methods()
        .iter()
        .map(|m| (m.name, ()))
        .chain([("Job.subscribe", ()), ("Job.unsubscribe", ())])
        .collect()
});

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("sdm");
        let m = Metrics {
            registry: Registry::default(),
            jobs: Family::default(),
            jobs_finished: Family::default(),
            job_duration: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            lease_acquire: Histogram::new(exponential_buckets(0.0005, 4.0, 10)),
            lease_failures: Family::default(),
            connections: Family::default(),
            connections_accepted: Family::default(),
            rpc_calls: Family::default(),
            rpc_errors: Family::default(),
            io_backend: Family::default(),
            events_sent: Counter::default(),
            stomp_dropped: Family::default(),
        };
        r.register(
            "jobs",
            "Jobs in the registry by type (description) and state",
            m.jobs.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs that ended, by type and final state",
            m.jobs_finished.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Time from a job's start to its end, by type",
            m.job_duration.clone(),
        );
        r.register(
            "bytes",
            "Bytes processed by finished jobs: copied, wiped or checksummed",
            m.bytes.clone(),
        );
        r.register(
            "lease_acquire_seconds",
            "Time to acquire a volume lease (successful or not)",
            m.lease_acquire.clone(),
        );
        r.register(
            "lease_acquire_failures",
            "Volume leases that could not be acquired, by reason",
            m.lease_failures.clone(),
        );
        r.register(
            "connections",
            "Open client connections by dialect",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted, by dialect",
            m.connections_accepted.clone(),
        );
        r.register(
            "rpc_calls",
            "JSON-RPC calls by method and transport",
            m.rpc_calls.clone(),
        );
        r.register(
            "rpc_errors",
            "JSON-RPC calls answered with an error, by method, code and transport",
            m.rpc_errors.clone(),
        );
        r.register(
            "io_backend",
            "The data path's backend in use (1 for the one in use)",
            m.io_backend.clone(),
        );
        r.register(
            "stomp_events_sent",
            "Job events delivered as STOMP MESSAGE frames",
            m.events_sent.clone(),
        );
        r.register(
            "stomp_connections_dropped",
            "STOMP connections closed by the agent, by reason",
            m.stomp_dropped.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

/// The OpenMetrics text of every metric.
pub fn encode() -> String {
    let mut s = String::with_capacity(8192);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &METRICS.registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    s
}

/// The label of a job description: the agent's own descriptions, or "other".
fn job_type(description: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "copy_data",
        "update_volume",
        "checksum",
        "move_image",
        "delete_image",
        "create_volume",
        "gc_wipe",
        "fix_leftover",
        "fix_orphan",
        "fix_illegal_volume",
        "fix_size",
    ];
    KNOWN
        .iter()
        .find(|k| **k == description)
        .copied()
        .unwrap_or("other")
}

fn state(s: JobStatus) -> &'static str {
    s.as_str()
}

/// A job changed state: `from` None = registered, `to` None = removed from the registry.
pub fn job_state(description: &str, from: Option<JobStatus>, to: Option<JobStatus>) {
    let t = job_type(description);
    if let Some(f) = from {
        METRICS
            .jobs
            .get_or_create(&JobLabels {
                r#type: t,
                state: state(f),
            })
            .dec();
    }
    if let Some(n) = to {
        METRICS
            .jobs
            .get_or_create(&JobLabels {
                r#type: t,
                state: state(n),
            })
            .inc();
    }
}

/// A job ended in `status` after running `ran` (None: it never ran) and processing `bytes`.
pub fn job_finished(description: &str, status: JobStatus, ran: Option<Duration>, bytes: u64) {
    let t = job_type(description);
    METRICS
        .jobs_finished
        .get_or_create(&JobLabels {
            r#type: t,
            state: state(status),
        })
        .inc();
    if let Some(d) = ran {
        METRICS
            .job_duration
            .get_or_create(&TypeLabel { r#type: t })
            .observe(d.as_secs_f64());
    }
    let op = match t {
        "copy_data" | "move_image" => Some("copied"),
        "delete_image" | "gc_wipe" | "fix_leftover" => Some("wiped"),
        "checksum" => Some("checksummed"),
        _ => None,
    };
    if let (Some(op), true) = (op, bytes > 0) {
        METRICS.bytes.get_or_create(&OpLabel { op }).inc_by(bytes);
    }
}

/// A volume lease acquisition took `took`; `failure` names why it failed.
pub fn lease_acquired(took: Duration, failure: Option<&'static str>) {
    METRICS.lease_acquire.observe(took.as_secs_f64());
    if let Some(reason) = failure {
        METRICS
            .lease_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The label of why a lease could not be acquired.
pub fn lease_failure(kind: sdm_lease::LeaseErrorKind) -> &'static str {
    use sdm_lease::LeaseErrorKind as K;
    match kind {
        K::Busy => "busy",
        K::NotFound => "not_found",
        K::Daemon => "daemon",
        K::Io => "io",
        K::Invalid => "invalid",
        K::Lost => "lost",
        K::Unavailable => "unavailable",
    }
}

/// Counts an open connection of `dialect` until dropped; [`ConnectionGauge::switch`] moves it
/// to another dialect (an HTTP connection upgraded to a WebSocket).
#[derive(Debug)]
pub struct ConnectionGauge(Dialect);

impl ConnectionGauge {
    /// A connection detected as `dialect`.
    pub fn new(dialect: Dialect) -> ConnectionGauge {
        let l = DialectLabel {
            dialect: dialect.as_str(),
        };
        METRICS.connections.get_or_create(&l).inc();
        METRICS.connections_accepted.get_or_create(&l).inc();
        ConnectionGauge(dialect)
    }

    /// The connection now speaks `dialect`.
    pub fn switch(&mut self, dialect: Dialect) {
        if dialect == self.0 {
            return;
        }
        let from = DialectLabel {
            dialect: self.0.as_str(),
        };
        METRICS.connections.get_or_create(&from).dec();
        METRICS
            .connections
            .get_or_create(&DialectLabel {
                dialect: dialect.as_str(),
            })
            .inc();
        self.0 = dialect;
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        METRICS
            .connections
            .get_or_create(&DialectLabel {
                dialect: self.0.as_str(),
            })
            .dec();
    }
}

/// The label of a method name: the table's name, or "unknown".
pub fn method_label(name: &str) -> &'static str {
    METHODS
        .get_key_value(name)
        .map(|(k, _)| *k)
        .unwrap_or("unknown")
}

/// A call of `method` over `transport` ("http", "websocket" or "stomp") was answered, with
/// `error` the error code when it failed.
pub fn rpc_call(method: &str, transport: &'static str, error: Option<i32>) {
    let method = method_label(method);
    METRICS
        .rpc_calls
        .get_or_create(&CallLabels { method, transport })
        .inc();
    if let Some(code) = error {
        METRICS
            .rpc_errors
            .get_or_create(&ErrorLabels {
                method,
                code: code.into(),
                transport,
            })
            .inc();
    }
}

/// The data path runs on `backend` ("io_uring" or "sync").
pub fn io_backend(backend: &'static str) {
    for b in ["io_uring", "sync"] {
        METRICS
            .io_backend
            .get_or_create(&BackendLabel { backend: b })
            .set(i64::from(b == backend));
    }
}

/// A job event went out as `n` MESSAGE frames.
pub fn events_sent(n: u64) {
    METRICS.events_sent.inc_by(n);
}

/// The agent closed a STOMP connection because of `reason`.
pub fn stomp_dropped(reason: &'static str) {
    METRICS
        .stomp_dropped
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("Host.getJobs"), "Host.getJobs");
        assert_eq!(method_label("Job.subscribe"), "Job.subscribe");
        assert_eq!(method_label("Evil.\u{1}x"), "unknown");
        assert_eq!(job_type("copy_data"), "copy_data");
        assert_eq!(job_type("something new"), "other");
    }

    #[test]
    fn text_names_every_family() {
        job_state("copy_data", None, Some(JobStatus::Pending));
        job_state("copy_data", Some(JobStatus::Pending), None);
        rpc_call("Host.getJobs", "http", None);
        rpc_call("Nope.nope", "stomp", Some(-32601));
        let _g = ConnectionGauge::new(Dialect::Stomp);
        io_backend("sync");
        let text = encode();
        for name in [
            "sdm_jobs{",
            "sdm_rpc_calls_total{method=\"Host.getJobs\",transport=\"http\"}",
            "sdm_rpc_errors_total{method=\"unknown\",code=\"-32601\",transport=\"stomp\"}",
            "sdm_connections{dialect=\"stomp\"}",
            "sdm_io_backend{backend=\"sync\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
