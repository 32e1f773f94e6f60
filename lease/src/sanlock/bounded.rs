//! Daemon calls with a bound.
//!
//! libsanlock sets no timeout on its socket: a call waits in `recv` for as long as the daemon
//! takes to answer, and a daemon stopped by SIGSTOP, or hung, never does. A job must not wait
//! with it: its lease is as good as lost (a frozen daemon renews nothing), and the engine must
//! hear so. Every call that may block on the daemon for a job therefore runs on a helper
//! thread, and the caller waits at most [`call_timeout`]. A call given up on finishes in the
//! background when the daemon runs again; its late result goes to a clean-up (`late`), which
//! for an acquire releases what was acquired.
//!
//! Threads parked on a dead daemon are bounded: at most [`MAX_STUCK`] given-up calls at once;
//! past that, new calls fail at once without a thread.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Given-up calls still waiting on the daemon that the process tolerates.
pub(crate) const MAX_STUCK: usize = 16;

static STUCK: AtomicUsize = AtomicUsize::new(0);

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// How long a job waits for one daemon call: four io_timeouts (the daemon's own I/O on the
/// lease area may take up to one each), at least 5 s. `0` means the daemon's default (10 s).
pub(crate) fn call_timeout(io_timeout_s: u32) -> Duration {
    let io = if io_timeout_s == 0 { 10 } else { io_timeout_s };
    Duration::from_secs(4 * u64::from(io)).max(Duration::from_secs(5))
}

/// Given-up calls still waiting on the daemon.
pub(crate) fn stuck_calls() -> usize {
    STUCK.load(Ordering::Acquire)
}

/// Why a bounded call returned without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// The daemon did not answer within the bound; the call goes on in the background.
    Timeout(Duration),
    /// Too many earlier calls are still stuck: this one was not started.
    TooManyStuck(usize),
    /// No helper thread could be started.
    Spawn(String),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Timeout(d) => write!(f, "no answer within {} s", d.as_secs_f32()),
            NoAnswer::TooManyStuck(n) => write!(
                f,
                "not tried: {n} earlier calls are still waiting for the daemon"
            ),
            NoAnswer::Spawn(e) => write!(f, "no thread for the call: {e}"),
        }
    }
}

/// Runs `call` on a helper thread named `what` and waits for it at most `timeout`. When the
/// caller gives up, `late` gets the result once the call returns.
pub(crate) fn call<T, F, L>(what: &str, timeout: Duration, call: F, late: L) -> Result<T, NoAnswer>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    L: FnOnce(T) + Send + 'static,
{
    let stuck = STUCK.load(Ordering::Acquire);
    if stuck >= MAX_STUCK {
        return Err(NoAnswer::TooManyStuck(stuck));
    }
    let state = Arc::new(AtomicU8::new(RUNNING));
    let (tx, rx) = mpsc::sync_channel(1);
    let st = state.clone();
    let name = what.to_string();
    std::thread::Builder::new()
        .name("sanlock-call".into())
        .spawn(move || {
            let v = call();
            if st
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The caller waits for it (or has seen DONE and is about to).
                let _ = tx.send(v);
            } else {
                STUCK.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(call = %name, "a sanlock daemon call given up on has returned");
                late(v);
            }
        })
        .map_err(|e| NoAnswer::Spawn(e.to_string()))?;
    match rx.recv_timeout(timeout) {
        Ok(v) => Ok(v),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The helper panicked: nothing will come.
            Err(NoAnswer::Spawn(format!(
                "{what}: the helper thread panicked"
            )))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Counted before the state flips, so the helper's decrement never comes first.
            STUCK.fetch_add(1, Ordering::AcqRel);
            if state
                .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::error!(call = what, timeout_s = timeout.as_secs_f32(), stuck = stuck + 1,
                    "the sanlock daemon did not answer in time; the call is left to finish in the background");
                Err(NoAnswer::Timeout(timeout))
            } else {
                STUCK.fetch_sub(1, Ordering::AcqRel);
                // Finished just now: the value is on its way.
                rx.recv()
                    .map_err(|_| NoAnswer::Spawn(format!("{what}: the helper thread panicked")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    // STUCK is process-wide: the tests that park calls run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn timeouts_scale_with_io_timeout() {
        assert_eq!(call_timeout(1), Duration::from_secs(5));
        assert_eq!(call_timeout(10), Duration::from_secs(40));
        assert_eq!(call_timeout(0), Duration::from_secs(40));
    }

    #[test]
    fn a_quick_call_returns_its_value() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let v = call(
            "quick",
            Duration::from_secs(5),
            || 7,
            |_| panic!("not late"),
        );
        assert_eq!(v, Ok(7));
    }

    #[test]
    fn a_stuck_call_is_given_up_and_its_late_result_cleaned_up() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = stuck_calls();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (late_tx, late_rx) = mpsc::channel();
        let t = Instant::now();
        let r = call(
            "stuck",
            Duration::from_millis(200),
            move || {
                go_rx.recv().unwrap();
                42
            },
            move |v| late_tx.send(v).unwrap(),
        );
        assert_eq!(r, Err(NoAnswer::Timeout(Duration::from_millis(200))));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(stuck_calls(), before + 1);
        go_tx.send(()).unwrap();
        assert_eq!(late_rx.recv_timeout(Duration::from_secs(5)), Ok(42));
        let until = Instant::now() + Duration::from_secs(5);
        while stuck_calls() != before && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stuck_calls(), before);
    }

    #[test]
    fn parked_threads_are_bounded() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = stuck_calls();
        let mut gates = Vec::new();
        for _ in before..MAX_STUCK {
            let (tx, rx) = mpsc::channel::<()>();
            gates.push(tx);
            let r = call(
                "park",
                Duration::from_millis(20),
                move || rx.recv().is_ok(),
                |_| {},
            );
            assert!(matches!(r, Err(NoAnswer::Timeout(_))), "{r:?}");
        }
        let r = call("one more", Duration::from_secs(1), || true, |_| {});
        assert_eq!(r, Err(NoAnswer::TooManyStuck(MAX_STUCK)));
        drop(gates);
        let until = Instant::now() + Duration::from_secs(5);
        while stuck_calls() != before && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stuck_calls(), before);
        assert_eq!(call("after", Duration::from_secs(5), || 1, |_| {}), Ok(1));
    }
}
