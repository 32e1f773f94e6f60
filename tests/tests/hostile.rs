//! Hostile input through the real server (issue 8, part 4): requests generated from the wire
//! API for every field of every method, HTTP and WebSocket abuse, IDs of other domains, links
//! planted in a domain, slow-loris and idle connections. Each request must get a coded error
//! (or a clean close); the agent must stay up, keep its memory bounded, and must not create,
//! open for writing or delete anything outside its attached domains: a file-system state of the
//! test's whole temporary root (inode, size, times, content) before and after, an inotify watch
//! over it, and the agent's own fd table are the witnesses.
//!
//! Quick form in `cargo test`; the full form with `SDM_FULL=1` (see docs/reliability.md).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sdm_tests::hostile::*;
use sdm_tests::*;
use serde_json::{json, Value};

/// Ceiling for the agent's resident memory during the hostile suites (issue 8: 128 MiB).
const RSS_LIMIT: u64 = 128 << 20;

/// A test bed: an agent whose state directory and a sentinel directory share one temporary
/// root, so that one file-system state covers everything the agent could reach by mistake.
struct Bed {
    root: PathBuf,
    agent: AgentProc,
    sentinel: PathBuf,
    targets: Targets,
    api: Api,
    known: BTreeMap<i64, String>,
    _tmp: tempfile::TempDir,
}

impl Bed {
    fn start(config: Option<String>) -> Bed {
        let tmp = tempfile::Builder::new()
            .prefix("sdm-hostile-")
            .tempdir()
            .unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let sentinel = root.join("sentinel");
        make_sentinel(&sentinel);
        let agent = AgentProc::start(AgentOptions {
            state_dir: Some(root.join("state")),
            config,
            ..Default::default()
        });
        let domain_root = root.join("state").join("domains");
        std::fs::create_dir_all(&domain_root).unwrap();
        // A link inside the domain root that leads out of it.
        std::os::unix::fs::symlink(&sentinel, domain_root.join("evil-link")).unwrap();
        let api = Api::load();
        let known = api.error_codes();
        Bed {
            targets: Targets {
                sentinel: sentinel.clone(),
                domain_root,
            },
            root,
            agent,
            sentinel,
            api,
            known,
            _tmp: tmp,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.agent.addr
    }

    fn pid(&self) -> u32 {
        self.agent.pid()
    }

    /// The directories of the attached domains.
    fn domain_dirs(&self) -> Vec<PathBuf> {
        let r = raw_call(self.addr(), "StorageDomain.list", json!({}));
        r["result"]
            .as_array()
            .expect("domain list")
            .iter()
            .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
            .collect()
    }

    /// Panics with the agent log if the agent does not answer Host.getCapabilities.
    fn alive(&self, after: &str) {
        let r =
            std::panic::catch_unwind(|| raw_call(self.addr(), "Host.getCapabilities", json!({})));
        match r {
            Ok(v) if v.get("result").is_some() => {}
            other => panic!(
                "AGENT BUG: the agent stopped answering after {after}: {other:?}; exited: {}",
                !Path::new(&format!("/proc/{}", self.pid())).exists()
            ),
        }
    }

    /// Files the agent may hold open for writing: its log and the attached domains.
    fn allowed_writes(&self) -> Vec<PathBuf> {
        let mut a = self.domain_dirs();
        a.push(self.agent.state_dir.join("agent.log"));
        a
    }
}

/// The sentinel: files a traversal would reach, a fake domain, a leftover directory.
fn make_sentinel(dir: &Path) {
    let u = fresh_uuid();
    std::fs::create_dir_all(dir.join(&u).join("dom_md")).unwrap();
    std::fs::create_dir_all(dir.join(&u).join("images").join(&u)).unwrap();
    std::fs::write(dir.join(&u).join("dom_md/metadata"), "CLASS=Data\nEOF\n").unwrap();
    std::fs::write(
        dir.join(&u).join("images").join(&u).join(&u),
        vec![7u8; 4096],
    )
    .unwrap();
    std::fs::write(
        dir.join(&u)
            .join("images")
            .join(&u)
            .join(format!("{u}.meta")),
        "LEGALITY=LEGAL\nEOF\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join(format!("_remove_me_{u}"))).unwrap();
    std::fs::write(
        dir.join(format!("_remove_me_{u}")).join(&u),
        vec![1u8; 4096],
    )
    .unwrap();
    std::fs::File::create(dir.join("victim")).unwrap();
    write_pattern(&dir.join("victim"), 0, 64 * 1024, 42);
    std::fs::write(dir.join("readonly"), "do not touch\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("readonly"), std::fs::Permissions::from_mode(0o444)).unwrap();
}

/// Events of `w` that are not the agent's log, its state file, or under `except`.
fn foreign_events(w: &mut Watch, except: &[PathBuf]) -> Vec<String> {
    w.events()
        .into_iter()
        .filter(|(p, _)| !p.ends_with("agent.log") && !except.iter().any(|e| p.starts_with(e)))
        .map(|(p, ev)| format!("{ev} {}", p.display()))
        .collect()
}

#[derive(Default)]
struct Tally {
    sent: BTreeMap<Kind, usize>,
    codes: BTreeMap<String, usize>,
    violations: Vec<String>,
    long_messages: Vec<String>,
    peak: ProcStats,
    fds: Vec<usize>,
}

impl Tally {
    fn sample(&mut self, bed: &Bed, after: &str) {
        bed.alive(after);
        let s = proc_stats(bed.pid());
        self.peak.rss = self.peak.rss.max(s.rss);
        self.peak.hwm = self.peak.hwm.max(s.hwm);
        self.peak.fds = self.peak.fds.max(s.fds);
        self.peak.threads = self.peak.threads.max(s.threads);
        self.fds.push(s.fds);
        let w = open_for_writing_outside(bed.pid(), &bed.allowed_writes());
        assert!(
            w.is_empty(),
            "AGENT BUG: files outside the attached domains open for writing after {after}: {w:?}"
        );
    }

    fn record(&mut self, c: &Case, outcome: Result<(), String>, body: &str) {
        *self.sent.entry(c.kind).or_default() += 1;
        let code = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").map(|e| e["code"].to_string()))
            .unwrap_or_else(|| {
                if body.is_empty() {
                    "none".into()
                } else {
                    "result".into()
                }
            });
        *self.codes.entry(code).or_default() += 1;
        if let Err(e) = outcome {
            self.violations
                .push(format!("[{:?}] {}: {e}", c.kind, c.label));
        }
        if let Some(m) = error_message(body) {
            if m.len() > 4096 {
                self.long_messages.push(format!(
                    "[{:?}] {}: message of {} bytes",
                    c.kind,
                    c.label,
                    m.len()
                ));
            }
        }
    }

    fn print(&self, title: &str, elapsed: Duration) {
        let total: usize = self.sent.values().sum();
        eprintln!(
            "\n{title}: {total} requests in {:.1} s",
            elapsed.as_secs_f64()
        );
        eprintln!("| kind | requests |\n|---|---|");
        for (k, n) in &self.sent {
            eprintln!("| {k:?} | {n} |");
        }
        eprintln!("answers by error code: {:?}", self.codes);
        eprintln!(
            "agent peak: RSS {:.1} MiB, high-water mark {:.1} MiB, fds {}, threads {}",
            self.peak.rss as f64 / 1048576.0,
            self.peak.hwm as f64 / 1048576.0,
            self.peak.fds,
            self.peak.threads
        );
    }
}

fn select(cases: Vec<Case>) -> Vec<Case> {
    if full() {
        cases
    } else {
        cases.into_iter().filter(|c| c.quick).collect()
    }
}

/// Every generated request over HTTP, then a share of them over one WebSocket.
#[test]
fn generated_requests_get_coded_errors_and_change_nothing() {
    let bed = Bed::start(None);
    let all = generate(&bed.api, &bed.targets);
    let total_generated = all.len();
    let cases = select(all);
    for k in Kind::ALL {
        assert!(
            cases.iter().any(|c| c.kind == k),
            "no {k:?} case in this form"
        );
    }
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    for m in bed.api.methods() {
        assert!(
            cases.iter().filter(|c| c.method == m).count() >= 8,
            "{m} has too few cases"
        );
    }

    let before = fs_state(&bed.root, &["agent.log"]);
    let mut watch = Watch::new(std::slice::from_ref(&bed.root));
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", bed.pid())).unwrap();
    let cwd_before: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();

    // HTTP.
    let t = Instant::now();
    let mut tally = Tally::default();
    tally.sample(&bed, "start");
    for (i, c) in cases.iter().enumerate() {
        let (status, body) = raw_post(bed.addr(), &c.body);
        let outcome = check(&c.expect, status, &body, &bed.known);
        tally.record(c, outcome, &body);
        if i % 100 == 99 {
            tally.sample(&bed, &c.label);
        }
    }
    tally.sample(&bed, "the HTTP requests");
    tally.print(
        &format!("hostile HTTP requests ({total_generated} generated)"),
        t.elapsed(),
    );

    // WebSocket: every third case (all in the full form), one connection, reconnecting when
    // the server closes it.
    let t = Instant::now();
    let mut wtally = Tally::default();
    let mut ws = Ws::connect(bed.addr()).expect("websocket");
    let mut closes = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        if !full() && i % 3 != 0 {
            continue;
        }
        if c.method.is_empty() {
            // Envelope, batch and garbage: each on a connection of its own, since their
            // answers (if any) carry no id of ours.
            let mut one = Ws::connect(bed.addr()).expect("websocket");
            let r = if c.expect == Expect::NoAnswer {
                match one
                    .send_text(&c.body)
                    .map(|_| one.recv(Duration::from_millis(500)))
                {
                    Err(e) => Err(e.to_string()),
                    Ok(Ok(f)) if f.opcode == 1 => {
                        Ok(String::from_utf8_lossy(&f.payload).into_owned())
                    }
                    Ok(Ok(f)) if f.opcode == 8 => {
                        Err(format!("closed {:?}", close_reason(&f.payload)))
                    }
                    Ok(_) => Ok(String::new()),
                }
            } else {
                one.call(&c.body, None, Duration::from_secs(30))
            };
            match r {
                Ok(body) => {
                    let outcome = check(&c.expect, 200, &body, &bed.known);
                    wtally.record(c, outcome, &body);
                }
                Err(e) => {
                    closes.push(format!("{}: {e}", c.label));
                    wtally.record(c, Ok(()), "");
                }
            }
            continue;
        }
        let expect = if c.method == "Job.subscribe" {
            // Over WebSocket a subscription decodes its parameters like any call.
            let v: Value = serde_json::from_slice(&c.body).unwrap_or(json!({}));
            match v.get("params") {
                Some(p) if p.is_object() => match decode(&c.method, &p.to_string()) {
                    Ok(()) => Expect::Answer,
                    Err(_) => Expect::Invalid,
                },
                _ => Expect::AnyError,
            }
        } else {
            c.expect.clone()
        };
        let id = 1000 + i as u64;
        match ws.call(&with_id(&c.body, id), Some(id), Duration::from_secs(30)) {
            Ok(body) => {
                let outcome = check(&expect, 200, &body, &bed.known);
                wtally.record(c, outcome, &body);
            }
            Err(e) => {
                // A clean close is an acceptable answer to garbage and to huge messages.
                let acceptable = matches!(c.kind, Kind::Garbage | Kind::Huge | Kind::Nested)
                    || c.body.len() > 512 * 1024;
                closes.push(format!("{}: {e}", c.label));
                wtally.record(
                    c,
                    if acceptable {
                        Ok(())
                    } else {
                        Err(format!("connection lost: {e}"))
                    },
                    "",
                );
                ws = Ws::connect(bed.addr()).expect("websocket after a close");
            }
        }
        if i % 100 == 99 {
            wtally.sample(&bed, &c.label);
        }
    }
    drop(ws);
    wtally.sample(&bed, "the WebSocket requests");
    wtally.print("hostile WebSocket requests", t.elapsed());
    eprintln!("WebSocket closes by the server: {}", closes.len());
    for c in closes.iter().take(20) {
        eprintln!("  {c}");
    }

    // Nothing outside, and nothing inside the domains either (every id was unknown).
    std::thread::sleep(Duration::from_millis(300));
    let after = fs_state(&bed.root, &["agent.log"]);
    let diff = fs_diff(&before, &after);
    let events = foreign_events(&mut watch, &[]);
    let cwd_after: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !cwd_before.contains(n))
        .collect();
    let jobs = raw_call(bed.addr(), "Host.getJobs", json!({}));
    eprintln!(
        "jobs registered by decodable requests: {}",
        jobs["result"].as_object().map(|m| m.len()).unwrap_or(0)
    );

    let mut problems = Vec::new();
    problems.extend(tally.violations.iter().map(|v| format!("HTTP {v}")));
    problems.extend(wtally.violations.iter().map(|v| format!("WS {v}")));
    let mut by_method: BTreeMap<String, usize> = BTreeMap::new();
    for p in &problems {
        let key = p.split(':').next().unwrap_or("").to_string();
        let key = key
            .rsplit_once(' ')
            .map(|(a, _)| a.to_string())
            .unwrap_or(key);
        *by_method.entry(key).or_default() += 1;
    }
    eprintln!("violations by transport, kind and method: {by_method:#?}");
    for p in problems.iter().take(10) {
        eprintln!("VIOLATION {p}");
    }
    let longest = tally.long_messages.len() + wtally.long_messages.len();
    eprintln!("error messages over 4 KiB: {longest}");
    for m in tally.long_messages.iter().take(5) {
        eprintln!("LONG MESSAGE {m}");
    }
    assert!(diff.is_empty(), "AGENT BUG: files changed: {diff:#?}");
    assert!(events.is_empty(), "AGENT BUG: write events: {events:#?}");
    assert!(
        cwd_after.is_empty(),
        "AGENT BUG: files created in the agent's working directory: {cwd_after:?}"
    );
    assert!(
        tally.peak.hwm.max(wtally.peak.hwm) <= RSS_LIMIT,
        "AGENT BUG: memory high-water mark {} MiB over {} MiB",
        tally.peak.hwm.max(wtally.peak.hwm) >> 20,
        RSS_LIMIT >> 20
    );
    assert!(
        problems.is_empty(),
        "AGENT BUG: {} answers broke the contract (first: {})",
        problems.len(),
        problems[0]
    );
    assert!(
        tally.long_messages.is_empty(),
        "AGENT BUG: {} error messages echo more than 4 KiB of the request (first: {})",
        tally.long_messages.len(),
        tally.long_messages[0]
    );
}

/// The decoders in-process, under random mutations of the generated requests (what `cargo
/// fuzz` does in `fuzz/`, bounded and seeded so that it runs in every test run): no panic,
/// what decodes survives a round trip, and what the guarding types accept meets their rules.
#[test]
fn decoders_survive_random_mutations() {
    let api = Api::load();
    let t = Targets {
        sentinel: PathBuf::from("/nonexistent/sentinel"),
        domain_root: PathBuf::from("/nonexistent/domains"),
    };
    let all = generate(&api, &t);
    if let Ok(dir) = std::env::var("SDM_HOSTILE_CORPUS") {
        // Seeds for `cargo fuzz` (fuzz/corpus): SDM_HOSTILE_CORPUS=fuzz/corpus.
        let quick: Vec<Case> = all.iter().filter(|c| c.quick).cloned().collect();
        let n = dump_corpus(&quick, &hostile_values(&t), Path::new(&dir), 16 * 1024);
        eprintln!("wrote {n} corpus files under {dir}");
    }
    let seeds: Vec<Vec<u8>> = all
        .into_iter()
        .filter(|c| c.body.len() <= 4096)
        .map(|c| c.body)
        .collect();
    // Valid requests too (half of the starting points), so that mutations also start from
    // what decodes.
    let valid: Vec<Vec<u8>> = api
        .methods()
        .iter()
        .map(|m| {
            let p = serde_json::to_string(&api.baseline(m)).unwrap();
            request_text(m, Some(&p), 1).into_bytes()
        })
        .collect();
    let rounds = if full() { 2_000_000 } else { 30_000 };
    let seed = std::env::var("SDM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5d3_2026u64);
    let mut rng = Rng::new(seed);
    let (mut parsed, mut decoded) = (0usize, 0usize);
    let t0 = Instant::now();
    for _ in 0..rounds {
        let a = if rng.below(2) == 0 {
            &valid[rng.below(valid.len())]
        } else {
            &seeds[rng.below(seeds.len())]
        };
        let b = &seeds[rng.below(seeds.len())];
        let mut input = mutate(&mut rng, a, b);
        for _ in 0..rng.below(3) {
            input = mutate(&mut rng, &input, b);
        }
        let r = std::panic::catch_unwind(|| -> Result<(bool, bool), String> {
            let Ok(v) = serde_json::from_slice::<Value>(&input) else {
                return Ok((false, false));
            };
            value_invariants(&v)?;
            let (Some(m), Some(p)) = (v["method"].as_str(), v.get("params")) else {
                return Ok((true, false));
            };
            Ok((true, roundtrip(m, &p.to_string())?))
        });
        match r {
            Ok(Ok((p, d))) => {
                parsed += p as usize;
                decoded += d as usize;
            }
            Ok(Err(e)) => panic!(
                "AGENT BUG: decoder contract broken by {:?}: {e}",
                String::from_utf8_lossy(&input)
            ),
            Err(_) => panic!(
                "AGENT BUG: a decoder panicked on {:?}",
                String::from_utf8_lossy(&input)
            ),
        }
    }
    eprintln!(
        "{rounds} mutated requests (seed {seed:#x}) in {:.1} s: {parsed} were JSON, {decoded} decoded as parameters",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        decoded > rounds / 100,
        "too few mutations decode ({decoded}): the mutator is too rough"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP-level abuse

enum Want {
    /// An HTTP status in this range.
    Status(u16, u16),
    /// A 4xx status, a JSON-RPC error (whatever the status), or the connection closed
    /// without an answer.
    Refused,
    /// Served (200) or refused.
    Either,
    /// Refused, or left open for the server's first-request timeout (30 s) to close.
    RefusedOrOpen,
}

fn refused(status: u16, body: &str, closed: bool) -> bool {
    let rpc_error = serde_json::from_str::<Value>(body).is_ok_and(|v| v["error"]["code"].is_i64());
    (400..500).contains(&status) || rpc_error || (status == 0 && closed)
}

#[test]
fn http_abuse_is_refused_cleanly() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let before = fs_state(&bed.root, &["agent.log"]);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"Host.getCapabilities"}"#;
    let post = |headers: &str, body: &[u8]| {
        let mut v = format!("POST / HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").into_bytes();
        v.extend_from_slice(body);
        v
    };
    let json_len = |n: usize| {
        format!("Content-Type: application/json\r\nContent-Length: {n}\r\nConnection: close\r\n")
    };
    let big = vec![b' '; 2 << 20];
    let mut chunked_big = Vec::new();
    for _ in 0..20 {
        chunked_big.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked_big.extend(std::iter::repeat_n(b' ', 64 * 1024));
        chunked_big.extend_from_slice(b"\r\n");
    }
    chunked_big.extend_from_slice(b"0\r\n\r\n");
    let pipelined: Vec<u8> = (0..50)
        .flat_map(|i| {
            let close = if i == 49 { "Connection: close\r\n" } else { "" };
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("GET /", format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes(), Want::Refused),
        ("PUT with JSON", format!("PUT / HTTP/1.1\r\nHost: {addr}\r\n{}\r\n{body}", json_len(body.len())).into_bytes(), Want::Refused),
        ("DELETE", format!("DELETE / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes(), Want::Refused),
        ("text/plain", post(&format!("Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n", body.len()), body.as_bytes()), Want::Refused),
        ("no content type", post(&format!("Content-Length: {}\r\nConnection: close\r\n", body.len()), body.as_bytes()), Want::Refused),
        ("2 MiB body", post(&json_len(big.len()), &big), Want::Refused),
        ("1 MiB + 1 body", post(&json_len((1 << 20) + 1), &big[..(1 << 20) + 1]), Want::Refused),
        ("declares 100 MiB, sends 64 KiB", post(&json_len(100 << 20), &big[..64 * 1024]), Want::Refused),
        ("Content-Length 2^64", post("Content-Type: application/json\r\nContent-Length: 18446744073709551616\r\n", body.as_bytes()), Want::Refused),
        ("Content-Length -1", post("Content-Type: application/json\r\nContent-Length: -1\r\n", body.as_bytes()), Want::Refused),
        ("two Content-Lengths", post(&format!("Content-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 5\r\n", body.len()), body.as_bytes()), Want::Refused),
        ("chunked, valid", post("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n", format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes()), Want::Status(200, 200)),
        ("chunked, 1.25 MiB", post("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n", &chunked_big), Want::Refused),
        ("chunk size 2^72", post("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\nxx\r\n0\r\n\r\n"), Want::Refused),
        ("chunked and Content-Length", post(&format!("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\nConnection: close\r\n", body.len() + 8), format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes()), Want::Either),
        ("200 kB header", post(&format!("X-Junk: {}\r\n{}", "j".repeat(200_000), json_len(body.len())), body.as_bytes()), Want::Either),
        ("1 MB header", post(&format!("X-Junk: {}\r\n{}", "j".repeat(1_000_000), json_len(body.len())), body.as_bytes()), Want::Refused),
        ("500 headers", post(&format!("{}{}", (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>(), json_len(body.len())), body.as_bytes()), Want::Refused),
        ("100 kB URI", format!("POST /{} HTTP/1.1\r\nHost: x\r\n{}\r\n{body}", "u".repeat(100_000), json_len(body.len())).into_bytes(), Want::Refused),
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), Want::Refused),
        ("binary junk", (0..4096u32).map(|i| (i * 7 % 256) as u8).collect(), Want::Refused),
        ("HTTP/2 preface then junk", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00junkjunkjunkjunkjunk".to_vec(), Want::RefusedOrOpen),
        ("NUL in a header", post(&format!("X-A: a\0b\r\n{}", json_len(body.len())), body.as_bytes()), Want::Refused),
        ("Expect: 100-continue, 2 MiB", post(&format!("Expect: 100-continue\r\n{}", json_len(2 << 20)), b""), Want::Refused),
        ("bad WebSocket upgrade", format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\nConnection: close\r\n\r\n").into_bytes(), Want::Either),
        ("path traversal in the URI", format!("POST /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n{}\r\n{body}", json_len(body.len())).into_bytes(), Want::Either),
        ("gzip body that is not gzip", post(&format!("Content-Encoding: gzip\r\n{}", json_len(body.len())), body.as_bytes()), Want::Status(200, 499)),
        ("HTTP/1.0", format!("POST / HTTP/1.0\r\n{}\r\n{body}", json_len(body.len())).into_bytes(), Want::Status(200, 200)),
        ("50 pipelined requests", pipelined, Want::Status(200, 200)),
    ];
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (label, bytes, want) in &cases {
        let t = Instant::now();
        let (status, resp, closed) = raw_http(addr, bytes, Duration::from_secs(5));
        let ok = match want {
            Want::Status(lo, hi) => (*lo..=*hi).contains(&status),
            Want::Refused => refused(status, &resp, closed),
            Want::Either => status == 200 || refused(status, &resp, closed),
            Want::RefusedOrOpen => refused(status, &resp, closed) || (status == 0 && !closed),
        };
        let what = if status == 0 {
            if closed {
                "closed, no answer".to_string()
            } else {
                "no answer within 5 s, still open".into()
            }
        } else {
            format!(
                "HTTP {status} {}",
                short(resp.trim()).chars().take(60).collect::<String>()
            )
        };
        rows.push(format!(
            "| {label} | {what} | {} ms |",
            t.elapsed().as_millis()
        ));
        if !ok {
            bad.push(format!("{label}: {what}"));
        }
        bed.alive(label);
    }
    let s = proc_stats(bed.pid());
    eprintln!("\n| HTTP abuse | agent's answer | time |\n|---|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    eprintln!(
        "agent after: RSS {:.1} MiB, high-water mark {:.1} MiB, fds {}",
        s.rss as f64 / 1048576.0,
        s.hwm as f64 / 1048576.0,
        s.fds
    );
    let diff = fs_diff(&before, &fs_state(&bed.root, &["agent.log"]));
    assert!(diff.is_empty(), "AGENT BUG: files changed: {diff:#?}");
    assert!(
        s.hwm <= RSS_LIMIT,
        "AGENT BUG: high-water mark {} MiB",
        s.hwm >> 20
    );
    assert!(bad.is_empty(), "AGENT BUG: not refused cleanly: {bad:#?}");
}

#[test]
fn pipelined_requests_are_all_answered() {
    let bed = Bed::start(None);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"Host.getStats"}"#;
    let mut s = TcpStream::connect(bed.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    for i in 0..200 {
        let close = if i == 199 {
            "Connection: close\r\n"
        } else {
            ""
        };
        all.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    s.write_all(&all).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(
        text.matches("HTTP/1.1 200").count(),
        200,
        "{}",
        short(&text)
    );
    bed.alive("pipelining");
}

// ---------------------------------------------------------------------------------------------
// WebSocket abuse

#[test]
fn websocket_abuse_gets_errors_or_a_clean_close() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let caps = br#"{"jsonrpc":"2.0","id":1,"method":"Host.getCapabilities"}"#;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    // What became of the connection after the abuse.
    fn outcome(ws: &mut Ws, wait: Duration) -> String {
        let mut r = ws.recv(wait);
        while matches!(&r, Ok(f) if f.opcode == 10) {
            r = ws.recv(wait);
        }
        match r {
            Ok(f) if f.opcode == 8 => {
                let (code, why) = close_reason(&f.payload);
                format!("closed ({code} {why})")
            }
            Ok(f) if f.opcode == 1 => {
                let t = String::from_utf8_lossy(&f.payload).into_owned();
                match serde_json::from_str::<Value>(&t) {
                    Ok(v) if v.get("error").is_some() => format!("error {}", v["error"]["code"]),
                    Ok(v) if v.get("result").is_some() => "answered".into(),
                    _ => format!("text {}", short(&t)),
                }
            }
            Ok(f) => format!("frame opcode {}", f.opcode),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "closed (TCP)".into(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset".into(),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                "no answer (open)".into()
            }
            Err(e) => format!("error {e}"),
        }
    }
    type Abuse = Box<dyn Fn(&mut Ws) -> std::io::Result<()>>;
    let big = vec![b'a'; (1 << 20) + 100];
    let cases: Vec<(&str, Abuse, &[&str])> = vec![
        (
            "unmasked text frame",
            Box::new(|w| w.send_frame(true, 1, caps, false)),
            &["closed", "reset", "answered"],
        ),
        (
            "binary frame with JSON",
            Box::new(|w| w.send_frame(true, 2, caps, true)),
            &["answered", "closed", "error"],
        ),
        (
            "text frame, invalid UTF-8",
            Box::new(|w| w.send_frame(true, 1, &[0xff, 0xfe, 0x7b], true)),
            &["closed", "reset", "error"],
        ),
        (
            "fragmented request",
            Box::new(|w| {
                w.send_frame(false, 1, &caps[..10], true)?;
                w.send_frame(true, 0, &caps[10..], true)
            }),
            &["answered"],
        ),
        (
            "1000 fragments",
            Box::new(|w| {
                for i in 0..1000 {
                    let fin = i == 999;
                    let op = if i == 0 { 1 } else { 0 };
                    w.send_frame(fin, op, if fin { caps } else { b" " }, true)?;
                }
                Ok(())
            }),
            &["answered", "error", "closed"],
        ),
        (
            "message over the size limit",
            Box::new(move |w| w.send_frame(true, 1, &big, true)),
            &["closed", "reset", "error"],
        ),
        (
            "declared 2^62-byte frame",
            Box::new(|w| {
                w.s.write_all(&[0x81, 0xff])?;
                w.s.write_all(&(1u64 << 62).to_be_bytes())?;
                w.s.write_all(&[0, 0, 0, 0, 1, 2, 3])
            }),
            &["closed", "reset"],
        ),
        (
            "continuation without a start",
            Box::new(|w| w.send_frame(true, 0, caps, true)),
            &["closed", "reset", "error"],
        ),
        (
            "reserved opcode 3",
            Box::new(|w| w.send_frame(true, 3, b"x", true)),
            &["closed", "reset"],
        ),
        (
            "RSV bits set",
            Box::new(|w| w.s.write_all(&[0xf1, 0x81, 1, 2, 3, 4, b'x' ^ 1])),
            &["closed", "reset"],
        ),
        (
            "control frame of 126 bytes",
            Box::new(|w| w.send_frame(true, 9, &[0u8; 126], true)),
            &["closed", "reset"],
        ),
        (
            "fragmented ping",
            Box::new(|w| w.send_frame(false, 9, b"p", true)),
            &["closed", "reset"],
        ),
        (
            "close with code 999",
            Box::new(|w| w.send_frame(true, 8, &[0x03, 0xe7], true)),
            &["closed", "reset"],
        ),
        (
            "10 000 pings",
            Box::new(|w| {
                for _ in 0..10_000 {
                    w.send_frame(true, 9, b"ping", true)?;
                }
                w.send_text(caps)
            }),
            &["answered", "closed"],
        ),
        (
            "Job.subscribe bad id",
            Box::new(|w| {
                w.send_text(br#"{"jsonrpc":"2.0","id":1,"method":"Job.subscribe","params":{"job_id":"../../x"}}"#)
            }),
            &["error 1000"],
        ),
        (
            "Job.subscribe unknown job",
            Box::new(|w| {
                w.send_text(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"Job.subscribe","params":{{"job_id":"{}"}}}}"#, fresh_uuid()).as_bytes())
            }),
            &["error 66"],
        ),
        (
            "Job.unsubscribe of nothing",
            Box::new(|w| {
                w.send_text(
                    br#"{"jsonrpc":"2.0","id":1,"method":"Job.unsubscribe","params":["nope"]}"#,
                )
            }),
            &["answered", "error"],
        ),
        (
            "Job.unsubscribe 1 MB id",
            Box::new(|w| {
                w.send_text(
                    format!(
                        r#"{{"jsonrpc":"2.0","id":1,"method":"Job.unsubscribe","params":["{}"]}}"#,
                        "s".repeat(1 << 19)
                    )
                    .as_bytes(),
                )
            }),
            &["answered", "error"],
        ),
    ];
    for (label, abuse, want) in &cases {
        let mut ws = Ws::connect(addr).expect("upgrade");
        let sent = abuse(&mut ws);
        let what = match sent {
            Err(e) => format!(
                "send failed: {e} ({})",
                outcome(&mut ws, Duration::from_secs(2))
            ),
            Ok(()) => outcome(&mut ws, Duration::from_secs(5)),
        };
        let ok = want.iter().any(|w| what.starts_with(w)) || what.starts_with("send failed");
        rows.push(format!("| {label} | {what} |"));
        if !ok {
            bad.push(format!("{label}: {what} (expected one of {want:?})"));
        }
        bed.alive(label);
    }

    eprintln!("\n| WebSocket abuse | outcome |\n|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    assert!(bad.is_empty(), "AGENT BUG: {bad:#?}");
}

// ---------------------------------------------------------------------------------------------
// IDs of other domains, and links planted inside a domain

fn create_volume(addr: SocketAddr, sd: &str, img: &str, vol: &str, mib: u64) {
    let r = raw_call(
        addr,
        "Volume.create",
        json!({"sd_id": sd, "img_id": img, "vol_id": vol, "capacity": mib << 20, "format": "RAW", "preallocate": "SPARSE"}),
    );
    // The id of the job recorded as done (VDSM's task id).
    assert!(r["result"].is_string(), "create: {r}");
}

fn wait_raw_job(addr: SocketAddr, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = raw_call(addr, "Host.getJobs", json!({"job_ids": [job]}));
        if let Some(j) = r["result"].get(job) {
            let st = j["status"].as_str().unwrap_or("");
            if st != "pending" && st != "running" {
                return j.clone();
            }
        }
        assert!(Instant::now() < deadline, "job {job} did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request's outcome: its error code, or the final state and error code of the job it
/// started.
fn outcome_of(addr: SocketAddr, method: &str, params: Value) -> String {
    let r = raw_call(addr, method, params.clone());
    if let Some(e) = r.get("error") {
        return format!("error {}", e["code"]);
    }
    let job = match method {
        "Image.move" | "Image.delete" | "StorageDomain.fix" => {
            r["result"]["uuid"].as_str().map(str::to_string)
        }
        _ => params
            .get("job_id")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    match job {
        Some(j) => {
            let info = wait_raw_job(addr, &j);
            format!(
                "job {} {}",
                info["status"].as_str().unwrap_or("?"),
                info["error"]["code"]
            )
        }
        None => format!("result {}", short(&r["result"].to_string())),
    }
}

#[test]
fn ids_of_other_domains_are_refused_and_change_nothing() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let (sd1, sd2) = (sd[0].clone(), sd[1].clone());
    // In sd1: image A with volume a; image B with volume b. In sd2: image C with volume c.
    let (img_a, vol_a, img_b, vol_b, img_c, vol_c) = (
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
        fresh_uuid(),
    );
    create_volume(addr, &sd1, &img_a, &vol_a, 4);
    create_volume(addr, &sd1, &img_b, &vol_b, 4);
    create_volume(addr, &sd2, &img_c, &vol_c, 4);
    write_pattern(
        &dirs[0].join("images").join(&img_a).join(&vol_a),
        0,
        1 << 20,
        5,
    );
    // A scratch destination whose changes are expected.
    let (img_s, vol_s) = (fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd2, &img_s, &vol_s, 4);
    let scratch = dirs[1].join("images").join(&img_s);

    let before = fs_state(&bed.root, &["agent.log"]);
    let mut watch = Watch::new(std::slice::from_ref(&bed.root));
    let ep = |s: &str, i: &str, v: &str| json!({"endpoint_type": "div", "sd_id": s, "img_id": i, "vol_id": v});
    let ep_gen = |s: &str, i: &str, v: &str, g: u64| json!({"endpoint_type": "div", "sd_id": s, "img_id": i, "vol_id": v, "generation": g});
    let fake_sd = fresh_uuid();
    let cases: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "volume of sd1 asked in sd2",
            "Volume.getInfo",
            json!({"sd_id": sd2, "img_id": img_a, "vol_id": vol_a}),
            &["error 201", "error 268"],
        ),
        (
            "volume of image A asked in image B",
            "Volume.getInfo",
            json!({"sd_id": sd1, "img_id": img_b, "vol_id": vol_a}),
            &["error 201"],
        ),
        (
            "image of sd1 listed in sd2",
            "Image.getVolumes",
            json!({"sd_id": sd2, "img_id": img_a}),
            &["error 268", "result []"],
        ),
        (
            "copy from a volume named in the wrong domain",
            "SDM.copy_data",
            json!({"job_id": fresh_uuid(), "source": ep(&sd2, &img_a, &vol_a), "destination": ep_gen(&sd2, &img_s, &vol_s, 0)}),
            &["job failed 201", "job failed 268", "error 201", "error 268"],
        ),
        (
            "copy into a volume named in the wrong image",
            "SDM.copy_data",
            json!({"job_id": fresh_uuid(), "source": ep(&sd2, &img_s, &vol_s), "destination": ep_gen(&sd1, &img_b, &vol_a, 0)}),
            &["job failed 201", "error 201"],
        ),
        (
            "copy from an unattached domain",
            "SDM.copy_data",
            json!({"job_id": fresh_uuid(), "source": ep(&fake_sd, &img_a, &vol_a), "destination": ep_gen(&sd2, &img_s, &vol_s, 0)}),
            &["job failed 358", "error 358"],
        ),
        (
            "checksum of a volume in the wrong domain",
            "Volume.checksum",
            json!({"job_id": fresh_uuid(), "sd_id": sd2, "img_id": img_a, "vol_id": vol_a}),
            &["job failed 201", "job failed 268", "error 201", "error 268"],
        ),
        (
            "update a volume in the wrong domain",
            "SDM.update_volume",
            json!({"job_id": fresh_uuid(), "vol_info": {"sd_id": sd2, "img_id": img_a, "vol_id": vol_a, "generation": 0}, "vol_attr": {"legality": "ILLEGAL"}}),
            &["job failed 201", "job failed 268", "error 201", "error 268"],
        ),
        (
            "update a volume in the wrong image",
            "SDM.update_volume",
            json!({"job_id": fresh_uuid(), "vol_info": {"sd_id": sd1, "img_id": img_b, "vol_id": vol_a, "generation": 0}, "vol_attr": {"description": "x"}}),
            &["job failed 201", "error 201"],
        ),
        (
            "delete an image in the wrong domain",
            "Image.delete",
            json!({"imageID": img_a, "storagedomainID": sd2, "postZero": true}),
            &["error 268"],
        ),
        (
            "move an image from the wrong domain",
            "Image.move",
            json!({"imageID": img_a, "storagedomainID": sd2, "dstSdUUID": sd1, "operation": 1}),
            &["error 268", "job failed 268"],
        ),
        (
            "move an image to an unattached domain",
            "Image.move",
            json!({"imageID": img_a, "storagedomainID": sd1, "dstSdUUID": fake_sd, "operation": 1}),
            &["error 358", "job failed 358"],
        ),
        (
            "COW child of a parent in another domain",
            "Volume.create",
            json!({"sd_id": sd2, "img_id": img_c, "vol_id": fresh_uuid(), "capacity": 4 << 20, "format": "COW", "preallocate": "SPARSE", "parent_vol_id": vol_a}),
            &["error 201", "error 1000"],
        ),
        (
            "fix an orphan named in another domain",
            "StorageDomain.fix",
            json!({"sd_id": sd2, "fix": {"type": "clean", "description": "x", "data": {"kind": "orphan", "img": img_a, "file": vol_a}}}),
            &[
                "error 1000",
                "job failed 201",
                "job failed 268",
                "job failed 100",
                "job failed 1000",
            ],
        ),
        (
            "fix a leftover with a traversal name",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "clean", "description": "x", "data": {"kind": "leftover", "name": format!("_remove_me_../../{}", bed.sentinel.display())}}}),
            &["error 1000"],
        ),
        (
            "fix an orphan with a traversal file",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "clean", "description": "x", "data": {"kind": "orphan", "img": img_a, "file": "../../../sentinel/victim"}}}),
            &["error 1000"],
        ),
        (
            "fix a size mismatch of a volume of another image",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "mend", "description": "x", "data": {"kind": "size_mismatch", "img": img_b, "vol": vol_a}}}),
            &[
                "job failed 201",
                "job failed 100",
                "job failed 208",
                "error 1000",
            ],
        ),
        (
            "delete an ILLEGAL volume that is LEGAL, confirmed",
            "StorageDomain.fix",
            json!({"sd_id": sd1, "fix": {"type": "mend", "description": "x", "data": {"kind": "illegal_volume", "img": img_a, "vol": vol_a, "confirm_delete": true}}}),
            &["job failed 1000", "error 1000"],
        ),
        (
            "attach a fake domain in the sentinel",
            "StorageDomain.attach",
            json!({"path": bed.sentinel.join(std::fs::read_dir(&bed.sentinel).unwrap().flatten().find(|e| e.path().join("dom_md").exists()).unwrap().file_name())}),
            &["error 358", "error 100"],
        ),
        (
            "attach sd1 by a second spelling of its path",
            "StorageDomain.attach",
            json!({"path": format!("{}/../{}/", dirs[0].display(), sd1)}),
            &["result", "error 365"],
        ),
        (
            "attach through the link to the sentinel",
            "StorageDomain.attach",
            json!({"path": bed.targets.domain_root.join("evil-link")}),
            &["error 358"],
        ),
        (
            "create a domain through the link to the sentinel",
            "StorageDomain.create",
            json!({"sd_id": fresh_uuid(), "path": bed.targets.domain_root.join("evil-link")}),
            &["error 1000"],
        ),
        (
            "create a domain with the id of an attached one",
            "StorageDomain.create",
            json!({"sd_id": sd1, "path": bed.targets.domain_root}),
            &["error 365"],
        ),
        (
            "detach an unknown domain",
            "StorageDomain.detach",
            json!({"sd_id": fake_sd}),
            &["error 358"],
        ),
    ];
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (label, method, params, want) in &cases {
        let got = outcome_of(addr, method, params.clone());
        rows.push(format!("| {label} | `{method}` | {got} |"));
        if !want.iter().any(|w| got.starts_with(w)) {
            bad.push(format!("{label}: got {got}, expected one of {want:?}"));
        }
    }
    bed.alive("requests with ids of other domains");
    eprintln!("\n| request | method | outcome |\n|---|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    let after = fs_state(&bed.root, &["agent.log"]);
    let diff: Vec<String> = fs_diff(&before, &after)
        .into_iter()
        .filter(|d| !d.contains(scratch.to_str().unwrap()))
        .collect();
    let events = foreign_events(&mut watch, std::slice::from_ref(&scratch));
    assert!(diff.is_empty(), "AGENT BUG: files changed: {diff:#?}");
    assert!(events.is_empty(), "AGENT BUG: write events: {events:#?}");
    assert!(bad.is_empty(), "AGENT BUG: {bad:#?}");
}

/// Valid but extreme values on real volumes: the largest sizes, generations at the wrap, and
/// descriptions at the edges of what may become one metadata line. Only the volumes made
/// here may change, and a refused request must leave nothing behind.
#[test]
fn extreme_valid_values_on_real_volumes() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd1 = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let outside_before = fs_state(&bed.sentinel, &[]);
    let mut rows = Vec::new();
    let mut bad = Vec::new();

    // The largest capacities, RAW and COW: created, or refused with nothing left behind.
    for (fmt, cap) in [
        ("RAW", json!(i64::MAX)),
        ("COW", json!(i64::MAX.to_string())),
        ("RAW", json!(1u64 << 50)),
        ("COW", json!(1u64 << 60)),
    ] {
        let (img, vol) = (fresh_uuid(), fresh_uuid());
        let r = raw_call(
            addr,
            "Volume.create",
            json!({"sd_id": sd1, "img_id": img, "vol_id": vol, "capacity": cap, "format": fmt, "preallocate": "SPARSE"}),
        );
        let img_dir = dirs[0].join("images").join(&img);
        let left: Vec<String> = std::fs::read_dir(&img_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let got = match r.get("error") {
            Some(e) => {
                let code = e["code"].as_i64().unwrap_or(0);
                if !bed.known.contains_key(&code) {
                    bad.push(format!(
                        "{fmt} capacity {cap}: code {code} not in the table"
                    ));
                }
                if !left.is_empty() {
                    bad.push(format!(
                        "{fmt} capacity {cap} refused ({code}) but left {left:?}"
                    ));
                }
                format!(
                    "error {code}: {}",
                    short(e["message"].as_str().unwrap_or(""))
                )
            }
            None => {
                let info = raw_call(
                    addr,
                    "Volume.getInfo",
                    json!({"sd_id": sd1, "img_id": img, "vol_id": vol}),
                );
                if info["result"]["capacity"]
                    != json!(cap
                        .as_u64()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| cap.as_str().unwrap().to_string()))
                {
                    bad.push(format!(
                        "{fmt} capacity {cap}: getInfo says {}",
                        info["result"]["capacity"]
                    ));
                }
                format!("created, capacity {}", info["result"]["capacity"])
            }
        };
        rows.push(format!("| Volume.create {fmt} capacity {cap} | {got} |"));
    }

    // Descriptions: accepted ones are stored as one line, cut to 210 characters.
    let (img, vol) = (fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd1, &img, &vol, 1);
    let meta = dirs[0]
        .join("images")
        .join(&img)
        .join(format!("{vol}.meta"));
    let mut generation = 0u64;
    for (what, d) in [
        ("equals signs", "a=b=c".to_string()),
        ("EOF", "EOF".to_string()),
        ("JSON", r#"{"DiskAlias":"x\nLEGALITY=LEGAL"}"#.to_string()),
        ("2048 two-byte characters", "\u{e9}".repeat(2048)),
        ("U+2028 then a key", "x\u{2028}CAP=1".to_string()),
        ("U+2029 then EOF", "x\u{2029}EOF".to_string()),
        ("leading and trailing spaces", "  padded  ".to_string()),
    ] {
        let job = fresh_uuid();
        let r = raw_call(
            addr,
            "SDM.update_volume",
            json!({"job_id": job, "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": vol, "generation": generation}, "vol_attr": {"description": d}}),
        );
        let got = if let Some(e) = r.get("error") {
            format!("error {}", e["code"])
        } else {
            let info = wait_raw_job(addr, &job);
            if info["status"] == json!("done") {
                generation = (generation + 1) % 1000;
            }
            let text = std::fs::read_to_string(&meta).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let desc_lines = lines
                .iter()
                .filter(|l| l.starts_with("DESCRIPTION="))
                .count();
            let stored = raw_call(
                addr,
                "Volume.getInfo",
                json!({"sd_id": sd1, "img_id": img, "vol_id": vol}),
            )["result"]["description"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if desc_lines != 1 || lines.last() != Some(&"EOF") || text.len() > 512 {
                bad.push(format!("description {what}: .meta is {text:?}"));
            }
            // Python's str.splitlines(), which VDSM uses on metadata, also breaks lines at
            // U+2028 and U+2029: the line must stay one line for it too.
            if stored.contains(['\u{2028}', '\u{2029}']) {
                bad.push(format!(
                    "description {what} stored with a line separator Python's splitlines() breaks on: {stored:?}"
                ));
            }
            format!(
                "job {}, stored {} characters",
                info["status"].as_str().unwrap_or("?"),
                stored.chars().count()
            )
        };
        rows.push(format!("| update_volume description: {what} | {got} |"));
    }

    // Generation 999 and the wrap to 0.
    let job = fresh_uuid();
    let r = raw_call(
        addr,
        "SDM.update_volume",
        json!({"job_id": job, "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": vol, "generation": generation}, "vol_attr": {"generation": 999}}),
    );
    let st = if r.get("error").is_none() {
        wait_raw_job(addr, &job)["status"].clone()
    } else {
        r["error"]["code"].clone()
    };
    let job = fresh_uuid();
    let r2 = raw_call(
        addr,
        "SDM.update_volume",
        json!({"job_id": job, "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": vol, "generation": 999}, "vol_attr": {"description": "after 999"}}),
    );
    let st2 = if r2.get("error").is_none() {
        wait_raw_job(addr, &job)["status"].clone()
    } else {
        r2["error"]["code"].clone()
    };
    let g = raw_call(
        addr,
        "Volume.getInfo",
        json!({"sd_id": sd1, "img_id": img, "vol_id": vol}),
    )["result"]["generation"]
        .clone();
    rows.push(format!(
        "| set generation 999 ({st}), then an update at 999 ({st2}) | generation now {g} |"
    ));
    if g != json!(0) {
        bad.push(format!(
            "generation after an update at 999 is {g}, expected the wrap to 0"
        ));
    }

    // A domain description with a line separator: dom_md/metadata is read by VDSM with
    // Python's splitlines().
    let r = raw_call(
        addr,
        "StorageDomain.create",
        json!({"sd_id": fresh_uuid(), "path": bed.targets.domain_root, "description": "x\u{2028}CLASS=Iso"}),
    );
    let got = match r.get("error") {
        Some(e) => format!("error {}", e["code"]),
        None => {
            bad.push("StorageDomain.create accepted a description with U+2028, which splits the dom_md/metadata line for Python's splitlines() (VDSM) and breaks the seal there".into());
            "created".into()
        }
    };
    rows.push(format!(
        "| StorageDomain.create description with U+2028 | {got} |"
    ));

    bed.alive("extreme values");
    eprintln!("\n| request | outcome |\n|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    let diff = fs_diff(&outside_before, &fs_state(&bed.sentinel, &[]));
    assert!(
        diff.is_empty(),
        "AGENT BUG: files outside changed: {diff:#?}"
    );
    assert!(bad.is_empty(), "AGENT BUG: {bad:#?}");
}

/// Jobs that wait for a lock (valid requests: updates of volumes whose image a slow copy
/// holds) must not starve the agent's other requests: each waiting job holds a blocking
/// thread, and the runtime has 512 of them.
#[test]
fn jobs_waiting_for_a_lock_do_not_starve_the_control_plane() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd1 = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let n = 600;
    let (simg, svol, img, dvol) = (fresh_uuid(), fresh_uuid(), fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd1, &simg, &svol, 16);
    write_pattern(
        &dirs[0].join("images").join(&simg).join(&svol),
        0,
        16 << 20,
        3,
    );
    create_volume(addr, &sd1, &img, &dvol, 16);
    let vols: Vec<String> = (0..n).map(|_| fresh_uuid()).collect();
    for v in &vols {
        create_volume(addr, &sd1, &img, v, 1);
    }
    // The copy holds the image exclusively for about 8 s.
    let copy = fresh_uuid();
    let r = raw_call(
        addr,
        "SDM.copy_data",
        json!({"job_id": copy, "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": simg, "vol_id": svol},
               "destination": {"endpoint_type": "div", "sd_id": sd1, "img_id": img, "vol_id": dvol, "generation": 0},
               "bandwidth_limit": 2 << 20}),
    );
    assert_eq!(r["result"], json!(true), "{r}");
    std::thread::sleep(Duration::from_millis(500));
    let before = raw_call(addr, "Host.getJobs", json!({"job_ids": [copy]}));
    eprintln!("copy before the updates: {}", before["result"][&copy]);
    let t = Instant::now();
    for v in &vols {
        let r = raw_call(
            addr,
            "SDM.update_volume",
            json!({"job_id": fresh_uuid(), "vol_info": {"sd_id": sd1, "img_id": img, "vol_id": v, "generation": 0},
                   "vol_attr": {"description": "waits for the image lock"}}),
        );
        assert_eq!(r["result"], json!(true), "{r}");
    }
    let submitted = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let threads = proc_stats(bed.pid()).threads;
    let mut answers = Vec::new();
    for method in [
        "Host.getCapabilities",
        "Host.getStats",
        "StorageDomain.list",
        "Host.getJobs",
    ] {
        let t = Instant::now();
        let req = request_text(method, Some("{}"), 1);
        let (status, body, _) = raw_http(
            addr,
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{req}",
                req.len(),
            )
            .as_bytes(),
            Duration::from_secs(2),
        );
        let ok = status == 200 && body.contains("result");
        if !ok {
            eprintln!("{method}: HTTP {status} {}", short(&body));
        }
        answers.push((method, ok, t.elapsed()));
    }
    let r = raw_call(addr, "Job.abort", json!({"job_id": copy}));
    // Let the waiting jobs drain before the agent is stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let j = raw_call(addr, "Host.getStats", json!({}));
        if j["result"]["jobs_running"] == json!(0) && j["result"]["jobs_pending"] == json!(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "\n{n} update_volume jobs waiting for one image lock (submitted in {:.1} s), agent threads {threads}:",
        submitted.as_secs_f64()
    );
    for (m, ok, d) in &answers {
        eprintln!(
            "  {m}: {} after {:.0} ms",
            if *ok { "answered" } else { "NOT answered" },
            d.as_secs_f64() * 1e3
        );
    }
    eprintln!("abort of the copy: {r}");
    let starved: Vec<&str> = answers
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(m, _, _)| *m)
        .collect();
    assert!(
        starved.is_empty(),
        "AGENT BUG: with {n} jobs waiting for a lock, {starved:?} got no answer within 2 s: jobs wait for \
         locks on tokio blocking threads (agent/src/ops/mod.rs lock_for_job, jobs.rs spawn_blocking), \
         and once the 512 are taken every verb that runs on one (rpc.rs `blocking`) queues behind them"
    );
}

/// Links planted inside a domain (by anyone who can write to shared storage) must not let a
/// wipe, a copy or a clean-up reach files outside the attached domains.
#[test]
fn links_planted_in_a_domain_do_not_lead_outside() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let dirs = bed.domain_dirs();
    let sd1 = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let sd2 = dirs[1].file_name().unwrap().to_string_lossy().into_owned();
    let victim = bed.sentinel.join("victim");
    let victim_size = std::fs::metadata(&victim).unwrap().len();
    let mut findings = Vec::new();

    // 1. A volume whose data file is a link to a regular file outside: delete with postZero.
    let (img, vol) = (fresh_uuid(), fresh_uuid());
    let r = raw_call(
        addr,
        "Volume.create",
        json!({"sd_id": sd1, "img_id": img, "vol_id": vol, "capacity": victim_size, "format": "RAW", "preallocate": "SPARSE"}),
    );
    assert!(r["result"].is_string(), "{r}");
    let data = dirs[0].join("images").join(&img).join(&vol);
    std::fs::remove_file(&data).unwrap();
    std::os::unix::fs::symlink(&victim, &data).unwrap();
    let before = fs_state(&bed.sentinel, &[]);
    let got = outcome_of(
        addr,
        "Image.delete",
        json!({"imageID": img, "storagedomainID": sd1, "postZero": true}),
    );
    let diff = fs_diff(&before, &fs_state(&bed.sentinel, &[]));
    eprintln!("wipe of an image whose volume links outside: {got}; sentinel changes: {diff:?}");
    if !diff.is_empty() {
        findings.push(format!(
            "Image.delete(postZero) of an image whose volume file is a link to {} wrote through the link: {diff:?}",
            victim.display()
        ));
    }

    // 2. A copy destination whose data file is a link to a regular file outside.
    write_pattern(&victim, 0, victim_size as usize, 42);
    let (simg, svol, dimg, dvol) = (fresh_uuid(), fresh_uuid(), fresh_uuid(), fresh_uuid());
    create_volume(addr, &sd1, &simg, &svol, 1);
    write_pattern(
        &dirs[0].join("images").join(&simg).join(&svol),
        0,
        1 << 20,
        9,
    );
    let r = raw_call(
        addr,
        "Volume.create",
        json!({"sd_id": sd2, "img_id": dimg, "vol_id": dvol, "capacity": 1 << 20, "format": "RAW", "preallocate": "SPARSE"}),
    );
    assert!(r["result"].is_string(), "{r}");
    let ddata = dirs[1].join("images").join(&dimg).join(&dvol);
    std::fs::remove_file(&ddata).unwrap();
    std::os::unix::fs::symlink(&victim, &ddata).unwrap();
    let before = fs_state(&bed.sentinel, &[]);
    let job = fresh_uuid();
    let got = outcome_of(
        addr,
        "SDM.copy_data",
        json!({"job_id": job, "source": {"endpoint_type": "div", "sd_id": sd1, "img_id": simg, "vol_id": svol}, "destination": {"endpoint_type": "div", "sd_id": sd2, "img_id": dimg, "vol_id": dvol, "generation": 0}}),
    );
    let diff = fs_diff(&before, &fs_state(&bed.sentinel, &[]));
    eprintln!("copy into a volume that links outside: {got}; sentinel changes: {diff:?}");
    if !diff.is_empty() {
        findings.push(format!(
            "SDM.copy_data into a volume whose data file is a link to {} wrote through the link: {diff:?}",
            victim.display()
        ));
    }

    // 3. A leftover directory that is a link to a directory outside, cleaned at attach.
    write_pattern(&victim, 0, victim_size as usize, 42);
    let leftover = dirs[0]
        .join("images")
        .join(format!("_remove_me_ZERO_{}", fresh_uuid()));
    std::os::unix::fs::symlink(&bed.sentinel, &leftover).unwrap();
    let before = fs_state(&bed.sentinel, &[]);
    let r = raw_call(addr, "StorageDomain.detach", json!({"sd_id": sd1}));
    assert_eq!(r["result"], json!(true), "{r}");
    let r = raw_call(addr, "StorageDomain.attach", json!({"path": dirs[0]}));
    eprintln!("re-attach with a linked leftover: {r}");
    // Give a clean-up job time to run.
    std::thread::sleep(Duration::from_secs(2));
    let check = raw_call(addr, "StorageDomain.check", json!({"sd_id": sd1}));
    if let Some(fixes) = check["result"].as_array() {
        for f in fixes
            .iter()
            .filter(|f| f["data"]["kind"] == json!("leftover"))
        {
            let got = outcome_of(addr, "StorageDomain.fix", json!({"sd_id": sd1, "fix": f}));
            eprintln!("fix of the linked leftover: {got}");
        }
    }
    let diff = fs_diff(&before, &fs_state(&bed.sentinel, &[]));
    eprintln!("linked leftover: sentinel changes: {diff:?}");
    if !diff.is_empty() {
        findings.push(format!(
            "a `_remove_me_ZERO_` leftover that is a link to {} was wiped/removed through the link: {diff:?}",
            bed.sentinel.display()
        ));
    }
    bed.alive("planted links");
    assert!(
        findings.is_empty(),
        "AGENT BUG: links planted in a domain lead outside it:\n{}",
        findings.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Slow-loris and idle connections

const CAPS: &str = r#"{"jsonrpc":"2.0","id":1,"method":"Host.getCapabilities"}"#;

/// One request from a fresh client: Ok(latency) or Err(what happened).
fn probe(addr: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    let (status, body, closed) = raw_http(
        addr,
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{CAPS}",
            CAPS.len()
        )
        .as_bytes(),
        timeout,
    );
    if status == 200 && body.contains("result") {
        Ok(t.elapsed())
    } else if status == 0 {
        Err(if closed {
            "closed without an answer".into()
        } else {
            format!("no answer within {timeout:?}")
        })
    } else {
        Err(format!("HTTP {status} {}", short(body.trim())))
    }
}

/// Connections a server closed, and when.
fn closed_after(conns: &mut [TcpStream], started: Instant, seen: &mut [Option<Duration>]) {
    for (c, s) in conns.iter_mut().zip(seen.iter_mut()) {
        if s.is_some() {
            continue;
        }
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 4096];
        loop {
            match c.read(&mut b) {
                Ok(0) => {
                    *s = Some(started.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    *s = Some(started.elapsed());
                    break;
                }
            }
        }
        c.set_nonblocking(false).unwrap();
    }
}

fn summary(seen: &[Option<Duration>]) -> String {
    let closed: Vec<Duration> = seen.iter().flatten().copied().collect();
    if closed.is_empty() {
        return format!("all {} still open", seen.len());
    }
    let min = closed.iter().min().unwrap();
    let max = closed.iter().max().unwrap();
    format!(
        "{} of {} closed by the server, after {:.1}-{:.1} s",
        closed.len(),
        seen.len(),
        min.as_secs_f64(),
        max.as_secs_f64()
    )
}

/// Many connections that trickle their headers, trickle their body, idle after one request,
/// or hold an idle WebSocket: other clients must still be answered promptly, and the agent's
/// fds and memory must stay bounded by its connection limit.
#[test]
fn slow_loris_and_idle_connections_do_not_starve_others() {
    // The quick form lowers the limit; the full form keeps the default (256).
    let (max_conns, n_loris, n_body, n_keep, n_ws, window) = if full() {
        (256usize, 400, 40, 400, 200, Duration::from_secs(100))
    } else {
        (64, 100, 20, 100, 30, Duration::from_secs(6))
    };
    let bed = Bed::start(Some(format!(
        "create_default_domains = true\n\n[server]\nmax_connections = {max_conns}\n"
    )));
    let addr = bed.addr();
    let base = proc_stats(bed.pid());
    let started = Instant::now();

    // Headers that never end: a header value growing by one byte per tick.
    let mut loris: Vec<TcpStream> = (0..n_loris)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .ok()?;
            Some(s)
        })
        .collect();
    // Complete headers, then a body of 100 000 bytes one byte per tick.
    let mut slow_body: Vec<TcpStream> = (0..n_body)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").ok()?;
            Some(s)
        })
        .collect();
    // One request each, then idle with keep-alive.
    let mut keep: Vec<TcpStream> = (0..n_keep)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            s.write_all(
                format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CAPS}", CAPS.len())
                    .as_bytes(),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut b = [0u8; 2048];
            let _ = s.read(&mut b).ok()?;
            Some(s)
        })
        .collect();
    // Idle WebSockets.
    let mut ws_ok = Vec::new();
    let mut ws_refused = Vec::new();
    for _ in 0..n_ws {
        match Ws::connect(addr) {
            Ok(w) => ws_ok.push(w),
            Err(e) => ws_refused.push(e.lines().next().unwrap_or("").to_string()),
        }
    }
    let opened = proc_stats(bed.pid());

    // Trickle for the window, probing the agent with fresh clients meanwhile.
    let mut loris_seen = vec![None; loris.len()];
    let mut body_seen = vec![None; slow_body.len()];
    let mut keep_seen = vec![None; keep.len()];
    let mut ws_seen: Vec<Option<Duration>> = vec![None; ws_ok.len()];
    let mut ws_socks: Vec<TcpStream> = ws_ok.iter().map(|w| w.s.try_clone().unwrap()).collect();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut peak = opened;
    while started.elapsed() < window {
        for (s, seen) in loris.iter_mut().zip(&loris_seen) {
            if seen.is_none() {
                let _ = s.write_all(b"a");
            }
        }
        for (s, seen) in slow_body.iter_mut().zip(&body_seen) {
            if seen.is_none() {
                let _ = s.write_all(b" ");
            }
        }
        for _ in 0..3 {
            match probe(addr, Duration::from_secs(5)) {
                Ok(l) => latencies.push(l),
                Err(e) => failures.push(e),
            }
        }
        let s = proc_stats(bed.pid());
        peak.fds = peak.fds.max(s.fds);
        peak.hwm = peak.hwm.max(s.hwm);
        peak.rss = peak.rss.max(s.rss);
        closed_after(&mut loris, started, &mut loris_seen);
        closed_after(&mut slow_body, started, &mut body_seen);
        closed_after(&mut keep, started, &mut keep_seen);
        closed_after(&mut ws_socks, started, &mut ws_seen);
        std::thread::sleep(Duration::from_millis(200));
    }
    latencies.sort();
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    eprintln!(
        "\nslow-loris window {:.0} s, max_connections {max_conns}",
        window.as_secs_f64()
    );
    eprintln!("| connections | count | what the server did |\n|---|---|---|");
    eprintln!(
        "| headers that never end, 1 byte per 0.2 s | {} | {} |",
        loris.len(),
        summary(&loris_seen)
    );
    eprintln!(
        "| body of 100 000 bytes, 1 byte per 0.2 s | {} | {} |",
        slow_body.len(),
        summary(&body_seen)
    );
    eprintln!(
        "| idle keep-alive after one request | {} | {} |",
        keep.len(),
        summary(&keep_seen)
    );
    eprintln!(
        "| idle WebSocket | {} | {} accepted ({}), {} refused ({}) |",
        n_ws,
        ws_ok.len(),
        summary(&ws_seen),
        ws_refused.len(),
        ws_refused.first().map(String::as_str).unwrap_or("-")
    );
    eprintln!(
        "other clients: {} answered, p50 {:.1} ms, p99 {:.1} ms; {} not answered {:?}",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    eprintln!(
        "agent fds: {} before, {} with the connections open, peak {}; RSS peak {:.1} MiB, high-water mark {:.1} MiB",
        base.fds,
        opened.fds,
        peak.fds,
        peak.rss as f64 / 1048576.0,
        peak.hwm as f64 / 1048576.0
    );
    drop((loris, slow_body, keep, ws_ok, ws_socks));
    std::thread::sleep(Duration::from_secs(1));
    let end = proc_stats(bed.pid());
    eprintln!("agent fds after all closed: {}", end.fds);
    bed.alive("slow-loris");

    assert!(
        peak.hwm <= RSS_LIMIT,
        "AGENT BUG: high-water mark {} MiB",
        peak.hwm >> 20
    );
    assert!(
        end.fds <= base.fds + 4,
        "AGENT BUG: fd leak: {} before, {} after",
        base.fds,
        end.fds
    );
    assert!(
        failures.is_empty(),
        "AGENT BUG: {} requests of other clients went unanswered while fewer than max_connections \
         connections were busy: {:?}",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        p99 < Duration::from_secs(1),
        "AGENT BUG: p99 latency {p99:?} during the attack"
    );
    let bound = base.fds + max_conns + 16;
    assert!(
        peak.fds <= bound,
        "AGENT BUG: the agent held {} fds with max_connections = {max_conns} (bound {bound}): connections that \
         have not completed a request, and idle keep-alive connections, are not counted against \
         max_connections and are never closed (agent/src/rpc.rs accept loop)",
        peak.fds
    );
}

/// Idle keep-alive connections (one request each, then silence) until the agent's fd limit:
/// a new client must still be answered.
#[test]
fn idle_connections_cannot_exhaust_the_agents_fds() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    // A low fd limit, as under systemd's default soft limit of 1024, but quicker to reach.
    let limit = 256u64;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit on our own child process with a valid rlimit; no old value requested.
    let r = unsafe {
        libc::prlimit(
            bed.pid() as i32,
            libc::RLIMIT_NOFILE,
            &rl,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let base = proc_stats(bed.pid());
    let mut held = Vec::new();
    let mut first_failure = None;
    for i in 0..(limit as usize + 100) {
        let r = (|| -> Result<TcpStream, String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(
                format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CAPS}", CAPS.len())
                    .as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            let mut b = [0u8; 2048];
            match s.read(&mut b) {
                Ok(n) if n > 0 => Ok(s),
                Ok(_) => Err("closed".into()),
                Err(e) => Err(e.to_string()),
            }
        })();
        match r {
            Ok(s) => held.push(s),
            Err(e) => {
                first_failure = Some(format!("connection {i}: {e}"));
                break;
            }
        }
    }
    let during = proc_stats(bed.pid());
    let answer = probe(addr, Duration::from_secs(3));
    eprintln!(
        "\nagent RLIMIT_NOFILE {limit}: {} idle keep-alive connections held (first refusal: {}); agent fds {} -> {}; a new client: {:?}",
        held.len(),
        first_failure.as_deref().unwrap_or("none"),
        base.fds,
        during.fds,
        answer
    );
    let held_n = held.len();
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let after = probe(addr, Duration::from_secs(5));
    eprintln!("after the idle connections closed: {after:?}");
    assert!(
        answer.is_ok(),
        "AGENT BUG: {} idle keep-alive connections (one request each, then silence) exhaust the agent's \
         fds (RLIMIT_NOFILE {limit}) and lock every other client out: {:?}. Idle connections are not \
         counted against max_connections nor closed after a timeout (agent/src/rpc.rs accept loop)",
        held_n,
        answer
    );
}

/// A client that sends many requests and reads none of the answers: the agent must stop
/// reading (backpressure) instead of queueing calls and answers without bound.
#[test]
fn websocket_client_that_never_reads_is_bounded() {
    let bed = Bed::start(None);
    let addr = bed.addr();
    let mut rows: Vec<String> = Vec::new();
    // A client that sends many requests and reads none of the answers: the agent must stop
    // reading (backpressure) instead of queueing calls and answers without bound.
    let before = proc_stats(bed.pid());
    let n = if full() { 200_000 } else { 60_000 };
    let (written, mid) = {
        let mut ws = Ws::connect(addr).expect("upgrade");
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"StorageDomain.list"}"#;
        ws.s.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut written = 0;
        for _ in 0..n {
            if ws.send_text(list).is_err() {
                break;
            }
            written += 1;
        }
        std::thread::sleep(Duration::from_secs(2));
        (written, proc_stats(bed.pid()))
    };
    bed.alive("a WebSocket that does not read");
    let growth = mid.rss.saturating_sub(before.rss);
    rows.push(format!(
        "| {n} requests, answers never read | {written} written before the agent stopped reading; RSS {:.1} -> {:.1} MiB (high-water mark {:.1} MiB) |",
        before.rss as f64 / 1048576.0,
        mid.rss as f64 / 1048576.0,
        mid.hwm as f64 / 1048576.0
    ));
    for r in &rows {
        eprintln!("{r}");
    }
    assert!(
        mid.hwm <= RSS_LIMIT && growth <= 16 << 20,
        "AGENT BUG: a WebSocket client that never reads its answers made the agent grow by {} MiB \
         (to {} MiB, high-water mark {} MiB) with {written} requests: calls are read and queued \
         without bound (no per-connection limit of calls in flight, agent/src/rpc.rs serve)",
        growth >> 20,
        mid.rss >> 20,
        mid.hwm >> 20
    );
}

/// The per-connection count of unanswered WebSocket requests must neither stall a client that
/// pipelines a mix of calls, garbage, notifications and batches (some get no answer at all),
/// nor let a client escape it by sending frames before the 101 or upgrading late.
#[test]
fn websocket_pipelining_is_served_and_rule_breakers_are_closed() {
    let bed = Bed::start(None);
    let addr = bed.addr();

    // 1. 2000 messages in one burst; the answers are read by another thread meanwhile.
    let mut ws = Ws::connect(addr).expect("upgrade");
    let mut reader = Ws {
        s: ws.s.try_clone().unwrap(),
    };
    let n = 2000u64;
    let mut want = 0u64;
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| match i % 5 {
            0 => format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"StorageDomain.list"}}"#),
            1 => "not json at all".to_string(),
            2 => r#"{"jsonrpc":"2.0","method":"Host.getStats"}"#.to_string(),
            3 => r#"[{"jsonrpc":"2.0","method":"Host.getStats"},{"jsonrpc":"2.0","method":"Host.getCapabilities"}]"#.to_string(),
            _ => format!(r#"[{{"jsonrpc":"2.0","id":{i},"method":"Host.getStats"}},{{"jsonrpc":"2.0","method":"Host.getStats"}}]"#),
        })
        .map(String::into_bytes)
        .collect();
    for i in 0..n {
        // Notifications (2) and batches of notifications only (3) get no answer.
        if !matches!(i % 5, 2 | 3) {
            want += 1;
        }
    }
    let started = Instant::now();
    let counter = std::thread::spawn(move || {
        let mut got = 0u64;
        while got < want {
            match reader.recv(Duration::from_secs(20)) {
                Ok(f) if f.opcode == 1 => got += 1,
                Ok(f) if f.opcode == 8 => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    });
    for m in &msgs {
        ws.send_text(m).expect("send");
    }
    let got = counter.join().unwrap();
    eprintln!(
        "\n{n} pipelined messages, {want} answers due: {got} answered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        got, want,
        "AGENT BUG: a pipelining WebSocket client was stalled or lost answers"
    );
    bed.alive("pipelining");

    // 2. Frames sent with the upgrade request, before the 101: closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut early = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    // One masked text frame: {"jsonrpc":"2.0","id":1,"method":"Host.getStats"}
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"Host.getStats"}"#;
    early.extend([0x81, 0x80 | call.len() as u8, 0, 0, 0, 0]);
    early.extend_from_slice(call);
    s.write_all(&early).unwrap();
    let closed = read_until_closed(&mut s, Duration::from_secs(10), &mut Vec::new());
    eprintln!("frames before the 101: {closed}");
    assert!(
        closed.starts_with("closed"),
        "AGENT BUG: a WebSocket client that sent frames before the 101 was served: {closed}"
    );
    bed.alive("frames before the 101");

    // 3. An upgrade after a first HTTP request on the same connection: closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"Host.getStats"}"#;
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut b = [0u8; 4096];
    assert!(s.read(&mut b).unwrap() > 0, "first request answered");
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = Vec::new();
    let closed = read_until_closed(&mut s, Duration::from_secs(10), &mut answer);
    let head = String::from_utf8_lossy(&answer[..answer.len().min(24)]).into_owned();
    eprintln!("upgrade after a request: {head:?}, {closed}");
    assert!(
        closed.starts_with("closed") && head.starts_with("HTTP/1.1 400"),
        "AGENT BUG: a late upgrade was served: {head:?}, {closed}"
    );
    bed.alive("late upgrade");
}

/// Reads into `got` until the peer closes ("closed after N bytes") or the timeout ("open ...").
fn read_until_closed(s: &mut TcpStream, timeout: Duration, got: &mut Vec<u8>) -> String {
    let end = Instant::now() + timeout;
    let mut total = 0;
    let mut b = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return format!("closed after {total} bytes"),
            Ok(n) => {
                total += n;
                got.extend_from_slice(&b[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return format!("closed (reset) after {total} bytes")
            }
            Err(e) => return format!("open after {total} bytes ({e})"),
        }
    }
    format!("open after {total} bytes")
}
