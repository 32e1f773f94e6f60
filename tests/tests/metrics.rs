//! `GET /metrics` of a real agent, parsed by the Prometheus project's own OpenMetrics parser
//! (`prometheus_client` in the venv `scripts/stomp-venv` makes): every family the issue asks
//! for is there, counters move as jobs run and calls are made over both transports, gauges
//! follow the jobs and connections of the moment, and a scrape answers at once while a copy is
//! running and its volumes are locked.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sdm_client::{SdmApiClient, Via};
use sdm_proto::{Flag, VolumeFormat};
use sdm_tests::stomp_py::venv_python;
use sdm_tests::*;

/// `(name, sorted labels)` → value, of one scrape.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scrape(addr: std::net::SocketAddr, python: &std::path::Path) -> (Samples, String) {
    let (status, text) = raw_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let mut child = Command::new(python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(String, BTreeMap<String, String>, f64, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    let samples = parsed
        .into_iter()
        .map(|(n, l, v, _)| ((n, l.into_iter().collect()), v))
        .collect();
    (samples, text)
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    s.get(&(name.to_string(), l)).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_jobs_run() {
    let python = match venv_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP metrics_parse_and_move_as_jobs_run: {why}");
            return;
        }
    };
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd, _, _, _) = default_domains(&c).await;
    let (before, text) = scrape(agent.addr, &python);
    for family in [
        "sdm_io_backend",
        "sdm_connections",
        "sdm_connections_accepted_total",
    ] {
        assert!(
            before.keys().any(|(n, _)| n == family),
            "{family} missing:\n{text}"
        );
    }
    let backends = get(&before, "sdm_io_backend", &[("backend", "io_uring")])
        + get(&before, "sdm_io_backend", &[("backend", "sync")]);
    assert_eq!(backends, 1.0, "exactly one io backend is in use:\n{text}");

    // A STOMP session stays open while the scrapes run.
    let mut stomp = std::net::TcpStream::connect(agent.addr).unwrap();
    stomp
        .write_all(b"CONNECT\naccept-version:1.2\n\n\0")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // A copy slowed down to take a few seconds, scraped while it runs.
    let size = 8u64 << 20;
    let src = new_volume(&c, &sd, size, VolumeFormat::Raw).await;
    let dst = new_volume(&c, &sd, size, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, size as usize, 3);
    let job = copy_volume(&c, &src, &dst, Some(0), Some(4 << 20)).await;
    wait_running(&c, &job).await;
    let t = Instant::now();
    let (during, text) = scrape(agent.addr, &python);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a scrape took {:?} while a job ran",
        t.elapsed()
    );
    assert_eq!(
        get(
            &during,
            "sdm_jobs",
            &[("type", "copy_data"), ("state", "running")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        get(&during, "sdm_connections", &[("dialect", "stomp")]),
        1.0,
        "{text}"
    );
    assert!(get(&during, "sdm_connections", &[("dialect", "http")]) >= 1.0);
    assert_eq!(wait_job(&c, &job).await.status, sdm_proto::JobStatus::Done);

    // A checksum, a wiped delete and a refused call.
    let sum = start_checksum(&c, &sd, &dst.img, &dst.vol).await;
    wait_job(&c, &sum).await;
    let del = c
        .api()
        .delete_image(
            src.img.clone(),
            sd.clone(),
            Some(Flag(true)),
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    wait_job(&c, &del).await;
    let bad = raw_call(
        agent.addr,
        "Volume.getInfo",
        serde_json::json!({"sd_id": "x"}),
    );
    assert_eq!(error_code(&bad), 1000);

    let (after, text) = scrape(agent.addr, &python);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };
    assert_eq!(
        delta(
            "sdm_rpc_calls_total",
            &[("method", "SDM.copy_data"), ("transport", "http")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "sdm_rpc_errors_total",
            &[
                ("method", "Volume.getInfo"),
                ("code", "1000"),
                ("transport", "http")
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "sdm_jobs_finished_total",
            &[("type", "copy_data"), ("state", "done")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "sdm_jobs",
            &[("type", "copy_data"), ("state", "running")]
        ),
        0.0
    );
    assert_eq!(
        get(
            &after,
            "sdm_jobs",
            &[("type", "copy_data"), ("state", "done")]
        ),
        1.0
    );
    assert_eq!(
        delta("sdm_job_duration_seconds_count", &[("type", "copy_data")]),
        1.0
    );
    assert!(
        get(
            &after,
            "sdm_job_duration_seconds_sum",
            &[("type", "copy_data")]
        ) >= 1.0,
        "the throttled copy took over a second:\n{text}"
    );
    assert!(
        delta("sdm_bytes_total", &[("op", "copied")]) >= size as f64,
        "{text}"
    );
    assert!(
        delta("sdm_bytes_total", &[("op", "checksummed")]) >= size as f64,
        "{text}"
    );
    assert!(
        delta("sdm_bytes_total", &[("op", "wiped")]) >= size as f64,
        "{text}"
    );
    assert!(
        delta("sdm_lease_acquire_seconds_count", &[]) >= 2.0,
        "{text}"
    );
    assert_eq!(
        delta("sdm_connections_accepted_total", &[("dialect", "stomp")]),
        1.0
    );
    drop(stomp);
}
