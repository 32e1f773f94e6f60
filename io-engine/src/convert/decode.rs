//! Decoding compressed clusters on worker threads, so that a zlib-compressed source is decoded
//! on every CPU (as qemu does in its thread pool) while the pipeline's thread keeps the IO
//! going. A window with compressed pieces is lent to a worker (`Io::lend`) and comes back
//! decoded; the pipeline then reads the window's other pieces and writes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use super::chain::Chain;
use crate::io::Lent;
use crate::IoError;

/// A compressed piece of a window: (position in the window, length, layer, guest offset).
pub(crate) type Piece = (usize, usize, usize, u64);

/// A window to decode.
pub(crate) struct Job {
    pub(crate) slot: usize,
    pub(crate) lent: Lent,
    pub(crate) pieces: Vec<Piece>,
}

/// A window back from a worker, with the decoded bytes or the error.
pub(crate) struct Decoded {
    pub(crate) slot: usize,
    pub(crate) lent: Lent,
    pub(crate) result: Result<u64, IoError>,
}

/// The pipeline's end of the workers.
pub(crate) struct Decoders {
    tx: Sender<Job>,
    rx: Receiver<Decoded>,
    /// Windows out with a worker.
    pub(crate) outstanding: usize,
}

/// Worker threads for a run: one per CPU, at most 4 (qemu's limit for its compression pool).
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// The channels of a run: what the pipeline holds, and what the workers share.
pub(crate) fn channels() -> (Decoders, Mutex<Receiver<Job>>, Sender<Decoded>) {
    let (tx, jobs) = mpsc::channel();
    let (done, rx) = mpsc::channel();
    (
        Decoders {
            tx,
            rx,
            outstanding: 0,
        },
        Mutex::new(jobs),
        done,
    )
}

impl Decoders {
    /// Hands a window to the workers.
    pub(crate) fn send(&mut self, job: Job) {
        self.outstanding += 1;
        // The workers live as long as the pipeline's scope: the channel cannot be closed here.
        let _ = self.tx.send(job);
    }

    /// A decoded window, waiting up to `wait` for one (None: nothing yet).
    pub(crate) fn recv(&mut self, wait: Option<Duration>) -> Option<Decoded> {
        let got = match wait {
            None => self.rx.try_recv().ok(),
            Some(t) => self.rx.recv_timeout(t).ok(),
        };
        if got.is_some() {
            self.outstanding -= 1;
        }
        got
    }

    /// Ends the workers and returns every window still out, so their slots can be reclaimed
    /// before the pool may go away.
    pub(crate) fn finish(self) -> Vec<Lent> {
        drop(self.tx);
        self.rx.iter().map(|d| d.lent).collect()
    }
}

/// A worker: decodes windows until the job channel closes; once `stop` is set it hands windows
/// back undecoded.
pub(crate) fn worker(
    chain: &Chain,
    jobs: &Mutex<Receiver<Job>>,
    out: Sender<Decoded>,
    stop: &AtomicBool,
) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let Job {
            slot,
            mut lent,
            pieces,
        } = job;
        let result = if stop.load(Ordering::Relaxed) {
            Ok(0)
        } else {
            decode(chain, lent.as_mut_slice(), &pieces)
        };
        if out.send(Decoded { slot, lent, result }).is_err() {
            return;
        }
    }
}

/// Decodes `pieces` into `buf`; returns the bytes decoded.
pub(crate) fn decode(chain: &Chain, buf: &mut [u8], pieces: &[Piece]) -> Result<u64, IoError> {
    let mut n = 0;
    for &(pos, len, layer, guest) in pieces {
        let l = &chain.layers[layer];
        let q = l
            .qcow2
            .as_ref()
            .expect("compressed data is in a qcow2 layer");
        q.read(&mut buf[pos..pos + len], guest)
            .map_err(|e| IoError::image(&l.path, format!("decoding offset {guest}: {e}")))?;
        n += len as u64;
    }
    Ok(n)
}
