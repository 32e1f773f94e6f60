//! Checksum: SHA-256 of a volume's content, hashed on a thread beside the IO thread.
//!
//! The IO thread keeps `queue_depth` reads in flight. Reads complete in any order, hashing
//! must not, so completed chunks wait in a small reorder map keyed by sequence number and are
//! lent, in order, to the hasher, which hands each slot back when done. Holes travel as a
//! length and are hashed from a static zero block without being read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};

use sha2::{Digest, Sha256};

use crate::control::{Admit, Throttle};
use crate::copy::seg_align;
use crate::extents::{align_up, Extents};
use crate::io::{Io, Lent, Op};
use crate::target::Target;
use crate::{Control, Engine, IoError};

const OP: &str = "checksum of";

/// Holes are hashed from this many zeros at a time.
static ZEROS: [u8; 256 << 10] = [0; 256 << 10];

enum Piece {
    Data(Lent),
    Zeros(u64),
}

/// A chunk waiting for its turn to be hashed.
enum Ready {
    Data { slot: usize, len: usize },
    Zeros(u64),
}

pub(crate) fn checksum(engine: &Engine, path: &Path, ctl: &Control) -> Result<String, IoError> {
    let t = Target::open(path, false)?;
    let len = t.size;
    ctl.start(len);
    let chunk = engine.chunk_size();
    let slots = engine.queue_depth();
    // Declared before the hashing thread's scope: it must outlive every Lent.
    let mut io = Io::new(engine.backend(), slots, chunk)?;
    if t.in_memory {
        io.run_inline(t.fd());
    }
    let (to_hasher, from_io) = mpsc::channel::<Piece>();
    let (to_io, from_hasher) = mpsc::channel::<Lent>();
    let result = std::thread::scope(|scope| {
        let hasher = std::thread::Builder::new()
            .name("sdm-sha256".into())
            .spawn_scoped(scope, move || hash(from_io, to_io, ctl))
            .map_err(|e| IoError::os("start hashing thread for", path, e))?;
        let mut feeder = Feeder {
            t: &t,
            ctl,
            ext: Extents::new(&t, len, seg_align(&t, None)),
            len,
            pos: 0,
            chunk: chunk as u64,
            free: (0..slots).rev().collect(),
            next_seq: 0,
            next_hash: 0,
            ready: BTreeMap::new(),
            seg_len: vec![0; slots],
        };
        let fed = feeder.run(&mut io, &to_hasher, &from_hasher);
        if fed.is_err() {
            let _ = io.drain();
        }
        // Closing the channel ends the hasher once it has returned every slot.
        drop(to_hasher);
        let digest = hasher.join().expect("hashing thread panicked");
        for lent in from_hasher.try_iter() {
            io.reclaim(lent);
        }
        fed?;
        digest.ok_or_else(|| IoError::aborted(OP, path))
    })?;
    Ok(result)
}

/// Hashes pieces in arrival order; None if the operation was aborted.
fn hash(pieces: Receiver<Piece>, back: Sender<Lent>, ctl: &Control) -> Option<String> {
    let mut h = Sha256::new();
    let mut aborted = false;
    for p in pieces {
        aborted = aborted || ctl.is_aborted();
        match p {
            Piece::Data(lent) => {
                let n = lent.as_slice().len() as u64;
                if !aborted {
                    h.update(lent.as_slice());
                    ctl.add_done(n);
                }
                // The IO thread may be gone on an error path; the slot is then reclaimed
                // after join from the channel's remains, so a failed send loses nothing.
                let _ = back.send(lent);
            }
            Piece::Zeros(mut n) => {
                while n > 0 && !aborted {
                    let k = n.min(ZEROS.len() as u64);
                    h.update(&ZEROS[..k as usize]);
                    ctl.add_done(k);
                    n -= k;
                    aborted = ctl.is_aborted();
                }
            }
        }
    }
    if aborted {
        return None;
    }
    let digest = h.finalize();
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

struct Feeder<'a> {
    t: &'a Target,
    ctl: &'a Control,
    ext: Extents,
    len: u64,
    pos: u64,
    chunk: u64,
    free: Vec<usize>,
    /// Sequence number of the next piece planned.
    next_seq: u64,
    /// Sequence number of the next piece the hasher must get.
    next_hash: u64,
    ready: BTreeMap<u64, Ready>,
    seg_len: Vec<u64>,
}

impl Feeder<'_> {
    fn run(
        &mut self,
        io: &mut Io,
        to_hasher: &Sender<Piece>,
        from_hasher: &Receiver<Lent>,
    ) -> Result<(), IoError> {
        let mut throttle = Throttle::new();
        let mut done = Vec::new();
        loop {
            if self.ctl.is_aborted() {
                return Err(IoError::aborted(OP, &self.t.path));
            }
            for lent in from_hasher.try_iter() {
                self.free.push(io.reclaim(lent));
            }
            while !self.free.is_empty() && self.pos < self.len {
                let off = self.pos;
                let (data, end) = self
                    .ext
                    .at(off)
                    .map_err(|e| IoError::at("SEEK_DATA on", &self.t.path, off, e))?;
                if !data {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.pos = end;
                    self.ready.insert(seq, Ready::Zeros(end - off));
                    continue;
                }
                let end = end.min(off + self.chunk);
                // Busy while reads are in flight or the hasher holds buffers: then the limit
                // must not stop us from passing finished reads on, which is what moves progress.
                let busy = io.inflight() > 0 || !self.ready.is_empty();
                match throttle.admit(self.ctl, end - off, busy) {
                    Admit::Go => {}
                    Admit::Later => break,
                    Admit::Aborted => return Err(IoError::aborted(OP, &self.t.path)),
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.pos = end;
                let slot = self.free.pop().expect("checked above");
                self.seg_len[slot] = end - off;
                let rlen = align_up(end - off, self.t.align).min(self.chunk) as usize;
                io.submit(
                    seq,
                    Op::Read {
                        fd: self.t.fd(),
                        slot,
                        pos: 0,
                        off,
                        len: rlen,
                    },
                )?;
            }
            self.send_in_order(io, to_hasher);
            if io.inflight() > 0 {
                io.wait(&mut done)?;
                for d in done.drain(..) {
                    let Op::Read { slot, off, .. } = d.op else {
                        unreachable!("only reads")
                    };
                    let n = d
                        .res
                        .map_err(|e| IoError::at("read from", &self.t.path, off, e))?;
                    let want = self.seg_len[slot];
                    if n < want {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "volume ended early",
                        );
                        return Err(IoError::at("read from", &self.t.path, off + n, e));
                    }
                    self.ready.insert(
                        d.tag,
                        Ready::Data {
                            slot,
                            len: want as usize,
                        },
                    );
                }
                self.send_in_order(io, to_hasher);
            } else if self.pos >= self.len && self.ready.is_empty() {
                return Ok(());
            } else if self.free.is_empty() {
                // Every slot is with the hasher: wait for one to come back.
                match from_hasher.recv() {
                    Ok(lent) => self.free.push(io.reclaim(lent)),
                    Err(_) => return Err(IoError::aborted(OP, &self.t.path)),
                }
            }
        }
    }

    fn send_in_order(&mut self, io: &mut Io, to_hasher: &Sender<Piece>) {
        while let Some(r) = self.ready.remove(&self.next_hash) {
            self.next_hash += 1;
            let piece = match r {
                Ready::Data { slot, len } => Piece::Data(io.lend(slot, len)),
                Ready::Zeros(n) => Piece::Zeros(n),
            };
            // A failed send means the hasher is gone (it panicked): take the slot back now.
            if let Err(mpsc::SendError(Piece::Data(lent))) = to_hasher.send(piece) {
                self.free.push(io.reclaim(lent));
            }
        }
    }
}
