//! [`Guarded`]: a connection's stream, recording activity and pausing reads from a peer that
//! does not keep up (writes blocked, or too many WebSocket requests unanswered).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::table::{ConnState, Registration};
use super::wire::{Frames, HeadEnd, NOTIFICATION_PREFIX};

/// Requests a WebSocket may have read and not yet answered before the agent stops reading
/// from it. Bounds the tasks (and answers waiting to be sent) one connection can hold.
pub const MAX_UNANSWERED: u64 = 64;

/// A socket with activity tracking and read-side backpressure.
pub struct Guarded<S> {
    inner: S,
    /// Keeps the connection in the table for as long as the stream lives: after a WebSocket
    /// upgrade that is jsonrpsee's tasks, not the task that accepted it.
    reg: Registration,
    wire: Wire,
    /// Counts the connection by dialect (HTTP until it upgrades to a WebSocket).
    gauge: Option<crate::metrics::ConnectionGauge>,
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
            gauge: None,
        }
    }

    /// Counts the connection in `gauge` from now on (its dialect follows an upgrade).
    pub fn with_gauge(mut self, gauge: crate::metrics::ConnectionGauge) -> Guarded<S> {
        self.gauge = Some(gauge);
        self
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
            self.state().websocket.store(true, Ordering::Relaxed);
            if let Some(g) = self.gauge.as_mut() {
                g.switch(crate::metrics::Dialect::WebSocket);
            }
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
