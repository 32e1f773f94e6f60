//! Connection bookkeeping of the listener: a bound on open connections that also holds when
//! clients open connections and then go quiet, and backpressure for clients that send requests
//! without reading the answers.
//!
//! jsonrpsee's own `max_connections` counts requests being served, not sockets, so idle
//! keep-alive connections, slow-loris senders and idle WebSockets would otherwise pile up until
//! the agent runs out of file descriptors. Here every accepted socket is registered; when the
//! table is full (the configured maximum, or the file-descriptor limit less a reserve), the
//! connection quiet for longest is closed to make room, and if none is quiet the newcomer is.
//!
//! Every socket is wrapped in [`Guarded`]: it records activity, and while its writes are
//! blocked — the peer is not reading what we send — it stops reading more requests from it,
//! so a WebSocket client that never reads cannot make the agent queue calls without bound.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// File descriptors kept free for volumes, metadata and leases when sizing the table.
const FD_RESERVE: u64 = 64;

/// A connection that has not received a single answer this long after it was accepted is a
/// slow sender (slow-loris): the first to be closed to make room.
const UNANSWERED_TO_EVICT: Duration = Duration::from_secs(1);

/// A connection is only closed to make room after being quiet for this long (a connection
/// between two requests of a busy client is quiet for far less).
const MIN_IDLE_TO_EVICT: Duration = Duration::from_millis(50);

/// State shared between a connection's stream and the table.
#[derive(Debug)]
pub struct ConnState {
    /// Milliseconds since the table's epoch of the last byte read or written.
    last_active: AtomicU64,
    /// When the connection was accepted (same clock).
    created: u64,
    /// Whether anything was ever written back (a first answer).
    answered: AtomicBool,
    write_blocked: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    /// Signalled to close the connection.
    pub kill: Notify,
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

    /// Registers a new connection, closing the longest-quiet one if the table is full. None:
    /// the table is full of active connections; close the newcomer.
    pub fn register(self: &Arc<Self>) -> Option<Registration> {
        let now = self.now_ms();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= self.capacity() {
            // First a slow sender that never got an answer, then the longest-quiet connection.
            let slow = table
                .iter()
                .filter(|(_, s)| {
                    !s.answered.load(Ordering::Relaxed)
                        && now.saturating_sub(s.created) >= UNANSWERED_TO_EVICT.as_millis() as u64
                })
                .min_by_key(|(_, s)| s.created)
                .map(|(id, s)| (*id, s.clone()));
            let victim = slow.or_else(|| {
                table
                    .iter()
                    .map(|(id, s)| (*id, s.clone(), s.last_active.load(Ordering::Relaxed)))
                    .filter(|(_, _, t)| {
                        now.saturating_sub(*t) >= MIN_IDLE_TO_EVICT.as_millis() as u64
                    })
                    .min_by_key(|(_, _, t)| *t)
                    .map(|(id, s, _)| (id, s))
            })?;
            table.remove(&victim.0);
            victim.1.kill.notify_one();
            tracing::debug!("closed a slow or quiet connection to make room");
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            last_active: now.into(),
            created: now,
            answered: false.into(),
            write_blocked: false.into(),
            read_waker: Mutex::new(None),
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
    state: Arc<ConnState>,
    conns: Arc<Connections>,
}

impl<S> Guarded<S> {
    /// Wraps `inner` for the connection `reg`.
    pub fn new(inner: S, reg: &Registration) -> Guarded<S> {
        Guarded {
            inner,
            state: reg.state.clone(),
            conns: reg.conns.clone(),
        }
    }

    fn touch(&self) {
        self.state
            .last_active
            .store(self.conns.now_ms(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.state.write_blocked.load(Ordering::Acquire) {
            *self
                .state
                .read_waker
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // Re-check after registering, so a write finishing in between is not missed.
            if self.state.write_blocked.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Release),
            Poll::Ready(_) => {
                if self.state.write_blocked.swap(false, Ordering::AcqRel) {
                    if let Some(w) = self
                        .state
                        .read_waker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                    {
                        w.wake();
                    }
                }
                if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
                    self.state.answered.store(true, Ordering::Relaxed);
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
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_closes_the_longest_quiet_connection_or_refuses() {
        let c = Connections::new(2);
        let a = c.register().unwrap();
        let _b = c.register().unwrap();
        // Both are fresh: the newcomer is refused.
        assert!(c.register().is_none());
        a.state.last_active.store(0, Ordering::Relaxed);
        std::thread::sleep(MIN_IDLE_TO_EVICT + Duration::from_millis(50));
        let _b2 = c.register().unwrap();
        assert_eq!(c.len(), 2);
        drop(a);
        assert_eq!(c.len(), 2, "the evicted entry was already removed");
    }
}
