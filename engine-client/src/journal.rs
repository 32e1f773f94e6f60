//! The engine journal: an append-only file recording every phase of every disk operation
//! before the phase acts, so that after an engine crash [`crate::Disks::resume`] knows where
//! each unfinished operation stood.
//!
//! # Format
//!
//! One record per line: eight lowercase hex digits of the CRC-32 (IEEE) of the JSON text, a
//! space, the JSON text of an [`Entry`], and `\n`. Every append is one `pwrite` at the end of the
//! file followed by `fdatasync`; only then does the caller act.
//!
//! # Crash tolerance
//!
//! A crash can leave the last record torn: short, without its newline, or with garbage (file
//! systems may extend the file before its data reaches the disk). On open, records are read up
//! to the first line that is incomplete or fails its checksum; if nothing valid follows it, the
//! tail is a torn append and is cut off, durably, so that the next append does not glue onto
//! it. A bad line with valid records after it is not a torn append but damage: it is skipped and
//! reported, and the records after it are kept.
//!
//! # Why a line file and not SQLite
//!
//! The journal has one writer, is written a few dozen times per operation and read in full only
//! at start-up; what it needs is "this record is on disk before I act", which `fdatasync` after
//! an append gives with one system call and no page-level machinery. SQLite would give the same
//! guarantee at the price of a C library in the build and a schema to migrate, and would hide
//! the journal from `grep` and `jq` during an incident. Growth is bounded by compaction: on open,
//! the records of finished operations are dropped (written to a temporary file, fsynced, renamed
//! over the journal, directory fsynced).
//!
//! # One engine per journal
//!
//! [`Journal::open`] takes an exclusive `flock` on `<journal>.lock` (a separate file, because
//! compaction replaces the journal's inode) and holds it for the journal's lifetime: a second
//! engine, or `sdmctl resume` while an engine runs, gets [`JournalError::Locked`] instead of
//! resuming operations someone else is driving. The lock dies with the process.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sdm_proto::{JobError, Uuid};
use serde::{Deserialize, Serialize};

use crate::disk::{MovePolicy, OpKind, Outcome, VolumeSpec};

/// Version written in every record.
pub const JOURNAL_VERSION: u32 = 1;

/// Journal failures. Any of them stops the operation that tried to record: acting without a
/// durable record would break resumption.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal or its directory could not be opened or created.
    #[error("cannot open journal {path}")]
    Open {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error("journal {path} is in use by another process")]
    Locked {
        /// The journal.
        path: PathBuf,
    },
    /// Reading the journal failed.
    #[error("cannot read journal {path}")]
    Read {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing or syncing a record failed.
    #[error("cannot write journal {path}")]
    Write {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode a journal record")]
    Encode(#[source] serde_json::Error),
    /// A record names an operation the journal has no beginning for.
    #[error("journal has no operation {0}")]
    UnknownOp(Uuid),
    /// The journal was written by a newer client.
    #[error("journal {path} has records of version {version}; this client reads version {JOURNAL_VERSION}")]
    Version {
        /// The journal.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
}

/// One journal record. Every record names its operation; `Begin` must come first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An operation starts: everything needed to finish or undo it.
    Begin {
        /// Operation id.
        op: Uuid,
        /// What it does.
        kind: OpKind,
        /// The image.
        image: Uuid,
        /// Source domain (the domain deleted from, for a delete).
        src_sd: Uuid,
        /// Destination domain (copies and moves).
        dst_sd: Option<Uuid>,
        /// The caller's policy.
        policy: MovePolicy,
        /// The source's volumes, parents first.
        volumes: Vec<VolumeSpec>,
    },
    /// The destination's structure exists (every volume created and ILLEGAL).
    Cloned {
        /// Operation id.
        op: Uuid,
    },
    /// A copy of one volume is about to be submitted.
    CopySubmit {
        /// Operation id.
        op: Uuid,
        /// The volume.
        vol: Uuid,
        /// URL of the host it goes to.
        host: String,
        /// The job id.
        job: Uuid,
        /// The destination's generation just before submitting (`G`).
        generation: u16,
        /// 1 for the first attempt of this volume.
        attempt: u32,
    },
    /// A copy attempt reached its verdict.
    CopyEnd {
        /// Operation id.
        op: Uuid,
        /// The volume.
        vol: Uuid,
        /// The job id.
        job: Uuid,
        /// The copy committed.
        done: bool,
        /// The destination's generation after a successful copy.
        generation: Option<u16>,
        /// The job was lost and its destination fenced.
        fenced: bool,
        /// Why it failed.
        error: Option<JobError>,
    },
    /// A volume's source and destination checksums are equal.
    Verified {
        /// Operation id.
        op: Uuid,
        /// The volume.
        vol: Uuid,
        /// The common SHA-256.
        checksum: String,
    },
    /// The commit point: every destination volume is LEGAL at its copy's generation (and
    /// verified when asked). From here on the destination is the disk.
    Commit {
        /// Operation id.
        op: Uuid,
    },
    /// Every source volume was marked ILLEGAL (a move, after its commit).
    SourceIllegal {
        /// Operation id.
        op: Uuid,
    },
    /// An image deletion is about to be submitted (the source of a move, the image of a
    /// delete, or the destination of a rollback).
    DeleteSubmit {
        /// Operation id.
        op: Uuid,
        /// Domain deleted from.
        sd: Uuid,
        /// URL of the host it goes to.
        host: String,
        /// The job id.
        job: Uuid,
    },
    /// A deletion ended.
    DeleteEnd {
        /// Operation id.
        op: Uuid,
        /// Domain deleted from.
        sd: Uuid,
        /// The image is gone from the domain, leftovers included.
        done: bool,
        /// Why not.
        error: Option<JobError>,
    },
    /// The operation will be undone (its destination deleted); written before undoing.
    Rollback {
        /// Operation id.
        op: Uuid,
        /// Why.
        reason: String,
    },
    /// The operation is over; nothing is left to do for it.
    End {
        /// Operation id.
        op: Uuid,
        /// How it ended.
        outcome: Outcome,
        /// Details.
        message: Option<String>,
    },
}

impl Record {
    /// The operation the record belongs to.
    pub fn op(&self) -> &Uuid {
        match self {
            Record::Begin { op, .. }
            | Record::Cloned { op }
            | Record::CopySubmit { op, .. }
            | Record::CopyEnd { op, .. }
            | Record::Verified { op, .. }
            | Record::Commit { op }
            | Record::SourceIllegal { op }
            | Record::DeleteSubmit { op, .. }
            | Record::DeleteEnd { op, .. }
            | Record::Rollback { op, .. }
            | Record::End { op, .. } => op,
        }
    }

    /// The record type's name, as written.
    pub fn name(&self) -> &'static str {
        match self {
            Record::Begin { .. } => "begin",
            Record::Cloned { .. } => "cloned",
            Record::CopySubmit { .. } => "copy_submit",
            Record::CopyEnd { .. } => "copy_end",
            Record::Verified { .. } => "verified",
            Record::Commit { .. } => "commit",
            Record::SourceIllegal { .. } => "source_illegal",
            Record::DeleteSubmit { .. } => "delete_submit",
            Record::DeleteEnd { .. } => "delete_end",
            Record::Rollback { .. } => "rollback",
            Record::End { .. } => "end",
        }
    }
}

/// A record with its version and time, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version.
    pub v: u32,
    /// Milliseconds since the epoch when it was appended.
    pub at_ms: u64,
    /// The record.
    pub rec: Record,
}

/// One copy attempt of a volume, as the journal knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptState {
    /// 1-based attempt number.
    pub attempt: u32,
    /// Host URL.
    pub host: String,
    /// Job id.
    pub job: Uuid,
    /// `G` of the attempt.
    pub generation: u16,
    /// When it was submitted.
    pub started_ms: u64,
    /// When its verdict was recorded.
    pub ended_ms: Option<u64>,
    /// Its verdict: None while undecided.
    pub done: Option<bool>,
    /// It was fenced.
    pub fenced: bool,
    /// Why it failed.
    pub error: Option<JobError>,
}

/// A volume's copy, as the journal knows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CopyState {
    /// Attempts in order.
    pub attempts: Vec<AttemptState>,
    /// Destination generation after the successful attempt.
    pub done_generation: Option<u16>,
    /// Verified checksum.
    pub checksum: Option<String>,
}

impl CopyState {
    /// The last attempt if it has no verdict yet (a job to follow after a restart).
    pub fn undecided(&self) -> Option<&AttemptState> {
        self.attempts.last().filter(|a| a.done.is_none())
    }
}

/// The latest deletion of an operation, as the journal knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeleteState {
    /// Domain deleted from.
    pub sd: Uuid,
    /// Host URL.
    pub host: String,
    /// Job id.
    pub job: Uuid,
    /// Ended (successfully or not).
    pub ended: bool,
    /// Ended with the image gone.
    pub done: bool,
    /// Why not.
    pub error: Option<JobError>,
}

/// An operation as replayed from its records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpState {
    /// Operation id.
    pub op: Uuid,
    /// What it does.
    pub kind: OpKind,
    /// The image.
    pub image: Uuid,
    /// Source domain.
    pub src_sd: Uuid,
    /// Destination domain.
    pub dst_sd: Option<Uuid>,
    /// The caller's policy.
    pub policy: MovePolicy,
    /// The source's volumes, parents first.
    pub volumes: Vec<VolumeSpec>,
    /// When it began.
    pub started_ms: u64,
    /// The destination structure exists.
    pub cloned: bool,
    /// Copies by volume.
    pub copies: BTreeMap<Uuid, CopyState>,
    /// When it committed (the destination became the disk).
    pub committed_ms: Option<u64>,
    /// The source volumes were marked ILLEGAL.
    pub source_illegal: bool,
    /// The latest deletion.
    pub delete: Option<DeleteState>,
    /// Why it is being rolled back.
    pub rollback: Option<String>,
    /// How it ended, with details.
    pub end: Option<(Outcome, Option<String>)>,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

impl OpState {
    fn begin(at_ms: u64, rec: &Record) -> Option<OpState> {
        let Record::Begin {
            op,
            kind,
            image,
            src_sd,
            dst_sd,
            policy,
            volumes,
        } = rec
        else {
            return None;
        };
        Some(OpState {
            op: op.clone(),
            kind: *kind,
            image: image.clone(),
            src_sd: src_sd.clone(),
            dst_sd: dst_sd.clone(),
            policy: policy.clone(),
            volumes: volumes.clone(),
            started_ms: at_ms,
            cloned: false,
            copies: volumes
                .iter()
                .map(|v| (v.vol_id.clone(), CopyState::default()))
                .collect(),
            committed_ms: None,
            source_illegal: false,
            delete: None,
            rollback: None,
            end: None,
            ended_ms: None,
        })
    }

    /// True once committed.
    pub fn committed(&self) -> bool {
        self.committed_ms.is_some()
    }

    /// True while something is left to do.
    pub fn unfinished(&self) -> bool {
        self.end.is_none()
    }

    fn apply(&mut self, at_ms: u64, rec: &Record) {
        match rec {
            Record::Begin { .. } => {}
            Record::Cloned { .. } => self.cloned = true,
            Record::CopySubmit {
                vol,
                host,
                job,
                generation,
                attempt,
                ..
            } => {
                self.copies
                    .entry(vol.clone())
                    .or_default()
                    .attempts
                    .push(AttemptState {
                        attempt: *attempt,
                        host: host.clone(),
                        job: job.clone(),
                        generation: *generation,
                        started_ms: at_ms,
                        ended_ms: None,
                        done: None,
                        fenced: false,
                        error: None,
                    });
            }
            Record::CopyEnd {
                vol,
                job,
                done,
                generation,
                fenced,
                error,
                ..
            } => {
                let c = self.copies.entry(vol.clone()).or_default();
                if let Some(a) = c.attempts.iter_mut().rev().find(|a| &a.job == job) {
                    a.ended_ms = Some(at_ms);
                    a.done = Some(*done);
                    a.fenced = *fenced;
                    a.error = error.clone();
                }
                if *done {
                    c.done_generation = *generation;
                }
            }
            Record::Verified { vol, checksum, .. } => {
                self.copies.entry(vol.clone()).or_default().checksum = Some(checksum.clone());
            }
            Record::Commit { .. } => self.committed_ms = Some(at_ms),
            Record::SourceIllegal { .. } => self.source_illegal = true,
            Record::DeleteSubmit { sd, host, job, .. } => {
                self.delete = Some(DeleteState {
                    sd: sd.clone(),
                    host: host.clone(),
                    job: job.clone(),
                    ended: false,
                    done: false,
                    error: None,
                });
            }
            Record::DeleteEnd {
                sd, done, error, ..
            } => {
                let d = self.delete.get_or_insert_with(|| DeleteState {
                    sd: sd.clone(),
                    host: String::new(),
                    job: Uuid::blank(),
                    ended: false,
                    done: false,
                    error: None,
                });
                d.sd = sd.clone();
                d.ended = true;
                d.done = *done;
                d.error = error.clone();
            }
            Record::Rollback { reason, .. } => self.rollback = Some(reason.clone()),
            Record::End {
                outcome, message, ..
            } => {
                self.end = Some((*outcome, message.clone()));
                self.ended_ms = Some(at_ms);
            }
        }
    }
}

/// What reading a journal found besides its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ReadReport {
    /// Bytes of valid records from the start (the length the file is cut back to).
    valid_len: u64,
    /// The file has a torn tail after `valid_len`.
    torn_tail: bool,
    /// Damaged lines followed by valid records (skipped).
    damaged: usize,
}

/// An entry with the exact bytes of its line (compaction copies lines, it does not re-encode).
type Line = (Entry, Vec<u8>);

/// Parses journal bytes into entries with each one's line, and what was wrong.
fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<Line>, ReadReport), JournalError> {
    let mut entries = Vec::new();
    let mut report = ReadReport::default();
    let mut pos = 0usize;
    let mut bad_since: Option<usize> = None;
    while pos < bytes.len() {
        let (line, next) = match bytes[pos..].iter().position(|b| *b == b'\n') {
            Some(n) => (&bytes[pos..pos + n], pos + n + 1),
            // No newline: a torn last append.
            None => (&bytes[pos..], bytes.len() + 1),
        };
        let complete = next <= bytes.len();
        match complete.then(|| decode_line(line)).flatten() {
            Some(entry) => {
                if entry.v > JOURNAL_VERSION {
                    return Err(JournalError::Version {
                        path: path.into(),
                        version: entry.v,
                    });
                }
                if bad_since.take().is_some() {
                    report.damaged += 1;
                }
                entries.push((entry, bytes[pos..next].to_vec()));
                report.valid_len = next as u64;
            }
            None => {
                bad_since.get_or_insert(pos);
            }
        }
        pos = next;
    }
    report.torn_tail = bad_since.is_some();
    Ok((entries, report))
}

fn decode_line(line: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(line).ok()?;
    let (crc, json) = text.split_once(' ')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

fn encode_line(entry: &Entry) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_string(entry).map_err(JournalError::Encode)?;
    let mut line = format!("{:08x} ", crc32(json.as_bytes())).into_bytes();
    line.extend_from_slice(json.as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// Reads every valid entry of a journal file without opening it for writing or locking it (for
/// inspection; a journal being written may show a torn last line, which is skipped).
pub fn read_entries(path: impl AsRef<Path>) -> Result<Vec<Entry>, JournalError> {
    let path = path.as_ref();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Read {
                path: path.into(),
                source,
            })
        }
    };
    Ok(parse(&bytes, path)?.0.into_iter().map(|(e, _)| e).collect())
}

/// Replays entries into operation states, in order of beginning.
pub fn replay(entries: &[Entry]) -> Vec<OpState> {
    let mut ops: BTreeMap<Uuid, OpState> = BTreeMap::new();
    let mut order = Vec::new();
    for e in entries {
        if let Some(st) = OpState::begin(e.at_ms, &e.rec) {
            order.push(st.op.clone());
            ops.insert(st.op.clone(), st);
        } else if let Some(st) = ops.get_mut(e.rec.op()) {
            st.apply(e.at_ms, &e.rec);
        } else {
            tracing::warn!(op = %e.rec.op(), record = e.rec.name(), "journal record of an operation that never began; ignored");
        }
    }
    order.into_iter().filter_map(|id| ops.remove(&id)).collect()
}

struct Inner {
    file: File,
    len: u64,
    ops: Vec<OpState>,
}

/// An open journal (see the module documentation).
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`, locks it, replays it, cuts a torn tail
    /// and drops finished operations.
    pub fn open(path: impl AsRef<Path>) -> Result<Journal, JournalError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(open_err)?;
        let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(lock_name))
            .map_err(open_err)?;
        // SAFETY: flock(2) on a descriptor owned by `lock`, which outlives the call; no memory
        // is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(JournalError::Locked { path });
            }
            return Err(open_err(err));
        }

        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        if !existed {
            sync_dir(&dir).map_err(open_err)?;
        }
        let bytes = std::fs::read(&path).map_err(|source| JournalError::Read {
            path: path.clone(),
            source,
        })?;
        let (entries, report) = parse(&bytes, &path)?;
        let write_err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        if report.torn_tail && (report.valid_len as usize) < bytes.len() {
            tracing::warn!(journal = %path.display(), kept = report.valid_len, dropped = bytes.len() as u64 - report.valid_len, "journal ends with a torn record; cutting it off");
            file.set_len(report.valid_len).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
        }
        if report.damaged > 0 {
            tracing::error!(journal = %path.display(), lines = report.damaged, "journal has damaged records between valid ones; they were skipped");
        }
        let plain: Vec<Entry> = entries.iter().map(|(e, _)| e.clone()).collect();
        let ops = replay(&plain);

        let ops: Vec<OpState> = ops.into_iter().filter(OpState::unfinished).collect();
        let mut inner = Inner {
            file,
            len: report.valid_len,
            ops,
        };
        if entries
            .iter()
            .any(|(e, _)| !inner.ops.iter().any(|o| &o.op == e.rec.op()))
        {
            compact(&path, &mut inner, entries, 0)?;
        }
        Ok(Journal {
            path,
            inner: Mutex::new(inner),
            _lock: lock,
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `rec` durably (written and `fdatasync`ed) and applies it to the replayed state.
    /// On failure the record is not in the journal and the caller must not act on it.
    pub fn append(&self, rec: Record) -> Result<(), JournalError> {
        let entry = Entry {
            v: JOURNAL_VERSION,
            at_ms: now_ms(),
            rec,
        };
        let line = encode_line(&entry)?;
        let mut inner = self.inner();
        let is_begin = matches!(entry.rec, Record::Begin { .. });
        if !is_begin && !inner.ops.iter().any(|o| &o.op == entry.rec.op()) {
            return Err(JournalError::UnknownOp(entry.rec.op().clone()));
        }
        let at = inner.len;
        let written = inner
            .file
            .write_all_at(&line, at)
            .and_then(|_| inner.file.sync_data());
        if let Err(source) = written {
            // Cut back what may have been written, so that the next append starts on a clean
            // line; if even that fails, the next open drops the torn tail.
            let _ = inner.file.set_len(at);
            let _ = inner.file.sync_data();
            return Err(JournalError::Write {
                path: self.path.clone(),
                source,
            });
        }
        inner.len = at + line.len() as u64;
        let Entry { at_ms, rec, .. } = entry;
        if let Some(st) = OpState::begin(at_ms, &rec) {
            inner.ops.push(st);
        } else if let Some(st) = inner.ops.iter_mut().find(|o| &o.op == rec.op()) {
            st.apply(at_ms, &rec);
        }
        if matches!(rec, Record::End { .. }) && inner.len > COMPACT_AT_BYTES {
            // Keeps a long-running engine's journal small. A failure here loses nothing (the
            // old journal stays), so it is logged, not returned.
            let bytes = std::fs::read(&self.path);
            let r = bytes
                .map_err(|source| JournalError::Read {
                    path: self.path.clone(),
                    source,
                })
                .and_then(|b| parse(&b, &self.path))
                .and_then(|(lines, _)| {
                    compact(&self.path, &mut inner, lines, KEEP_ENDED_IN_MEMORY)
                });
            if let Err(e) = r {
                tracing::warn!(journal = %self.path.display(), error = %e, "journal compaction failed");
            }
        }
        Ok(())
    }

    /// The operation `op` as recorded (unfinished ones, and those finished since open).
    pub fn op(&self, op: &Uuid) -> Option<OpState> {
        self.inner().ops.iter().find(|o| &o.op == op).cloned()
    }

    /// Every operation with something left to do, in order of beginning.
    pub fn unfinished(&self) -> Vec<OpState> {
        self.inner()
            .ops
            .iter()
            .filter(|o| o.unfinished())
            .cloned()
            .collect()
    }
}

/// A journal longer than this is compacted when an operation ends.
#[cfg(not(test))]
pub const COMPACT_AT_BYTES: u64 = 1 << 20;
/// A journal longer than this is compacted when an operation ends (small for unit tests).
#[cfg(test)]
pub const COMPACT_AT_BYTES: u64 = 64 << 10;

/// Ended operations kept readable in memory after a compaction.
const KEEP_ENDED_IN_MEMORY: usize = 256;

/// Rewrites the journal with only the lines of `inner`'s unfinished operations: a temporary
/// file, fsynced, renamed over the journal, the directory fsynced. A crash leaves either the
/// old journal or the new one, both complete.
///
/// In memory, the `keep_ended` most recently ended operations stay readable (a caller that just
/// ended one still builds its report from it); the file keeps none of them.
fn compact(
    path: &Path,
    inner: &mut Inner,
    lines: Vec<Line>,
    keep_ended: usize,
) -> Result<(), JournalError> {
    let write_err = |source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let keep: Vec<Vec<u8>> = lines
        .into_iter()
        .filter(|(e, _)| {
            inner
                .ops
                .iter()
                .any(|o| o.unfinished() && &o.op == e.rec.op())
        })
        .map(|(_, l)| l)
        .collect();
    let tmp = path.with_extension("compact");
    let mut t = File::create(&tmp).map_err(write_err)?;
    for l in &keep {
        t.write_all(l).map_err(write_err)?;
    }
    t.sync_all().map_err(write_err)?;
    drop(t);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    sync_dir(&dir).map_err(write_err)?;
    inner.file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    inner.len = keep.iter().map(|l| l.len() as u64).sum();
    let before = inner.ops.len();
    let mut ended: Vec<u64> = inner.ops.iter().filter_map(|o| o.ended_ms).collect();
    ended.sort_unstable_by(|a, b| b.cmp(a));
    let cutoff = match keep_ended {
        0 => None,
        n if ended.len() <= n => Some(0),
        n => Some(ended[n - 1]),
    };
    inner
        .ops
        .retain(|o| o.unfinished() || cutoff.is_some_and(|c| o.ended_ms.is_some_and(|e| e >= c)));
    tracing::info!(journal = %path.display(), dropped_ops = before - inner.ops.len(), bytes = inner.len, "journal compacted");
    Ok(())
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for b in data {
        crc = TABLE[((crc ^ *b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdm_proto::{Preallocation, VolumeFormat};

    fn begin(op: &Uuid) -> Record {
        Record::Begin {
            op: op.clone(),
            kind: OpKind::Move,
            image: Uuid::new_v4(),
            src_sd: Uuid::new_v4(),
            dst_sd: Some(Uuid::new_v4()),
            policy: MovePolicy::default(),
            volumes: vec![VolumeSpec {
                vol_id: Uuid::new_v4(),
                parent: Uuid::blank(),
                format: VolumeFormat::Raw,
                allocation: Preallocation::Sparse,
                capacity: 1 << 20,
                description: "d".into(),
                bytes: 1 << 20,
            }],
        }
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_survive_reopen_and_finished_ops_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let j = Journal::open(&path).unwrap();
            j.append(begin(&a)).unwrap();
            j.append(begin(&b)).unwrap();
            j.append(Record::Cloned { op: a.clone() }).unwrap();
            j.append(Record::End {
                op: b.clone(),
                outcome: Outcome::Committed,
                message: None,
            })
            .unwrap();
            assert_eq!(j.unfinished().len(), 1);
            assert!(matches!(
                Journal::open(&path),
                Err(JournalError::Locked { .. })
            ));
            assert!(matches!(
                j.append(Record::Cloned { op: Uuid::new_v4() }),
                Err(JournalError::UnknownOp(_))
            ));
        }
        let j = Journal::open(&path).unwrap();
        let ops = j.unfinished();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, a);
        assert!(ops[0].cloned);
        // b was dropped from the file.
        let entries = read_entries(&path).unwrap();
        assert!(entries.iter().all(|e| e.rec.op() == &a), "{entries:?}");
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let a = Uuid::new_v4();
        {
            let j = Journal::open(&path).unwrap();
            j.append(begin(&a)).unwrap();
            j.append(Record::Cloned { op: a.clone() }).unwrap();
        }
        let good = std::fs::read(&path).unwrap();
        // Every possible torn append of a third record, and a zero-filled tail.
        let third = encode_line(&Entry {
            v: 1,
            at_ms: 1,
            rec: Record::Commit { op: a.clone() },
        })
        .unwrap();
        let mut tails: Vec<Vec<u8>> = (1..third.len()).map(|n| third[..n].to_vec()).collect();
        tails.push(vec![0u8; 300]);
        tails.push(b"00000000 {\"v\":1}\n".to_vec());
        for tail in tails {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            let j = Journal::open(&path).unwrap();
            let st = j.op(&a).unwrap();
            assert!(st.cloned && !st.committed(), "tail {tail:?}");
            assert_eq!(std::fs::read(&path).unwrap(), good, "torn tail is cut");
            j.append(Record::Commit { op: a.clone() }).unwrap();
            drop(j);
            let j = Journal::open(&path).unwrap();
            assert!(j.op(&a).unwrap().committed());
            drop(j);
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[test]
    fn a_long_journal_is_compacted_when_an_operation_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::open(&path).unwrap();
        let open_op = Uuid::new_v4();
        j.append(begin(&open_op)).unwrap();
        let mut last = None;
        while std::fs::metadata(&path).unwrap().len() <= COMPACT_AT_BYTES {
            let op = Uuid::new_v4();
            j.append(begin(&op)).unwrap();
            last = Some(op);
        }
        let last = last.unwrap();
        j.append(Record::End {
            op: last.clone(),
            outcome: Outcome::Committed,
            message: None,
        })
        .unwrap();
        // Everything but the still-open operations left the file...
        let entries = read_entries(&path).unwrap();
        assert!(!entries.iter().any(|e| e.rec.op() == &last));
        assert!(entries.iter().any(|e| e.rec.op() == &open_op));
        assert!(
            std::fs::metadata(&path).unwrap().len() > COMPACT_AT_BYTES / 2,
            "unfinished ops kept"
        );
        // ...the ended one is still readable in memory, and appends go on.
        assert!(j.op(&last).unwrap().end.is_some());
        j.append(Record::Cloned {
            op: open_op.clone(),
        })
        .unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.op(&open_op).unwrap().cloned);
        assert!(j.op(&last).is_none());
    }

    #[test]
    fn damage_in_the_middle_keeps_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let a = Uuid::new_v4();
        {
            let j = Journal::open(&path).unwrap();
            j.append(begin(&a)).unwrap();
            j.append(Record::Cloned { op: a.clone() }).unwrap();
            j.append(Record::Commit { op: a.clone() }).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let damaged = format!("{}\nffffffff garbage\n{}\n", lines[0], lines[2]);
        std::fs::write(&path, damaged).unwrap();
        let j = Journal::open(&path).unwrap();
        let st = j.op(&a).unwrap();
        assert!(!st.cloned && st.committed());
    }

    #[test]
    fn replay_tracks_attempts_and_deletions() {
        let a = Uuid::new_v4();
        let Record::Begin { volumes, .. } = begin(&a) else {
            unreachable!()
        };
        let vol = volumes[0].vol_id.clone();
        let mut b = begin(&a);
        if let Record::Begin { volumes: v, .. } = &mut b {
            v[0].vol_id = vol.clone();
        }
        let (j1, j2) = (Uuid::new_v4(), Uuid::new_v4());
        let recs = vec![
            b,
            Record::CopySubmit {
                op: a.clone(),
                vol: vol.clone(),
                host: "h1".into(),
                job: j1.clone(),
                generation: 0,
                attempt: 1,
            },
            Record::CopyEnd {
                op: a.clone(),
                vol: vol.clone(),
                job: j1,
                done: false,
                generation: None,
                fenced: true,
                error: None,
            },
            Record::CopySubmit {
                op: a.clone(),
                vol: vol.clone(),
                host: "h2".into(),
                job: j2.clone(),
                generation: 3,
                attempt: 2,
            },
        ];
        let entries: Vec<Entry> = recs
            .into_iter()
            .enumerate()
            .map(|(i, rec)| Entry {
                v: 1,
                at_ms: i as u64,
                rec,
            })
            .collect();
        let ops = replay(&entries);
        let c = &ops[0].copies[&vol];
        assert_eq!(c.attempts.len(), 2);
        assert!(c.attempts[0].fenced);
        assert_eq!(c.undecided().unwrap().job, j2);
        assert_eq!(c.undecided().unwrap().generation, 3);
    }
}
