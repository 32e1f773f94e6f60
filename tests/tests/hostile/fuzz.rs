//! Requests generated from the wire API for every field of every method, and random mutations
//! of valid requests: each gets a coded error and changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sdm_tests::hostile::*;
use sdm_tests::*;
use serde_json::{json, Value};

use crate::bed::{foreign_events, Bed, RSS_LIMIT};

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
