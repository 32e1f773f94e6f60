//! The table of open connections: registration, the limit (configured or by file
//! descriptors), and which connection makes room when it is full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

use tokio::sync::Notify;

/// File descriptors kept free for volumes, metadata and leases when sizing the table.
const FD_RESERVE: u64 = 64;

/// State shared between a connection's stream and the table.
#[derive(Debug)]
pub struct ConnState {
    /// Milliseconds since the table's epoch of the last byte read or written.
    pub(super) last_active: AtomicU64,
    /// When the connection was accepted (same clock).
    pub(super) created: u64,
    /// Whether a call was ever started or anything written back.
    pub(super) served: AtomicBool,
    /// Calls running now.
    pub(super) busy: AtomicU64,
    /// HTTP requests received (an upgrade is accepted only as the first).
    pub(super) requests: AtomicU64,
    pub(super) write_blocked: AtomicBool,
    /// WebSocket messages that get no answer (JSON-RPC notifications), counted by [`CallGate`].
    pub(super) unanswerable: AtomicU64,
    pub(super) read_waker: Mutex<Option<Waker>>,
    /// Set to close the connection: its stream then fails every read and write.
    pub(super) killed: AtomicBool,
    /// Signalled with `killed`, for the phase before the stream is wrapped (TLS handshake).
    pub kill: Notify,
    /// The connection was upgraded to a WebSocket.
    pub(super) websocket: AtomicBool,
}

impl ConnState {
    /// Closes the connection: the stream fails from now on, whoever holds it (hyper, or
    /// jsonrpsee's WebSocket tasks after an upgrade).
    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
        self.wake_reader();
    }

    /// True once the connection was upgraded to a WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.websocket.load(Ordering::Relaxed)
    }

    /// True once the connection was closed to make room (or by its own rules).
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Closes the connection (a STOMP session that broke a rule or fell behind).
    pub fn close(&self) {
        self.kill();
    }

    /// Wakes the connection's reader if it is paused.
    pub(super) fn wake_reader(&self) {
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
    pub(super) conns: Arc<Connections>,
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

    pub(super) fn now_ms(&self) -> u64 {
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
            websocket: false.into(),
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

/// A call running on a connection: marks it served, and busy until dropped (also when the
/// call's future is dropped unfinished).
pub(super) struct Busy(Arc<ConnState>);

impl Busy {
    pub(super) fn new(state: &Arc<ConnState>) -> Busy {
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
