//! The file journal, the embedded default [`JournalStore`]: an append-only file of
//! [codec](super::codec) lines.
//!
//! # Durability
//!
//! Every append is one `pwrite` at the end of the file followed by `fdatasync`; only then does
//! the caller act.
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
//! and when an operation ends while the file is over [`COMPACT_AT_BYTES`], the records of
//! finished operations are dropped (written to a temporary file, fsynced, renamed over the
//! journal, directory fsynced).
//!
//! # One engine per journal
//!
//! [`FileStore::open`] takes an exclusive `flock` on `<journal>.lock` (a separate file, because
//! compaction replaces the journal's inode) and holds it for the store's lifetime: a second
//! engine, or `sdmctl resume` while an engine runs, gets [`JournalError::Locked`] instead of
//! resuming operations someone else is driving. The lock dies with the process.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sdm_proto::Uuid;

use super::codec::{encode_line, parse, Line};
use super::error::JournalError;
use super::record::{Entry, Record};
use super::state::replay;
use super::store::{Claim, JournalStore, Listed, Listing, Stored};

/// A journal longer than this is compacted when an operation ends.
#[cfg(not(test))]
pub const COMPACT_AT_BYTES: u64 = 1 << 20;
/// A journal longer than this is compacted when an operation ends (small for unit tests).
#[cfg(test)]
pub const COMPACT_AT_BYTES: u64 = 64 << 10;

/// The journal file (see the module documentation).
pub struct FileStore {
    path: PathBuf,
    /// Shared with the blocking task of an append in flight, which finishes (and keeps the
    /// lock) even when the appending future is dropped.
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    file: File,
    len: u64,
    /// Operations that began and did not end: the ones compaction keeps.
    open: HashSet<Uuid>,
    _lock: File,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The directory a journal file lives in.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The operations of `entries` that began and did not end, and their entries.
fn unfinished(entries: Vec<Entry>) -> (HashSet<Uuid>, Vec<Entry>) {
    let open: HashSet<Uuid> = replay(&entries)
        .into_iter()
        .filter(|o| o.unfinished())
        .map(|o| o.op)
        .collect();
    let kept = entries
        .into_iter()
        .filter(|e| open.contains(e.rec.op()))
        .collect();
    (open, kept)
}

impl FileStore {
    /// Opens (creating if needed) the journal at `path`, locks it, cuts a torn tail and drops
    /// finished operations. Returns the store and the entries of its unfinished operations.
    pub fn open(path: impl AsRef<Path>) -> Result<(FileStore, Vec<Entry>), JournalError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let dir = dir_of(&path);
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
        let (lines, report) = parse(&bytes, &path)?;
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
        let (open, entries) = unfinished(lines.iter().map(|(e, _)| e.clone()).collect());
        let mut inner = Inner {
            file,
            len: report.valid_len,
            open,
            _lock: lock,
        };
        if entries.len() < lines.len() {
            compact(&path, &mut inner, lines)?;
        }
        let store = FileStore {
            path,
            inner: Arc::new(Mutex::new(inner)),
        };
        Ok((store, entries))
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl JournalStore for FileStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn append<'a>(&'a self, entry: &'a Entry) -> BoxFuture<'a, Result<Stored, JournalError>> {
        let line = encode_line(entry);
        let (inner, path, rec) = (self.inner.clone(), self.path.clone(), entry.rec.clone());
        Box::pin(async move {
            let line = line?;
            tokio::task::spawn_blocking(move || {
                let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
                append(&path, &mut inner, &line, &rec)
            })
            .await
            .map_err(|e| JournalError::Writer(e.to_string()))?
        })
    }

    fn owner(&self) -> String {
        format!("pid {}", std::process::id())
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<Entry>, JournalError>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Ok(unfinished(read_entries(&path)?).1))
                .await
                .map_err(|e| JournalError::Writer(e.to_string()))?
        })
    }

    /// Every unfinished operation: the `flock` makes this process the owner of all of them.
    fn claimable(&self) -> BoxFuture<'_, Result<Vec<Uuid>, JournalError>> {
        let open: Vec<Uuid> = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.open.iter().cloned().collect()
        };
        Box::pin(async move { Ok(open) })
    }

    /// Nothing to take over: the journal's memory is current.
    fn claim<'a>(&'a self, op: &'a Uuid) -> BoxFuture<'a, Result<Claim, JournalError>> {
        let known = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.open.contains(op)
        };
        Box::pin(async move {
            if !known {
                return Err(JournalError::UnknownOp(op.clone()));
            }
            Ok(Claim {
                previous_owner: None,
                epoch: 0,
                entries: None,
            })
        })
    }

    fn release<'a>(&'a self, _op: &'a Uuid) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn in_progress<'a>(
        &'a self,
        _image: &'a Uuid,
    ) -> BoxFuture<'a, Result<Option<Listed>, JournalError>> {
        Box::pin(async { Ok(None) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Listing, JournalError>> {
        Box::pin(async move {
            let entries = self.load().await?;
            let listed = replay(&entries)
                .into_iter()
                .map(|o| Listed {
                    op: o.op,
                    owner: None,
                    epoch: 0,
                    expires_in_ms: None,
                })
                .collect();
            Ok((listed, entries))
        })
    }

    fn prune(&self, _older_than: std::time::Duration) -> BoxFuture<'_, Result<u64, JournalError>> {
        // Compaction already dropped every ended operation it came across; the ones since
        // then go with the next compaction, whose timing bounds the file's length.
        Box::pin(async { Ok(0) })
    }
}

/// Writes `line` (the encoding of `rec`) at the end of the file and syncs it; compacts when an
/// operation ended and the file is long. On failure the record is not in the journal.
fn append(
    path: &Path,
    inner: &mut Inner,
    line: &[u8],
    rec: &Record,
) -> Result<Stored, JournalError> {
    let at = inner.len;
    let written = inner
        .file
        .write_all_at(line, at)
        .and_then(|_| inner.file.sync_data());
    if let Err(source) = written {
        // Cut back what may have been written, so that the next append starts on a clean
        // line; if even that fails, the next open drops the torn tail.
        let _ = inner.file.set_len(at);
        let _ = inner.file.sync_data();
        return Err(JournalError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    inner.len = at + line.len() as u64;
    match rec {
        Record::Begin { op, .. } => {
            inner.open.insert(op.clone());
        }
        Record::End { op, .. } => {
            inner.open.remove(op);
        }
        _ => {}
    }
    if !(matches!(rec, Record::End { .. }) && inner.len > COMPACT_AT_BYTES) {
        return Ok(Stored::Appended);
    }
    // Keeps a long-running engine's journal small. A failure here loses nothing (the old
    // journal stays), so it is logged, not returned.
    let r = std::fs::read(path)
        .map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|b| parse(&b, path))
        .and_then(|(lines, _)| compact(path, inner, lines));
    match r {
        Ok(()) => Ok(Stored::Compacted),
        Err(e) => {
            tracing::warn!(journal = %path.display(), error = %e, "journal compaction failed");
            Ok(Stored::Appended)
        }
    }
}

/// Rewrites the journal with only the lines of its unfinished operations: a temporary file,
/// fsynced, renamed over the journal, the directory fsynced. A crash leaves either the old
/// journal or the new one, both complete.
fn compact(path: &Path, inner: &mut Inner, lines: Vec<Line>) -> Result<(), JournalError> {
    let write_err = |source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let keep: Vec<Vec<u8>> = lines
        .into_iter()
        .filter(|(e, _)| inner.open.contains(e.rec.op()))
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
    sync_dir(&dir_of(path)).map_err(write_err)?;
    inner.file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    inner.len = keep.iter().map(|l| l.len() as u64).sum();
    tracing::info!(journal = %path.display(), kept_ops = inner.open.len(), bytes = inner.len, "journal compacted");
    Ok(())
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
