//! [`FlakyProxy`]: an HTTP relay that loses chosen answers on their way back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An HTTP relay in front of an agent that loses the answers to the first `n` requests whose
/// body contains `marker`: the request reaches the agent, which acts on it; then the relay
/// closes the client's connection without a reply, as a network failure would. Everything else
/// (other requests, WebSocket upgrades) passes through.
pub struct FlakyProxy {
    /// `http://` URL of the relay.
    pub url: String,
    lost: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
}

impl FlakyProxy {
    /// Starts a relay to `target`.
    pub fn start(target: SocketAddr, marker: &str, n: usize) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let to_lose = Arc::new(AtomicUsize::new(n));
        let lost = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let marker = marker.as_bytes().to_vec();
        let (l2, s2) = (lost.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { break };
                let (marker, to_lose, lost, seen) =
                    (marker.clone(), to_lose.clone(), l2.clone(), s2.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, target, &marker, &to_lose, &lost, &seen);
                });
            }
        });
        FlakyProxy { url, lost, seen }
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// Requests with the marker seen so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP message head (up to the blank line) and returns it with its Content-Length
/// and whether it is chunked.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(Vec<u8>, usize, bool)>> {
    let mut head = Vec::new();
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            return Ok(Some((head, len, chunked)));
        }
    }
}

/// Reads a message body (Content-Length or chunked) as it is on the wire.
fn read_body(r: &mut BufReader<TcpStream>, len: usize, chunked: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if !chunked {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    loop {
        let mut size_line = String::new();
        r.read_line(&mut size_line)?;
        body.extend_from_slice(size_line.as_bytes());
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .unwrap_or(0);
        let mut chunk = vec![0u8; size + 2];
        r.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk);
        if size == 0 {
            return Ok(body);
        }
    }
}

fn splice(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

fn relay(
    client: TcpStream,
    target: SocketAddr,
    marker: &[u8],
    to_lose: &AtomicUsize,
    lost: &AtomicUsize,
    seen: &AtomicUsize,
) -> std::io::Result<()> {
    let upstream = TcpStream::connect(target)?;
    let mut cr = BufReader::new(client.try_clone()?);
    let mut ur = BufReader::new(upstream.try_clone()?);
    let (mut cw, mut uw) = (client, upstream);
    loop {
        let Some((head, len, chunked)) = read_head(&mut cr)? else {
            return Ok(());
        };
        let body = read_body(&mut cr, len, chunked)?;
        let upgrade = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("upgrade: websocket");
        let marked = body.windows(marker.len().max(1)).any(|w| w == marker);
        if marked {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let lose = marked
            && to_lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        uw.write_all(&head)?;
        uw.write_all(&body)?;
        let Some((rhead, rlen, rchunked)) = read_head(&mut ur)? else {
            return Ok(());
        };
        if upgrade {
            cw.write_all(&rhead)?;
            let buffered = ur.buffer().to_vec();
            cw.write_all(&buffered)?;
            // The client's side may have buffered bytes too (none for a fresh handshake).
            splice(cw, uw);
            return Ok(());
        }
        let rbody = read_body(&mut ur, rlen, rchunked)?;
        if lose {
            // The agent has acted; the client never hears of it.
            lost.fetch_add(1, Ordering::SeqCst);
            let _ = cw.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        cw.write_all(&rhead)?;
        cw.write_all(&rbody)?;
    }
}
