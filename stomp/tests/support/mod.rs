//! A one-connection loopback STOMP server built from the codec, answering the way VDSM's
//! `StompAdapterImpl` does (CONNECT version check and heart-beat negotiation, SUBSCRIBE with
//! destination and id, SEND to the request queue answered on `reply-to`, DISCONNECT with a
//! RECEIPT). JSON-RPC requests are echoed: the result carries the method, the params and the
//! value of the request's `x-escaped` header, which is also sent back as an `x-echo` header.

#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use bytes::BytesMut;
use sdm_stomp::{
    detect, Command, Decoder, Frame, HeartBeat, Item, Protocol, HEART_BEAT, REQUEST_QUEUE,
};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

/// What the server saw on its connection.
#[derive(Debug, Default)]
pub struct Report {
    /// Commands of the frames received, in order.
    pub commands: Vec<Command>,
    /// Heart-beats received.
    pub heart_beats: usize,
    /// Heart-beats sent.
    pub heart_beats_sent: usize,
    /// The negotiated intervals.
    pub heart_beat: HeartBeat,
    /// `x-escaped` header values of SEND frames, unescaped.
    pub escaped: Vec<String>,
    /// Headers of every CONNECT.
    pub connect_headers: Vec<Vec<(String, String)>>,
}

async fn wait(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Serves one connection until the peer closes it. Errors are protocol violations.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Result<Report, String> {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match detect(&buf) {
            Protocol::Stomp => break,
            Protocol::NeedMore => {}
            other => return Err(format!("not STOMP: {other:?} {buf:?}")),
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before a frame".into());
        }
    }
    let mut report = Report::default();
    let mut decoder = Decoder::default();
    let mut subs: Vec<(String, String)> = Vec::new();
    let mut last_sent = Instant::now();
    let mut last_heard = Instant::now();
    loop {
        while let Some(item) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            let frame = match item {
                Item::HeartBeat => {
                    report.heart_beats += 1;
                    continue;
                }
                Item::Frame(f) => f,
            };
            report.commands.push(frame.command);
            for out in handle(&frame, &mut subs, &mut report)? {
                stream
                    .write_all(&out.to_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                last_sent = Instant::now();
            }
        }
        let hb = report.heart_beat;
        let send_at = hb.send_interval().map(|d| last_sent + d);
        // Twice the promised interval: a test client's timer may run a little late.
        let dead_at = hb.expect_interval().map(|d| last_heard + d * 2);
        tokio::select! {
            r = stream.read_buf(&mut buf) => {
                if r.map_err(|e| e.to_string())? == 0 {
                    return Ok(report);
                }
                last_heard = Instant::now();
            }
            _ = wait(send_at) => {
                stream.write_all(HEART_BEAT).await.map_err(|e| e.to_string())?;
                report.heart_beats_sent += 1;
                last_sent = Instant::now();
            }
            _ = wait(dead_at) => return Err("client went silent".into()),
        }
    }
}

fn handle(
    frame: &Frame,
    subs: &mut Vec<(String, String)>,
    report: &mut Report,
) -> Result<Vec<Frame>, String> {
    Ok(match frame.command {
        Command::Connect => {
            report.connect_headers.push(frame.headers.clone());
            if frame.get("accept-version") != Some("1.2") {
                vec![Frame::error("Version unsupported")]
            } else {
                report.heart_beat = HeartBeat::server(frame.get("heart-beat"));
                vec![Frame::connected(report.heart_beat)]
            }
        }
        Command::Subscribe => match (frame.get("destination"), frame.get("id")) {
            (Some(d), Some(id)) if !d.is_empty() && !id.is_empty() => {
                subs.push((d.to_string(), id.to_string()));
                vec![]
            }
            _ => vec![Frame::error(
                "Missing destination or subscription id header",
            )],
        },
        Command::Unsubscribe => {
            let id = frame.get("id").unwrap_or_default();
            subs.retain(|(_, s)| s != id);
            vec![]
        }
        Command::Send => {
            let dest = frame.get("destination").unwrap_or_default();
            let is_request =
                dest == REQUEST_QUEUE || dest.starts_with(&format!("{REQUEST_QUEUE}."));
            if !is_request {
                return Ok(vec![Frame::error("Subscription not available")]);
            }
            let escaped = frame.get("x-escaped").map(str::to_string);
            if let Some(e) = &escaped {
                report.escaped.push(e.clone());
            }
            let request: Value = serde_json::from_slice(frame.body()).map_err(|e| e.to_string())?;
            let reply = json!({
                "jsonrpc": "2.0",
                "id": request["id"],
                "result": {"method": request["method"], "params": request["params"], "escaped": escaped},
            });
            let body = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
            let reply_to = frame.get("reply-to").unwrap_or_default();
            subs.iter()
                .filter(|(d, _)| d == reply_to)
                .map(|(d, id)| {
                    let mut m = Frame::message(d, id, body.clone());
                    if let Some(e) = &escaped {
                        m = m.with_header("x-echo", e.clone());
                    }
                    m
                })
                .collect()
        }
        Command::Disconnect => match frame.get("receipt") {
            Some(r) => vec![Frame::receipt(r)],
            None => return Err("DISCONNECT without receipt".into()),
        },
        other => return Err(format!("unexpected command {other}")),
    })
}

/// How long a test may wait for the peer.
pub const PATIENCE: Duration = Duration::from_secs(60);
