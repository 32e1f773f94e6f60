//! Connection bookkeeping of the listener: a bound on open connections that also holds when
//! clients open connections and then go quiet, and backpressure for clients that send requests
//! without reading the answers.
//!
//! jsonrpsee's own `max_connections` counts requests being served, not sockets, so idle
//! keep-alive connections, slow-loris senders and idle WebSockets would otherwise pile up until
//! the agent runs out of file descriptors. Here every accepted socket is registered for as long
//! as its stream lives; when the table is full (the configured maximum, or the file-descriptor
//! limit less a reserve), the oldest connection that has not started a call is closed to make
//! room, else the one idle longest; only when every connection has a call running is the
//! newcomer refused.
//!
//! Every socket is wrapped in [`Guarded`]: it records activity, and it stops reading more
//! requests from a peer that is not keeping up. Two signals pause reading: writes to the peer
//! are blocked (it is not reading what we send), or a WebSocket has [`MAX_UNANSWERED`]
//! requests without an answer written back. The second matters because jsonrpsee starts a task
//! for every WebSocket message as soon as it is read, before any answer is due; counting
//! messages in and answers out on the wire is what bounds those tasks. Only the first request
//! of a connection may upgrade it to a WebSocket ([`UpgradeGate`] answers a later one 400), and
//! the client must wait for the 101 before sending frames (RFC 6455 4.1; a connection that does
//! not is closed): that way the frames are counted from a known first byte.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::core::server::MethodResponse;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use jsonrpsee::types::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// File descriptors kept free for volumes, metadata and leases when sizing the table.
const FD_RESERVE: u64 = 64;

/// Requests a WebSocket may have read and not yet answered before the agent stops reading
/// from it. Bounds the tasks (and answers waiting to be sent) one connection can hold.
pub const MAX_UNANSWERED: u64 = 64;

/// State shared between a connection's stream and the table.
#[derive(Debug)]
pub struct ConnState {
    /// Milliseconds since the table's epoch of the last byte read or written.
    last_active: AtomicU64,
    /// When the connection was accepted (same clock).
    created: u64,
    /// Whether a call was ever started or anything written back.
    served: AtomicBool,
    /// Calls running now.
    busy: AtomicU64,
    /// HTTP requests received (an upgrade is accepted only as the first).
    requests: AtomicU64,
    write_blocked: AtomicBool,
    /// WebSocket messages that get no answer (JSON-RPC notifications), counted by [`CallGate`].
    unanswerable: AtomicU64,
    read_waker: Mutex<Option<Waker>>,
    /// Set to close the connection: its stream then fails every read and write.
    killed: AtomicBool,
    /// Signalled with `killed`, for the phase before the stream is wrapped (TLS handshake).
    pub kill: Notify,
}

impl ConnState {
    /// Closes the connection: the stream fails from now on, whoever holds it (hyper, or
    /// jsonrpsee's WebSocket tasks after an upgrade).
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
        self.wake_reader();
    }

    /// Wakes the connection's reader if it is paused.
    fn wake_reader(&self) {
        if let Some(w) = self
            .read_waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            w.wake();
        }
    }
}

/// The table of open connections.
#[derive(Debug)]
pub struct Connections {
    epoch: Instant,
    max: usize,
    next: AtomicU64,
    table: Mutex<HashMap<u64, Arc<ConnState>>>,
}

/// A registered connection; unregisters on drop.
pub struct Registration {
    conns: Arc<Connections>,
    id: u64,
    /// The connection's state (give it to [`Guarded`]).
    pub state: Arc<ConnState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return u64::MAX;
    }
    rl.rlim_cur
}

impl Connections {
    /// A table for at most `max` connections.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            epoch: Instant::now(),
            max,
            next: 0.into(),
            table: Mutex::new(HashMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current limit: the configured maximum, or what the file-descriptor limit allows
    /// (read each time: an operator may change it on the running process).
    pub fn capacity(&self) -> usize {
        let by_fds = fd_limit().saturating_sub(FD_RESERVE).max(1);
        self.max.min(usize::try_from(by_fds).unwrap_or(usize::MAX))
    }

    /// Registers a new connection, closing another to make room if the table is full. None:
    /// every connection in the table has a call running; close the newcomer.
    pub fn register(self: &Arc<Self>) -> Option<Registration> {
        let now = self.now_ms();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= self.capacity() {
            // First the oldest connection that has not started a single call (a slow-loris
            // sender, a silent one, or a client slower to send its request than everyone who
            // connected after it), then the one idle longest. Closing an idle keep-alive
            // connection is ordinary HTTP (clients reconnect), and WebSocket clients reconnect
            // the same way.
            let unserved = table
                .iter()
                .filter(|(_, s)| !s.served.load(Ordering::Relaxed))
                .min_by_key(|(id, s)| (s.created, **id))
                .map(|(id, s)| (*id, s.clone()));
            // A connection with a call running is never closed: if all have one, the agent is
            // saturated and the newcomer is the one refused.
            let victim = unserved.or_else(|| {
                table
                    .iter()
                    .filter(|(_, s)| s.busy.load(Ordering::Relaxed) == 0)
                    .min_by_key(|(id, s)| (s.last_active.load(Ordering::Relaxed), **id))
                    .map(|(id, s)| (*id, s.clone()))
            })?;
            table.remove(&victim.0);
            victim.1.kill();
            tracing::debug!("closed a slow or quiet connection to make room");
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            last_active: now.into(),
            created: now,
            served: false.into(),
            busy: 0.into(),
            requests: 0.into(),
            write_blocked: false.into(),
            unanswerable: 0.into(),
            read_waker: Mutex::new(None),
            killed: false.into(),
            kill: Notify::new(),
        });
        table.insert(id, state.clone());
        Some(Registration {
            conns: self.clone(),
            id,
            state,
        })
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A socket with activity tracking and read-side backpressure.
pub struct Guarded<S> {
    inner: S,
    /// Keeps the connection in the table for as long as the stream lives: after a WebSocket
    /// upgrade that is jsonrpsee's tasks, not the task that accepted it.
    reg: Registration,
    wire: Wire,
}

/// What flows on a connection, as far as counting requests and answers needs to know.
#[derive(Debug)]
enum Wire {
    /// HTTP/1. `read` finds where the first request's head ends; `wrote` counts bytes sent;
    /// `switching` scans a 101 answer being written for its end.
    Http {
        read: HeadEnd,
        wrote: u64,
        switching: Option<HeadEnd>,
    },
    /// A WebSocket: messages read in, answers written out.
    Ws {
        inbound: Frames,
        outbound: Frames,
        received: u64,
        answered: u64,
    },
    /// An upgrade that broke the rules above: not counted, the connection is being closed.
    Closing,
}

/// Answers start this way; subscription notifications (not answers) with the method instead.
const NOTIFICATION_PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method":"#;

impl<S> Guarded<S> {
    /// Wraps `inner` for the connection `reg`.
    pub fn new(inner: S, reg: Registration) -> Guarded<S> {
        Guarded {
            inner,
            reg,
            wire: Wire::Http {
                read: HeadEnd::default(),
                wrote: 0,
                switching: None,
            },
        }
    }

    fn state(&self) -> &ConnState {
        &self.reg.state
    }

    fn touch(&self) {
        self.state()
            .last_active
            .store(self.reg.conns.now_ms(), Ordering::Relaxed);
    }

    /// Whether reading must pause now.
    fn paused(&self) -> bool {
        if self.state().write_blocked.load(Ordering::Acquire) {
            return true;
        }
        match &self.wire {
            Wire::Ws {
                received, answered, ..
            } => {
                let settled = answered + self.state().unanswerable.load(Ordering::Acquire);
                received.saturating_sub(settled) >= MAX_UNANSWERED
            }
            _ => false,
        }
    }

    fn read_bytes(&mut self, b: &[u8]) {
        match &mut self.wire {
            Wire::Http { read, .. } => {
                read.feed(b);
            }
            Wire::Ws {
                inbound, received, ..
            } => inbound.feed(b, |_| *received += 1),
            Wire::Closing => {}
        }
    }

    fn wrote_bytes(&mut self, mut b: &[u8]) {
        if let Wire::Http {
            read,
            wrote,
            switching,
        } = &mut self.wire
        {
            if switching.is_none() && b.starts_with(b"HTTP/1.1 101") {
                if *wrote > 0 {
                    // An upgrade after other requests: its frames start at an unknown place.
                    tracing::info!("closing a connection upgraded after other requests");
                    self.close();
                    return;
                }
                *switching = Some(HeadEnd::default());
            }
            *wrote += b.len() as u64;
            let Some(head) = switching else { return };
            let Some(end) = head.feed(b) else { return };
            // Frames may only follow the 101: bytes read past the request head came too early.
            if read.end != Some(read.seen) {
                tracing::info!("closing a WebSocket whose client sent frames before the 101");
                self.close();
                return;
            }
            b = &b[end..];
            self.wire = Wire::Ws {
                inbound: Frames::default(),
                outbound: Frames::default(),
                received: 0,
                answered: 0,
            };
        }
        if let Wire::Ws {
            outbound, answered, ..
        } = &mut self.wire
        {
            let before = *answered;
            outbound.feed(b, |first| {
                if !first.starts_with(NOTIFICATION_PREFIX) {
                    *answered += 1;
                }
            });
            if *answered != before {
                self.state().wake_reader();
            }
        }
    }

    fn close(&mut self) {
        self.wire = Wire::Closing;
        self.state().kill();
    }

    fn killed(&self) -> bool {
        self.state().killed.load(Ordering::Acquire)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The waker is kept even when not paused, so that a kill reaches a reader waiting on
        // the socket.
        *self
            .state()
            .read_waker
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if self.killed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        // Checked after registering, so progress made in between is not missed.
        if self.paused() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
            self.read_bytes(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.state().write_blocked.store(true, Ordering::Release),
            Poll::Ready(_) => {
                if self.state().write_blocked.swap(false, Ordering::AcqRel) {
                    self.state().wake_reader();
                }
                if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
                    self.state().served.store(true, Ordering::Relaxed);
                    self.touch();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&r);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote_bytes(&data[..n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        if let Poll::Ready(Ok(mut n)) = r {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let k = n.min(b.len());
                self.wrote_bytes(&b[..k]);
                n -= k;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Finds the end of an HTTP head (the first blank line) in a stream fed piece by piece.
#[derive(Debug, Default)]
struct HeadEnd {
    /// Bytes fed so far.
    seen: u64,
    /// How much of "\r\n\r\n" the last bytes matched.
    matched: usize,
    /// Stream offset just past the blank line, once seen.
    end: Option<u64>,
}

impl HeadEnd {
    /// Feeds `b`; returns the index in `b` just past the head's end if it ends in `b`.
    fn feed(&mut self, b: &[u8]) -> Option<usize> {
        let start = self.seen;
        self.seen += b.len() as u64;
        if self.end.is_some() {
            return None;
        }
        for (i, &c) in b.iter().enumerate() {
            let want = b"\r\n\r\n"[self.matched];
            self.matched = if c == want {
                self.matched + 1
            } else if c == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                self.end = Some(start + i as u64 + 1);
                return Some(i + 1);
            }
        }
        None
    }
}

/// Follows WebSocket framing (RFC 6455 5.2) in one direction, to count whole data messages.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame not yet passed.
    left: u64,
    in_payload: bool,
    /// The current frame is the last of a data message.
    ends_message: bool,
    /// The current frame is the first of a data message: its first bytes are kept.
    first: bool,
    prefix: [u8; 32],
    prefix_len: usize,
}

impl Frames {
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Feeds `b`; calls `message` with the first bytes of every data message that ends in it.
    fn feed(&mut self, mut b: &[u8], mut message: impl FnMut(&[u8])) {
        loop {
            if self.in_payload {
                let n = self.left.min(b.len() as u64) as usize;
                if self.first && self.prefix_len < self.prefix.len() {
                    let k = n.min(self.prefix.len() - self.prefix_len);
                    self.prefix[self.prefix_len..self.prefix_len + k].copy_from_slice(&b[..k]);
                    self.prefix_len += k;
                }
                self.left -= n as u64;
                b = &b[n..];
                if self.left > 0 {
                    return;
                }
                self.in_payload = false;
                if self.ends_message {
                    message(&self.prefix[..self.prefix_len]);
                }
                continue;
            }
            while self.have < self.header_len() {
                let Some((&c, rest)) = b.split_first() else {
                    return;
                };
                self.header[self.have] = c;
                self.have += 1;
                b = rest;
            }
            let h = &self.header;
            let fin = h[0] & 0x80 != 0;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                127 => u64::from_be_bytes(h[2..10].try_into().expect("eight bytes")),
                n => u64::from(n),
            };
            let data = opcode < 8;
            // Control frames may come between the fragments of a message: they leave its
            // state alone.
            if data {
                self.first = opcode != 0;
                if self.first {
                    self.prefix_len = 0;
                }
                self.ends_message = fin;
            } else {
                self.first = false;
                self.ends_message = false;
            }
            self.have = 0;
            self.left = len;
            self.in_payload = true;
        }
    }
}

/// RPC middleware of one connection: marks it served at its first call, and counts the
/// WebSocket messages that will get no answer (notifications) so that [`Guarded`]'s count of
/// unanswered requests stays exact.
#[derive(Clone)]
pub struct CallGate<S> {
    inner: S,
    state: Arc<ConnState>,
}

/// Layer of [`CallGate`] for the connection `reg`.
#[derive(Clone)]
pub struct CallGateLayer(Arc<ConnState>);

impl CallGateLayer {
    /// The layer for a registered connection.
    pub fn new(reg: &Registration) -> CallGateLayer {
        CallGateLayer(reg.state.clone())
    }
}

impl<S> tower::Layer<S> for CallGateLayer {
    type Service = CallGate<S>;
    fn layer(&self, inner: S) -> CallGate<S> {
        CallGate {
            inner,
            state: self.0.clone(),
        }
    }
}

impl<S> CallGate<S> {
    fn unanswerable(&self) {
        self.state.unanswerable.fetch_add(1, Ordering::AcqRel);
        self.state.wake_reader();
    }
}

impl<S> RpcServiceT for CallGate<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let busy = Busy::new(&self.state);
        let call = self.inner.call(request);
        async move {
            let rp = call.await;
            drop(busy);
            rp
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let busy = Busy::new(&self.state);
        let this = self.clone();
        async move {
            let rp = this.inner.batch(batch).await;
            drop(busy);
            // A batch of notifications only is answered with nothing at all.
            if !rp.is_batch() && !rp.is_method_call() {
                this.unanswerable();
            }
            rp
        }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.state.served.store(true, Ordering::Relaxed);
        self.unanswerable();
        self.inner.notification(n)
    }
}

/// HTTP middleware of one connection: a WebSocket upgrade is accepted only as the first
/// request of a connection, where [`Guarded`] knows the exact byte at which frames start;
/// a later one is answered 400 and the connection closed.
#[derive(Clone)]
pub struct UpgradeGateLayer(Arc<ConnState>);

impl UpgradeGateLayer {
    /// The layer for a registered connection.
    pub fn new(reg: &Registration) -> UpgradeGateLayer {
        UpgradeGateLayer(reg.state.clone())
    }
}

impl<S> tower::Layer<S> for UpgradeGateLayer {
    type Service = UpgradeGate<S>;
    fn layer(&self, inner: S) -> UpgradeGate<S> {
        UpgradeGate {
            inner,
            state: self.0.clone(),
        }
    }
}

/// See [`UpgradeGateLayer`].
pub struct UpgradeGate<S> {
    inner: S,
    state: Arc<ConnState>,
}

fn asks_for_websocket<B>(req: &HttpRequest<B>) -> bool {
    req.headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(9)
                .any(|w| w == b"websocket")
        })
}

impl<S, B> tower::Service<HttpRequest<B>> for UpgradeGate<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        let first = self.state.requests.fetch_add(1, Ordering::Relaxed) == 0;
        if !first && asks_for_websocket(&req) {
            let mut rp = HttpResponse::new(HttpBody::from(
                "a WebSocket upgrade must be the first request of a connection\n",
            ));
            *rp.status_mut() = http::StatusCode::BAD_REQUEST;
            rp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return Box::pin(async move { Ok(rp) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// A call running on a connection: marks it served, and busy until dropped (also when the
/// call's future is dropped unfinished).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: &Arc<ConnState>) -> Busy {
        state.served.store(true, Ordering::Relaxed);
        state.busy.fetch_add(1, Ordering::Relaxed);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WebSocket frame as a client (masked) or the server (unmasked) would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [1u8, 2, 3, 4];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    fn messages(stream: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut fr = Frames::default();
        let mut got = Vec::new();
        for p in stream.chunks(piece) {
            fr.feed(p, |first| got.push(first.to_vec()));
        }
        got
    }

    #[test]
    fn frames_count_whole_data_messages_fed_in_any_pieces() {
        let answer = br#"{"jsonrpc":"2.0","id":1,"result":true}"#;
        let note = br#"{"jsonrpc":"2.0","method":"Job.event","params":{}}"#;
        let big = vec![b'x'; 70_000];
        let mut s = Vec::new();
        s.extend(frame(true, 1, answer, false));
        s.extend(frame(true, 9, b"ping", false)); // control: not a message
        s.extend(frame(false, 1, note, false)); // first fragment ...
        s.extend(frame(true, 10, b"", false)); // ... a pong between fragments ...
        s.extend(frame(true, 0, b"tail", false)); // ... and the last one
        s.extend(frame(true, 2, &big, false)); // 64-bit length
        s.extend(frame(true, 1, &big[..300], true)); // 16-bit length, masked
        s.extend(frame(true, 1, b"", false)); // empty message
        s.extend(frame(true, 8, b"", false)); // close: not a message
        for piece in [1, 2, 3, 7, 64, 1000, s.len()] {
            let got = messages(&s, piece);
            assert_eq!(got.len(), 5, "piece {piece}");
            assert!(!got[0].starts_with(NOTIFICATION_PREFIX));
            assert!(got[1].starts_with(NOTIFICATION_PREFIX), "piece {piece}");
            assert_eq!(got[2], vec![b'x'; 32]);
            assert_eq!(got[4], b"");
        }
        // A message is counted only once its last byte has passed.
        let one = frame(true, 1, answer, true);
        assert!(messages(&one[..one.len() - 1], 5).is_empty());
    }

    #[test]
    fn head_end_is_found_across_pieces() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n";
        for piece in 1..req.len() {
            let mut h = HeadEnd::default();
            let mut at = None;
            for (i, p) in req.chunks(piece).enumerate() {
                if let Some(e) = h.feed(p) {
                    at = Some(i * piece + e);
                }
            }
            assert_eq!(at, Some(req.len()), "piece {piece}");
            assert_eq!(h.end, Some(h.seen));
        }
        let mut h = HeadEnd::default();
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\n\r\n\x81"), Some(18));
        assert_ne!(h.end, Some(h.seen), "a byte after the head is seen");
    }

    #[test]
    fn a_full_table_closes_unserved_then_quiet_connections_or_refuses() {
        let c = Connections::new(2);
        let a = c.register().unwrap();
        let b = c.register().unwrap();
        // Neither has started a call: the older one makes room, however young.
        let b2 = c.register().unwrap();
        assert!(
            a.state.killed.load(Ordering::Relaxed),
            "the oldest unserved is closed"
        );
        assert!(!b.state.killed.load(Ordering::Relaxed));
        assert_eq!(c.len(), 2);
        drop(a);
        assert_eq!(c.len(), 2, "the evicted entry was already removed");

        // Both served, one with a call running: only the idle one may go, however recent.
        let busy = Busy::new(&b.state);
        b2.state.served.store(true, Ordering::Relaxed);
        b.state.last_active.store(0, Ordering::Relaxed);
        let b3 = c.register().unwrap();
        assert!(b2.state.killed.load(Ordering::Relaxed));
        assert!(
            !b.state.killed.load(Ordering::Relaxed),
            "a connection with a call running stays"
        );

        // Every connection has a call running: the newcomer is refused.
        let busy3 = Busy::new(&b3.state);
        assert!(c.register().is_none());
        drop(busy);
        let _b4 = c.register().unwrap();
        assert!(
            b.state.killed.load(Ordering::Relaxed),
            "idle again, it makes room"
        );
        drop(busy3);
    }
}
