//! The io_uring instance of one operation, and the start-up probe.
//!
//! This wrapper knows nothing about buffers: [`Ring::push`] is unsafe and its caller
//! ([`crate::io::Io`]) proves that whatever memory an entry points at outlives the request.

use std::io;

use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

/// Opcodes the engine submits; all must be supported for the io_uring backend.
const REQUIRED_OPS: [(u8, &str); 5] = [
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::ReadFixed::CODE, "READ_FIXED"),
    (opcode::WriteFixed::CODE, "WRITE_FIXED"),
    (opcode::Fallocate::CODE, "FALLOCATE"),
];

pub(crate) struct Ring {
    ring: IoUring,
    /// Entries pushed but not yet handed to the kernel.
    unsubmitted: usize,
    /// Requests pushed whose completion has not been reaped.
    live: usize,
}

fn build(entries: u32) -> io::Result<IoUring> {
    // The ring is used by one thread that always waits for completions, so the kernel can
    // defer completion work to that wait instead of interrupting the thread (6.1+). Older
    // kernels reject the flags; plain setup works everywhere io_uring does.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))
}

impl Ring {
    pub(crate) fn new(entries: u32) -> io::Result<Ring> {
        Ok(Ring {
            ring: build(entries.next_power_of_two())?,
            unsubmitted: 0,
            live: 0,
        })
    }

    /// Registers `bufs` as fixed buffers 0..n.
    ///
    /// # Safety
    /// The memory described by `bufs` must stay valid until the ring is dropped.
    pub(crate) unsafe fn register_buffers(&self, bufs: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded to our caller's contract.
        unsafe { self.ring.submitter().register_buffers(bufs) }
    }

    /// Queues one entry, flushing the submission queue to the kernel when it is full.
    ///
    /// # Safety
    /// Every buffer the entry references must stay valid, and not be accessed in a conflicting
    /// way, until its completion has been reaped from this ring.
    pub(crate) unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded to our caller's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.unsubmitted += 1;
                self.live += 1;
                return Ok(());
            }
            self.submit()?;
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits what is queued and waits until at least one completion is available.
    pub(crate) fn submit_and_wait(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                // EBUSY: the completion queue is backed up; our caller reaps and retries.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves available completions as (user_data, result) into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        let before = out.len();
        out.extend(
            self.ring
                .completion()
                .map(|c: cqueue::Entry| (c.user_data(), c.result())),
        );
        self.live -= out.len() - before;
    }

    /// Whether another request may be pushed without risking completion queue overflow.
    pub(crate) fn has_room(&self) -> bool {
        self.live < self.ring.params().cq_entries() as usize
    }
}

/// Checks that io_uring can be set up here, runs a request, and has every opcode we use.
pub(crate) fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring opcode probe failed: {e}"))?;
    let missing: Vec<&str> = REQUIRED_OPS
        .iter()
        .filter(|(op, _)| !p.is_supported(*op))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!("io_uring lacks opcodes {}", missing.join(", ")));
    }
    // A seccomp filter may allow setup but refuse io_uring_enter; a NOP round trip shows it.
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "io_uring queue full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter failed: {e}"))?;
    let cqe = ring
        .completion()
        .next()
        .map(|c| (c.user_data(), c.result()));
    match cqe {
        Some((7, res)) if res >= 0 => Ok(()),
        other => Err(format!("io_uring NOP did not complete: {other:?}")),
    }
}
