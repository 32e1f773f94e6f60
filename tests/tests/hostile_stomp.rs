//! Hostile STOMP input against a real agent (the generator's STOMP mode,
//! `sdm_tests::hostile::stomp`): every broken stream is answered with ERROR and closed, or
//! closed, or (where VDSM keeps the session) answered with ERROR; random mutations of a valid
//! session never crash or hang the agent; a client that never reads is dropped once its queue
//! is full; memory stays bounded and other clients are served throughout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sdm_tests::hostile::stomp::{exchange, judge, stomp_cases, stomp_mutations, StompExpect};
use sdm_tests::hostile::{proc_stats, Rng};
use sdm_tests::*;
use serde_json::json;

/// The agent still answers over HTTP and over STOMP.
fn served(agent: &AgentProc) {
    let r = raw_call(agent.addr, "Host.getJobs", json!({}));
    assert!(r.get("result").is_some(), "HTTP client not served: {r}");
    let session = format!(
        "CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\ndestination:probe\nid:p\n\n\0SEND\ndestination:jms.topic.vdsm_requests\nreply-to:probe\n\n{}\0",
        r#"{"jsonrpc":"2.0","id":"probe","method":"Host.getStats"}"#
    );
    let ex = exchange(agent.addr, session.as_bytes(), Duration::from_secs(2));
    assert!(
        ex.frames
            .iter()
            .any(|f| f.command == sdm_stomp::Command::Message
                && f.body().starts_with(b"{\"jsonrpc\"")),
        "STOMP client not served: {ex:?}"
    );
}

#[test]
fn broken_stomp_is_answered_with_error_or_closed() {
    let agent = AgentProc::start(AgentOptions::default());
    let before = proc_stats(agent.pid());
    let mut failures = Vec::new();
    for case in stomp_cases(1 << 20) {
        let patience = match case.expect {
            StompExpect::ErrorStaysOpen => Duration::from_millis(1500),
            _ => Duration::from_secs(15),
        };
        let ex = exchange(agent.addr, &case.bytes, patience);
        if let Err(e) = judge(&case, &ex) {
            failures.push(e);
        }
        if matches!(
            case.expect,
            StompExpect::ErrorThenClose | StompExpect::Closed
        ) {
            assert!(
                ex.took < Duration::from_secs(5),
                "{}: closing took {:?}",
                case.name,
                ex.took
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    served(&agent);
    let after = proc_stats(agent.pid());
    assert!(
        after.rss < before.rss + (64 << 20),
        "RSS grew from {} to {} bytes",
        before.rss,
        after.rss
    );
    assert!(
        agent.log_text().contains("STOMP protocol error"),
        "protocol errors are logged"
    );
}

#[test]
fn random_stomp_mutations_never_crash_or_hang_the_agent() {
    let agent = AgentProc::start(AgentOptions::default());
    let seed = std::env::var("SDM_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5703_1612);
    let mut rng = Rng::new(seed);
    let n = if hostile::full() { 2000 } else { 300 };
    let before = proc_stats(agent.pid());
    for (i, case) in stomp_mutations(&mut rng, n).into_iter().enumerate() {
        // Many streams stop mid-frame; the agent keeps those open, as any slow sender: the
        // client gives up after a moment.
        let ex = exchange(agent.addr, &case.bytes, Duration::from_millis(300));
        judge(&case, &ex).unwrap();
        if i % 50 == 0 {
            served(&agent);
        }
    }
    served(&agent);
    let after = proc_stats(agent.pid());
    assert!(
        after.rss < before.rss + (64 << 20),
        "RSS grew from {} to {} bytes (seed {seed})",
        before.rss,
        after.rss
    );
    assert!(
        after.fds < before.fds + 32,
        "fds grew from {} to {} (seed {seed}): connections leak",
        before.fds,
        after.fds
    );
}

#[test]
fn a_stomp_client_that_never_reads_is_dropped_when_its_queue_is_full() {
    let agent = AgentProc::start(AgentOptions::default());
    let before = proc_stats(agent.pid());
    // X subscribes to a destination and never reads.
    let mut x = TcpStream::connect(agent.addr).unwrap();
    x.write_all(b"CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\ndestination:flood\nid:f\n\n\0")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Y sends requests whose replies go to X's destination (and reads nothing either).
    let mut y = TcpStream::connect(agent.addr).unwrap();
    y.write_all(b"CONNECT\naccept-version:1.2\n\n\0").unwrap();
    let req = format!(
        "SEND\ndestination:jms.topic.vdsm_requests\nreply-to:flood\n\n{}\0",
        r#"{"jsonrpc":"2.0","id":1,"method":"StorageDomain.list"}"#
    );
    let t = Instant::now();
    let mut dropped = false;
    while t.elapsed() < Duration::from_secs(120) {
        let burst = req.repeat(200);
        y.write_all(burst.as_bytes()).unwrap();
        // X is dropped once its queue is full: the agent's log says so.
        if agent
            .log_text()
            .contains("closing a STOMP connection that does not read what it asked for")
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the client that never reads was not dropped");
    // X's socket ends after what was already on its way.
    x.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let ended = loop {
        match x.read(&mut sink) {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
    };
    assert!(ended);
    served(&agent);
    let after = proc_stats(agent.pid());
    assert!(
        after.rss < before.rss + (128 << 20),
        "RSS grew from {} to {} bytes",
        before.rss,
        after.rss
    );
    drop(y);
}
