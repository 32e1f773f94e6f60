//! The hostile generator's STOMP mode: byte streams that break VDSM's STOMP dialect on purpose
//! (frames without NUL, lying or huge `content-length`, thousands of headers, bad escapes,
//! unknown commands, frames before CONNECT), random mutations of a valid engine session, and
//! the instrument that sends one and reports what the agent did (frames answered, whether it
//! closed, how fast).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sdm_stomp::{Command, Decoder, Frame, Item, Limits};

use super::{mutate, Rng};

/// What the agent must do with a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StompExpect {
    /// Answer ERROR (its text in the body) and close.
    ErrorThenClose,
    /// Close without answering (not STOMP at all).
    Closed,
    /// Answer ERROR and keep the session (VDSM's answers to bad SUBSCRIBE, SEND, CONNECT).
    ErrorStaysOpen,
    /// Anything but a crash or a hang: ERROR and close, close, or answers (random mutations).
    Any,
}

/// One hostile byte stream.
#[derive(Clone, Debug)]
pub struct StompCase {
    /// What it attacks.
    pub name: String,
    /// The bytes, sent at once.
    pub bytes: Vec<u8>,
    /// What the agent must do.
    pub expect: StompExpect,
}

const CONNECT: &[u8] = b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0";

fn case(name: &str, parts: &[&[u8]], expect: StompExpect) -> StompCase {
    StompCase {
        name: name.to_string(),
        bytes: parts.concat(),
        expect,
    }
}

/// A valid engine session: CONNECT, SUBSCRIBE, a request, DISCONNECT.
pub fn valid_session() -> Vec<u8> {
    let mut b = BytesMut::new();
    Frame::connect(Some("engine"), (0, 0)).encode(&mut b);
    Frame::subscribe("hostile.replies", "r").encode(&mut b);
    Frame::send(
        sdm_stomp::REQUEST_QUEUE,
        Some("hostile.replies"),
        &br#"[{"jsonrpc":"2.0","id":"h1","method":"Host.getJobs","params":{"job_type":"storage"}}]"#[..],
    )
    .encode(&mut b);
    Frame::disconnect("bye").encode(&mut b);
    b.to_vec()
}

/// Every fixed case, named after what it breaks. `body_limit` is the agent's request size
/// limit (the STOMP body limit).
pub fn stomp_cases(body_limit: usize) -> Vec<StompCase> {
    use StompExpect::*;
    let many_headers: Vec<u8> = (0..10_000)
        .flat_map(|i| format!("h{i}:v\n").into_bytes())
        .collect();
    let over = vec![b'x'; body_limit + 4096];
    let long_line = vec![b'a'; 70_000];
    let send = b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r\n";
    vec![
        case("frame without NUL past the body limit", &[CONNECT, send, b"\n", &over], ErrorThenClose),
        case(
            "content-length shorter than the body (no NUL where it says)",
            &[CONNECT, send, b"content-length:5\n\n0123456789\0"],
            ErrorThenClose,
        ),
        case(
            "content-length longer than the body, then another frame",
            &[CONNECT, send, b"content-length:60\n\n{}\0SEND\ndestination:x\n\nyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\0"],
            ErrorThenClose,
        ),
        case(
            "content-length beyond u64",
            &[CONNECT, send, b"content-length:99999999999999999999999\n\n"],
            ErrorThenClose,
        ),
        case(
            "content-length of 2 GiB (refused before the body comes)",
            &[CONNECT, send, b"content-length:2147483648\n\n"],
            ErrorThenClose,
        ),
        case("negative content-length", &[CONNECT, send, b"content-length:-1\n\n\0"], ErrorThenClose),
        case("10,000 headers", &[CONNECT, b"SEND\n", &many_headers, b"\n\0"], ErrorThenClose),
        case("a 70 kB header line", &[CONNECT, b"SEND\nx:", &long_line, b"\n\n\0"], ErrorThenClose),
        case("unknown escape", &[CONNECT, b"SEND\ndestination:a\\qb\n\n\0"], ErrorThenClose),
        case("trailing backslash", &[CONNECT, b"SEND\ndestination:ab\\\n\n\0"], ErrorThenClose),
        case("raw colon in a value", &[CONNECT, b"SEND\ndestination:a:b\n\n\0"], ErrorThenClose),
        case("header without colon", &[CONNECT, b"SEND\nnocolon\n\n\0"], ErrorThenClose),
        case("invalid UTF-8 header", &[CONNECT, b"SEND\nd:\xff\xfe\n\n\0"], ErrorThenClose),
        case("unknown command after CONNECT", &[CONNECT, b"HELLO\n\n\0"], ErrorThenClose),
        case("STOMP command VDSM does not serve", &[CONNECT, b"ACK\nid:1\n\n\0"], ErrorThenClose),
        case("lower-case command", &[CONNECT, b"send\ndestination:x\n\n\0"], ErrorThenClose),
        case(
            "SEND before CONNECT",
            &[b"SEND\ndestination:jms.topic.vdsm_requests\n\n[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Host.getJobs\"}]\0"],
            ErrorThenClose,
        ),
        case("SUBSCRIBE before CONNECT", &[b"SUBSCRIBE\ndestination:a\nid:1\n\n\0"], ErrorThenClose),
        case("MESSAGE from a client", &[CONNECT, b"MESSAGE\ndestination:a\n\nx\0"], ErrorThenClose),
        case("not STOMP, not HTTP", &[b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], Closed),
        case("an HTTP proxy CONNECT", &[b"CONNECT example.org:443 HTTP/1.1\r\n\r\n"], Closed),
        case("wrong version", &[b"CONNECT\naccept-version:1.0,1.1\n\n\0"], ErrorStaysOpen),
        case("SUBSCRIBE without id", &[CONNECT, b"SUBSCRIBE\ndestination:a\n\n\0"], ErrorStaysOpen),
        case(
            "SUBSCRIBE id twice",
            &[CONNECT, b"SUBSCRIBE\ndestination:a\nid:1\n\n\0SUBSCRIBE\ndestination:b\nid:1\n\n\0"],
            ErrorStaysOpen,
        ),
        case("SEND to nobody", &[CONNECT, b"SEND\ndestination:nobody.here\n\nx\0"], ErrorStaysOpen),
        case("SEND without destination", &[CONNECT, b"SEND\n\nx\0"], ErrorStaysOpen),
    ]
}

/// `n` random mutations (each applied 1 to 8 times) of a valid session.
pub fn stomp_mutations(rng: &mut Rng, n: usize) -> Vec<StompCase> {
    let valid = valid_session();
    (0..n)
        .map(|i| {
            let mut b = valid.clone();
            for _ in 0..=rng.below(8) {
                b = mutate(rng, &b, CONNECT);
            }
            StompCase {
                name: format!("mutation {i}"),
                bytes: b,
                expect: StompExpect::Any,
            }
        })
        .collect()
}

/// What the agent did with a case.
#[derive(Debug)]
pub struct Exchange {
    /// Frames it sent, in order (heart-beats left out).
    pub frames: Vec<Frame>,
    /// It closed the connection (within the patience given).
    pub closed: bool,
    /// From the last byte sent to the close (or to giving up).
    pub took: Duration,
}

impl Exchange {
    /// Bodies of the ERROR frames.
    pub fn errors(&self) -> Vec<String> {
        self.frames
            .iter()
            .filter(|f| f.command == Command::Error)
            .map(|f| String::from_utf8_lossy(f.body()).into_owned())
            .collect()
    }
}

/// Sends `bytes` on a new connection (a write the agent refuses midway is fine), then reads
/// until the agent closes or `patience` passes.
pub fn exchange(addr: SocketAddr, bytes: &[u8], patience: Duration) -> Exchange {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.write_all(bytes);
    let t = Instant::now();
    let mut got = BytesMut::new();
    let mut closed = false;
    let mut chunk = [0u8; 16384];
    while t.elapsed() < patience {
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let mut dec = Decoder::new(Limits::default());
    let mut frames = Vec::new();
    while let Ok(Some(item)) = dec.decode(&mut got) {
        if let Item::Frame(f) = item {
            frames.push(f);
        }
    }
    Exchange {
        frames,
        closed,
        took: t.elapsed(),
    }
}

/// Checks an exchange against the case's expectation; Err says what went wrong.
pub fn judge(case: &StompCase, ex: &Exchange) -> Result<(), String> {
    let errors = ex.errors();
    let ok = match case.expect {
        StompExpect::ErrorThenClose => !errors.is_empty() && ex.closed,
        StompExpect::Closed => ex.frames.is_empty() && ex.closed,
        StompExpect::ErrorStaysOpen => !errors.is_empty() && !ex.closed,
        StompExpect::Any => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: expected {:?}, got frames {:?} (errors {errors:?}), closed {} after {:?}",
            case.name,
            case.expect,
            ex.frames.iter().map(|f| f.command).collect::<Vec<_>>(),
            ex.closed,
            ex.took
        ))
    }
}
