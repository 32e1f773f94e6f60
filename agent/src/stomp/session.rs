//! One STOMP connection: its reader (frames in, commands carried out, calls started), its
//! writer (the outbox and heart-beats out), and the cleanup when either ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sdm_stomp::{
    Command, Decoder, Frame, HeartBeat, Item, Limits, HEART_BEAT, IRS_REQUEST_QUEUE, MAX_INTERVAL,
    REQUEST_QUEUE, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use super::router::{outbox, Broker, Outbox, OutboxReader};
use super::rpc;
use crate::conn::{ConnState, RpcInner};
use crate::metrics;

/// Bounds on one connection.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Frame limits of the decoder (the body limit is the request size limit).
    pub decoder: Limits,
    /// Requests (SEND frames to a request queue) running at once; beyond, reading pauses.
    pub max_in_flight: usize,
    /// Frames queued for the peer before it counts as not reading: it is then closed.
    pub outbox_frames: usize,
    /// Bytes queued for the peer, likewise.
    pub outbox_bytes: usize,
    /// Subscriptions of one connection.
    pub max_subscriptions: usize,
    /// Calls in one batch.
    pub max_batch: usize,
}

/// How long a closing connection may take to write what is queued for it (an ERROR, a
/// RECEIPT) before it is cut.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a closing connection's input is still read and dropped (see [`linger`]).
const LINGER: Duration = Duration::from_millis(500);

/// The peer may be this much later than the heart-beat interval it promised before it counts
/// as silent (VDSM allows none; clients that send exactly on time would be dropped at random).
fn with_grace(d: Duration) -> Duration {
    d + d / 2
}

/// What a session needs besides its stream.
pub struct Session<R> {
    /// The broker of the listener.
    pub broker: Arc<Broker>,
    /// This connection's service (the method table behind the connection's middleware).
    pub rpc: R,
    /// This connection's state in the connection table.
    pub state: Arc<ConnState>,
    /// This connection's id in the broker.
    pub conn: u64,
    /// Bounds.
    pub limits: SessionLimits,
}

/// Removes the connection's subscriptions however the session ends (also when its future is
/// dropped because the connection table closed it).
struct Cleanup {
    broker: Arc<Broker>,
    conn: u64,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.broker.drop_connection(self.conn);
    }
}

/// Serves one STOMP connection whose first bytes (`prefix`) were already read.
pub async fn serve<S, R>(stream: S, prefix: BytesMut, s: Session<R>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: RpcInner,
{
    let _gauge = metrics::ConnectionGauge::new(metrics::Dialect::Stomp);
    let _cleanup = Cleanup {
        broker: s.broker.clone(),
        conn: s.conn,
    };
    let (mut rd, wr) = tokio::io::split(stream);
    let (out, queue) = outbox(
        s.state.clone(),
        s.limits.outbox_frames,
        s.limits.outbox_bytes,
    );
    let heart_beat = Arc::new(AtomicU64::new(0));
    let changed = Arc::new(Notify::new());
    let reader = Reader {
        s: &s,
        out,
        heart_beat: heart_beat.clone(),
        changed: changed.clone(),
        subs: HashMap::new(),
        connected: false,
        expect: None,
        in_flight: Arc::new(Semaphore::new(s.limits.max_in_flight.max(1))),
    };
    let read = reader.run(&mut rd, prefix);
    let write = write_loop(wr, queue, heart_beat, changed);
    tokio::pin!(write);
    tokio::select! {
        why = read => {
            tracing::debug!(why, "STOMP connection ends");
            // Our own outbox went with the reader; the broker's copies go now: the writer
            // then drains what is queued (an ERROR, a RECEIPT) and ends.
            s.broker.drop_connection(s.conn);
            if tokio::time::timeout(DRAIN, write).await.is_ok() {
                linger(&mut rd).await;
            }
        }
        _ = &mut write => {}
    }
}

/// After the last frame went out: reads what the peer still sends for a moment, so that
/// closing does not reset the connection (which could destroy the ERROR in flight).
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = [0u8; 8192];
    let until = Instant::now() + LINGER;
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, rd.read(&mut scratch)).await {
        if n == 0 {
            break;
        }
    }
}

/// Whether a SEND to `destination` is a JSON-RPC request.
fn is_request_queue(destination: &str) -> bool {
    [REQUEST_QUEUE, IRS_REQUEST_QUEUE].iter().any(|q| {
        destination == *q
            || destination
                .strip_prefix(q)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

enum Next {
    Continue,
    Close(&'static str),
}

struct Reader<'a, R> {
    s: &'a Session<R>,
    out: Outbox,
    heart_beat: Arc<AtomicU64>,
    changed: Arc<Notify>,
    /// Subscription id → destination.
    subs: HashMap<String, String>,
    connected: bool,
    /// How long the peer may stay silent (negotiated, with grace).
    expect: Option<Duration>,
    in_flight: Arc<Semaphore>,
}

impl<R: RpcInner> Reader<'_, R> {
    async fn run<T: AsyncRead + Unpin>(mut self, rd: &mut T, mut buf: BytesMut) -> &'static str {
        let mut dec = Decoder::new(self.s.limits.decoder);
        loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(Some(Item::Frame(f))) => {
                        if let Next::Close(why) = self.handle(f).await {
                            metrics::stomp_dropped(why);
                            return why;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(error = %e, "STOMP protocol error; closing");
                        self.out.push(&Frame::error(&e.to_string()));
                        metrics::stomp_dropped(e.kind());
                        return "protocol_error";
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            let read = rd.read_buf(&mut buf);
            let n = match self.expect {
                Some(d) => match tokio::time::timeout(d, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::info!(after = ?d, "STOMP client silent past its heart-beat; closing");
                        metrics::stomp_dropped("silent");
                        return "silent";
                    }
                },
                None => read.await,
            };
            match n {
                Ok(0) => {
                    return if buf.is_empty() && dec.is_idle() {
                        "closed"
                    } else {
                        "closed mid-frame"
                    }
                }
                Ok(_) => {}
                Err(_) => return "read failed",
            }
        }
    }

    fn error(&self, text: &str) -> Next {
        self.out.push(&Frame::error(text));
        Next::Continue
    }

    async fn handle(&mut self, f: Frame) -> Next {
        match f.command {
            Command::Connect => {
                if f.get("accept-version") != Some(VERSION) {
                    // As VDSM: refused, the connection stays open for another CONNECT.
                    return self.error("Version unsupported");
                }
                let hb = HeartBeat::server(f.get("heart-beat"));
                self.out.push(&Frame::connected(hb));
                self.heart_beat.store(hb.send_ms, Ordering::Relaxed);
                self.changed.notify_one();
                self.expect = hb.expect_interval().map(with_grace);
                self.connected = true;
                Next::Continue
            }
            // VDSM would carry out frames sent before CONNECT; sdm answers them with ERROR
            // and closes (a client that skips CONNECT has not negotiated anything).
            _ if !self.connected => {
                self.out.push(&Frame::error(&format!(
                    "{} before CONNECT: send CONNECT (accept-version:1.2) first",
                    f.command
                )));
                Next::Close("not_connected")
            }
            Command::Subscribe => self.subscribe(&f),
            Command::Unsubscribe => {
                let Some(id) = f.get("id").filter(|v| !v.is_empty()) else {
                    return self.error("Missing id header");
                };
                if let Some(dest) = self.subs.remove(id) {
                    self.s.broker.unsubscribe(self.s.conn, &dest, id);
                }
                Next::Continue
            }
            Command::Send => self.send(f).await,
            Command::Disconnect => match f.get("receipt").filter(|r| !r.is_empty()) {
                Some(r) => {
                    // As VDSM: the receipt, then the client closes.
                    self.out.push(&Frame::receipt(r));
                    Next::Continue
                }
                None => Next::Close("disconnect"),
            },
            other => {
                self.out
                    .push(&Frame::error(&format!("unsupported command {other}")));
                Next::Close("unsupported_command")
            }
        }
    }

    fn subscribe(&mut self, f: &Frame) -> Next {
        let (Some(dest), Some(id)) = (
            f.get("destination").filter(|v| !v.is_empty()),
            f.get("id").filter(|v| !v.is_empty()),
        ) else {
            return self.error("Missing destination or subscription id header");
        };
        if self.subs.contains_key(id) {
            return self.error("Subscription id already exists");
        }
        if self.subs.len() >= self.s.limits.max_subscriptions {
            return self.error(&format!(
                "Too many subscriptions (at most {} per connection)",
                self.s.limits.max_subscriptions
            ));
        }
        self.subs.insert(id.to_string(), dest.to_string());
        self.s.broker.subscribe(self.s.conn, dest, id, &self.out);
        Next::Continue
    }

    async fn send(&mut self, f: Frame) -> Next {
        let Some(dest) = f.get("destination").filter(|d| !d.is_empty()) else {
            return self.error("Missing destination header");
        };
        let forwarded = self.s.broker.forward(dest, &f);
        if !is_request_queue(dest) {
            if forwarded == 0 {
                return self.error("Subscription not available");
            }
            return Next::Continue;
        }
        // Backpressure: at most so many calls of this connection run; reading waits here.
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return Next::Close("shutting down");
        };
        let body: Bytes = f.body.clone().unwrap_or_default();
        let reply_to = f.get("reply-to").map(str::to_string);
        for id in rpc::request_ids(&body).into_iter().flatten() {
            self.s.broker.expect_reply(id, reply_to.clone());
        }
        let span = tracing::info_span!(
            "stomp_request",
            flow_id = f.get("ovirtCorrelationId").unwrap_or(""),
            reply_to = reply_to.as_deref().unwrap_or("")
        );
        let (svc, broker, max_batch) = (
            self.s.rpc.clone(),
            self.s.broker.clone(),
            self.s.limits.max_batch,
        );
        tokio::spawn(
            async move {
                let answers = rpc::run(&svc, &body, max_batch).await;
                rpc::deliver(&broker, answers);
                drop(permit);
            }
            .instrument(span),
        );
        Next::Continue
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut queue: OutboxReader,
    heart_beat: Arc<AtomicU64>,
    changed: Arc<Notify>,
) {
    let mut last = Instant::now();
    loop {
        let ms = heart_beat.load(Ordering::Relaxed);
        let due = (ms > 0).then(|| last + Duration::from_millis(ms).min(MAX_INTERVAL));
        tokio::select! {
            next = queue.next() => match next {
                Some(b) => {
                    if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                        return;
                    }
                    last = Instant::now();
                }
                None => {
                    let _ = wr.shutdown().await;
                    return;
                }
            },
            _ = sleep_until_some(due) => {
                if wr.write_all(HEART_BEAT).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                last = Instant::now();
            }
            _ = changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_queues_and_their_sub_destinations() {
        assert!(is_request_queue("jms.topic.vdsm_requests"));
        assert!(is_request_queue("jms.topic.vdsm_irs_requests"));
        assert!(is_request_queue("jms.topic.vdsm_requests.host1"));
        assert!(!is_request_queue("jms.topic.vdsm_requestsX"));
        assert!(!is_request_queue("jms.topic"));
        assert_eq!(with_grace(Duration::from_secs(10)), Duration::from_secs(15));
    }
}
