//! HTTP-level abuse: malformed requests are refused cleanly, pipelined ones all answered.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sdm_tests::hostile::*;
use serde_json::Value;

use crate::bed::{Bed, RSS_LIMIT};

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
