//! STOMP 1.2 as VDSM serves it, on the agent's one port (the listener, `crate::rpc::serve`,
//! detects it from a connection's first bytes and gives each session its service; this module
//! does not depend on `rpc`): JSON-RPC requests arrive as SEND frames to
//! `jms.topic.vdsm_requests` (or `jms.topic.vdsm_irs_requests`, or a sub-destination of
//! either) and run through the same method table and middleware as HTTP calls; their replies
//! go out as MESSAGE frames to every subscriber of the request's `reply-to`; job events go to
//! the subscribers of `jms.queue.events`. Engine authors: `docs/stomp.md`.
//!
//! - [`session`]: one connection: CONNECT/CONNECTED with VDSM's heart-beat arithmetic
//!   (heart-beats written when idle, a silent peer dropped), SUBSCRIBE/UNSUBSCRIBE, SEND,
//!   DISCONNECT with RECEIPT, ERROR for protocol errors; a bounded outbox and a bound on calls
//!   in flight per connection.
//! - [`router`]: what every connection shares: subscriptions, the request id → `reply-to`
//!   map, delivery into the connections' outboxes.
//! - [`rpc`]: a SEND body as one JSON-RPC request or a batch, every answer routed on its own.
//! - [`events`]: job events as `|jobs|status|<job_id>` notifications.
//!
//! Frames are encoded and decoded by `sdm-stomp`, byte for byte as VDSM writes them.

mod events;
mod router;
mod rpc;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

pub use events::{event_body, notify_time};
pub use router::Broker;
pub use session::SessionLimits;

use crate::config::ServerConfig;
use crate::conn::{Registration, RpcInner};
use crate::jobs::Jobs;

/// The STOMP side of a listener: the shared broker and the bounds of every session.
pub struct Stomp {
    broker: Arc<Broker>,
    limits: SessionLimits,
    next_conn: AtomicU64,
}

/// A STOMP connection ready to be served, once detection says it is one; `R` is its
/// service (the method table behind the connection's middleware, `crate::rpc::stomp_service`).
pub struct Pending<R> {
    session: session::Session<R>,
}

impl Stomp {
    /// The STOMP side of a listener within the `[server]` limits, and the publisher of
    /// `jobs`' events.
    pub fn new(cfg: &ServerConfig, jobs: &Arc<Jobs>) -> Arc<Stomp> {
        let body = cfg.max_request_body_bytes as usize;
        let max_response = cfg.max_response_body_bytes as usize;
        let limits = SessionLimits {
            decoder: sdm_stomp::Limits {
                max_line_bytes: 4096,
                max_headers: 64,
                max_body_bytes: body,
                max_frame_bytes: body + (64 << 10),
            },
            max_in_flight: crate::conn::MAX_UNANSWERED as usize,
            outbox_frames: 1024,
            outbox_bytes: max_response + (1 << 20),
            max_subscriptions: cfg.max_subscriptions_per_connection as usize,
            max_batch: cfg.max_batch_len as usize,
        };
        let broker = Broker::new();
        events::spawn_publisher(jobs, broker.clone());
        Arc::new(Stomp {
            broker,
            limits,
            next_conn: AtomicU64::new(1),
        })
    }

    /// Prepares serving connection `reg` (before its registration moves into the stream);
    /// `service` makes the connection's service from its id.
    pub fn prepare<R: RpcInner>(
        &self,
        reg: &Registration,
        service: impl FnOnce(u64) -> R,
    ) -> Pending<R> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Pending {
            session: session::Session {
                broker: self.broker.clone(),
                rpc: service(conn),
                state: reg.state.clone(),
                conn,
                limits: self.limits,
            },
        }
    }
}

impl<R: RpcInner> Pending<R> {
    /// Serves the connection; `prefix` holds the bytes detection read.
    pub async fn serve<S>(self, stream: S, prefix: BytesMut)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        session::serve(stream, prefix, self.session).await
    }
}
