//! Slow-loris and idle connections: they neither starve other clients nor exhaust the agent's
//! fds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sdm_tests::hostile::*;

use crate::bed::{Bed, RSS_LIMIT};

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
