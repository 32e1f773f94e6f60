//! Registrations with the daemon, and the thread that notices at once when one is lost.
//!
//! A registration is a connection the daemon ties leases to: when it closes, the daemon
//! releases every lease acquired through it, and when the daemon dies or restarts, every
//! lease is gone without this process being told. The watcher thread polls each registered
//! socket for hang-up (`POLLRDHUP`/`POLLHUP`/`POLLERR`) without ever reading from it, so it
//! cannot steal a reply from libsanlock, which reads on the same socket during acquire and
//! release. A lost registration is marked at once (so [`crate::Lease::verify_fast`] fails),
//! counted, and reported to every subscriber.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// What subscribers of [`crate::SanlockLeases::on_registration_lost`] are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationLost {
    /// The lockspace (domain UUID) whose leases were held through the lost registration:
    /// every lease of this process in it is gone.
    pub lockspace: String,
    /// Why it counts as lost (daemon hung up, or a command failed on the connection).
    pub reason: String,
    /// [`crate::SanlockLeases::registrations_lost`] after this loss.
    pub losses: u64,
}

/// One registration connection, for the leases of one lockspace.
pub(crate) struct Registration {
    fd: OwnedFd,
    lockspace: String,
    lost: AtomicBool,
    reason: OnceLock<String>,
}

impl Registration {
    pub(crate) fn new(fd: OwnedFd, lockspace: &str) -> Arc<Registration> {
        Arc::new(Registration {
            fd,
            lockspace: lockspace.to_string(),
            lost: AtomicBool::new(false),
            reason: OnceLock::new(),
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Why it was lost ("" while it is not).
    pub(crate) fn reason(&self) -> &str {
        self.reason.get().map(String::as_str).unwrap_or("")
    }

    /// Shuts the connection down both ways: a thread blocked reading a reply on it wakes up
    /// with an error, and the daemon, when it runs again, sees the hang-up and releases every
    /// lease held through it (instead of killing this process for holding leases in a
    /// lockspace whose renewal failed meanwhile).
    fn shut_down(&self) {
        // SAFETY: shutdown(2) on a socket this registration owns; it does not close the
        // descriptor, so a thread still using it sees errors, never a reused number.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    fn mark(&self, why: &str) -> bool {
        let _ = self.reason.set(why.to_string());
        !self.lost.swap(true, Ordering::AcqRel)
    }
}

type Callback = Arc<dyn Fn(&RegistrationLost) + Send + Sync>;

#[derive(Default)]
struct State {
    /// Registrations being watched; a lost one leaves the list when it is reported.
    regs: Vec<Arc<Registration>>,
    subs: Vec<(u64, Callback)>,
    next_sub: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    losses: AtomicU64,
    /// Self-pipe (read end, write end) that wakes the thread when the list changes; created
    /// with the thread.
    wake: OnceLock<(OwnedFd, OwnedFd)>,
}

/// The registration watcher; the thread starts with the first registration.
pub(crate) struct Watch {
    shared: Arc<Shared>,
}

/// Keeps a [`crate::SanlockLeases::on_registration_lost`] callback subscribed; dropping it
/// unsubscribes.
#[must_use = "dropping the subscription unsubscribes the callback"]
pub struct LostSubscription {
    shared: Weak<Shared>,
    id: u64,
}

impl std::fmt::Debug for LostSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LostSubscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for LostSubscription {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().subs.retain(|(id, _)| *id != self.id);
        }
    }
}

const HANGUP: libc::c_short = libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP | libc::POLLNVAL;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Callbacks run outside the lock, so a panic cannot leave the list half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        if let Some((_, w)) = self.wake.get() {
            // SAFETY: writes one byte from a live buffer to our own non-blocking pipe; a full
            // pipe (EAGAIN) already guarantees a wake-up.
            unsafe { libc::write(w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// Reports a lost registration once: counts it, drops it from the list, calls everyone.
    fn report(&self, reg: &Arc<Registration>) {
        let (subs, losses) = {
            let mut st = self.lock();
            let before = st.regs.len();
            st.regs.retain(|r| !Arc::ptr_eq(r, reg));
            if st.regs.len() == before {
                return; // reported already
            }
            let losses = self.losses.fetch_add(1, Ordering::AcqRel) + 1;
            let subs: Vec<Callback> = st.subs.iter().map(|(_, f)| f.clone()).collect();
            (subs, losses)
        };
        let ev = RegistrationLost {
            lockspace: reg.lockspace.clone(),
            reason: reg.reason().to_string(),
            losses,
        };
        tracing::error!(
            lockspace = %ev.lockspace,
            reason = %ev.reason,
            losses,
            "sanlock registration lost; the daemon no longer holds this process's leases in the lockspace"
        );
        for f in subs {
            f(&ev);
        }
    }

    fn run(self: Arc<Self>, wake_r: RawFd) {
        loop {
            let regs = {
                let st = self.lock();
                if st.stop {
                    return;
                }
                st.regs.clone()
            };
            let mut fds: Vec<libc::pollfd> = std::iter::once(libc::pollfd {
                fd: wake_r,
                events: libc::POLLIN,
                revents: 0,
            })
            .chain(regs.iter().map(|r| libc::pollfd {
                fd: r.fd.as_raw_fd(),
                // Hang-up only: readable data is libsanlock's to read.
                events: libc::POLLRDHUP,
                revents: 0,
            }))
            .collect();
            // A registration marked lost by a failed command is reported without waiting.
            let timeout = if regs.iter().any(|r| r.is_lost()) {
                0
            } else {
                -1
            };
            // SAFETY: `fds` is a live array of `fds.len()` pollfd records; the descriptors
            // stay open because `regs` holds their registrations until after the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::warn!(error = %e, "polling sanlock registrations failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                continue;
            }
            if fds[0].revents != 0 {
                drain(wake_r);
            }
            for (r, p) in regs.iter().zip(&fds[1..]) {
                if p.revents & HANGUP != 0 {
                    r.mark("the sanlock daemon closed the registration connection (it exited, restarted or dropped this process)");
                }
                if r.is_lost() {
                    self.report(r);
                }
            }
        }
    }
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a live local buffer from our own non-blocking pipe until it is empty.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Watch {
    pub(crate) fn new() -> Watch {
        Watch {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                losses: AtomicU64::new(0),
                wake: OnceLock::new(),
            }),
        }
    }

    /// Starts watching `reg` (and the thread, the first time).
    pub(crate) fn add(&self, reg: &Arc<Registration>) -> Result<(), String> {
        self.start()?;
        self.shared.lock().regs.push(reg.clone());
        self.shared.wake();
        Ok(())
    }

    /// Stops watching a registration that is being closed on purpose (nothing held). A lost
    /// one stays until the thread has reported it.
    pub(crate) fn remove(&self, reg: &Arc<Registration>) {
        if reg.is_lost() {
            return;
        }
        self.shared.lock().regs.retain(|r| !Arc::ptr_eq(r, reg));
        // The thread drops its copy (and so closes the socket) on its next turn.
        self.shared.wake();
    }

    /// A command on `reg` found the connection dead: mark it now, report it from the thread.
    pub(crate) fn mark_lost(&self, reg: &Registration, why: &str) {
        if reg.mark(why) {
            self.shared.wake();
        }
    }

    /// The daemon did not answer a command for `lockspace` in time: every registration of it
    /// is shut down and marked lost, so its leases count as gone here at once (jobs holding
    /// them are fenced by the subscribers) and the daemon drops them when it runs again.
    pub(crate) fn abandon(&self, lockspace: &str, why: &str) {
        let regs: Vec<Arc<Registration>> = self
            .shared
            .lock()
            .regs
            .iter()
            .filter(|r| r.lockspace == lockspace && !r.is_lost())
            .cloned()
            .collect();
        for r in regs {
            // Marked first: the reason is ours, not the hang-up the thread will see.
            self.mark_lost(&r, why);
            r.shut_down();
        }
    }

    pub(crate) fn subscribe(
        &self,
        f: impl Fn(&RegistrationLost) + Send + Sync + 'static,
    ) -> LostSubscription {
        let mut st = self.shared.lock();
        st.next_sub += 1;
        let id = st.next_sub;
        st.subs.push((id, Arc::new(f)));
        LostSubscription {
            shared: Arc::downgrade(&self.shared),
            id,
        }
    }

    pub(crate) fn losses(&self) -> u64 {
        self.shared.losses.load(Ordering::Acquire)
    }

    fn start(&self) -> Result<(), String> {
        if self.shared.wake.get().is_some() {
            return Ok(());
        }
        // Serialised by the state lock: only one caller creates the pipe and the thread.
        let _st = self.shared.lock();
        if self.shared.wake.get().is_some() {
            return Ok(());
        }
        let (r, w) = pipe().map_err(|e| format!("registration watcher pipe: {e}"))?;
        let raw = r.as_raw_fd();
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("sanlock-watch".into())
            .spawn(move || shared.run(raw))
            .map_err(|e| format!("registration watcher thread: {e}"))?;
        // The thread only reads `raw` after taking the state lock, which we hold until the
        // pipe is stored.
        let _ = self.shared.wake.set((r, w));
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn reg(ls: &str) -> (Arc<Registration>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Registration::new(OwnedFd::from(a), ls), b)
    }

    #[test]
    fn a_hang_up_is_reported_once_and_at_once() {
        let w = Watch::new();
        let (tx, rx) = mpsc::channel();
        let _sub = w.subscribe(move |ev| tx.send(ev.clone()).unwrap());
        let (quiet, _keep) = reg("ls-quiet");
        let (r, peer) = reg("ls-a");
        w.add(&quiet).unwrap();
        w.add(&r).unwrap();
        // Unread data on the socket (a daemon reply) is not a hang-up.
        (&peer).write_all(b"reply").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err());
        assert!(!r.is_lost());
        let t = Instant::now();
        drop(peer);
        let ev = rx.recv_timeout(Duration::from_secs(2)).expect("lost event");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!((ev.lockspace.as_str(), ev.losses), ("ls-a", 1));
        assert!(r.is_lost() && !quiet.is_lost());
        assert!(!r.reason().is_empty());
        assert_eq!(w.losses(), 1);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_command_failure_is_reported_and_unsubscribe_works() {
        let w = Watch::new();
        let (tx, rx) = mpsc::channel();
        let sub = w.subscribe(move |ev| tx.send(ev.clone()).unwrap());
        let (r, _peer) = reg("ls-b");
        w.add(&r).unwrap();
        w.mark_lost(&r, "EPIPE on acquire");
        let ev = rx.recv_timeout(Duration::from_secs(2)).expect("lost event");
        assert_eq!(ev.reason, "EPIPE on acquire");
        drop(sub);
        let (r2, peer2) = reg("ls-c");
        w.add(&r2).unwrap();
        drop(peer2);
        let t = Instant::now();
        while w.losses() < 2 {
            assert!(t.elapsed() < Duration::from_secs(2));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(rx.try_recv().is_err(), "unsubscribed callback was called");
    }

    #[test]
    fn a_removed_registration_is_not_reported() {
        let w = Watch::new();
        let (r, peer) = reg("ls-d");
        w.add(&r).unwrap();
        w.remove(&r);
        drop(peer);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(w.losses(), 0);
        // The thread dropped its copy: we hold the last reference.
        assert_eq!(Arc::strong_count(&r), 1);
    }
}
