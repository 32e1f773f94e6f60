//! WebSocket abuse: broken frames get errors or a clean close, a client that never reads is
//! bounded, pipelining is served and rule breakers are closed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sdm_tests::hostile::*;
use serde_json::Value;

use crate::bed::{Bed, RSS_LIMIT};

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
