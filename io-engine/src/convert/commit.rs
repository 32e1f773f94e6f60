//! Committing a qcow2 layer into its backing image (a cold merge): every range the top
//! allocates — data, compressed data, zero clusters — is written into the base at its guest
//! offset; ranges the top leaves unallocated are not touched. The top itself is not changed
//! (`qemu-img commit -b BASE` semantics: the top is not emptied).
//!
//! The top's allocation is read from its L2 tables (imago), its data is moved through the
//! engine's [`Io`]. A RAW base is written in place (zero clusters become holes, or zeroed
//! blocks where the allocation is kept). A qcow2 base gets its clusters through imago opened
//! for writing — existing ones are overwritten in place, missing ones allocated — while the
//! bytes still go through the engine; imago writes the L2 and refcount updates after the data
//! is durable. A base smaller than the top grows to the top's size first, as qemu's commit
//! job does.
//!
//! qemu-img commits instead (VDSM's command line, progress, abort) whenever the native writer
//! could not be exact: a top or base with anything `Header::native_blocker` names, a qcow2
//! base with persistent bitmaps (imago clears the autoclear bits a writer does not know),
//! internal snapshots (shared clusters), version 2 (no zero clusters), or clusters smaller
//! than the base's (a partial base cluster would need the base's own backing to fill).

use std::fs::OpenOptions;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder};

use super::chain::{Chain, Cursor, Kind, OpenLayer};
use super::header::Header;
use super::mover::{self, Fds, From, Move};
use super::run::same_file;
use super::{qemu_img, Converter, ImageFormat, Layer};
use crate::io::Io;
use crate::target::{FileKind, Target};
use crate::{sys, Control, Engine, IoError};

const OP: &str = "commit into";

/// Options of [`Engine::commit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// Commit with qemu-img even where the native path could (benchmarks, diagnosis).
    pub force_qemu_img: bool,
    /// A RAW base file keeps its allocation where the top has zero clusters (a preallocated
    /// volume): the range is zeroed in place instead of punched out.
    pub keep_allocation: bool,
}

/// What a commit did.
#[derive(Clone, Debug)]
pub struct CommitReport {
    /// Native or qemu-img (with the reason).
    pub converter: Converter,
    /// The base's virtual size afterwards.
    pub base_size: u64,
    /// Bytes of top data written into the base (native).
    pub bytes_written: u64,
    /// Guest bytes made zero in the base because the top has zero clusters there (native).
    pub bytes_zeroed: u64,
    /// The qemu-img arguments, when it ran.
    pub qemu_img_args: Option<Vec<String>>,
}

/// The base as the native writer holds it.
enum Base {
    Raw(Target),
    Qcow2 {
        q: FormatAccess<ImagoFile>,
        data: Target,
    },
}

impl Engine {
    /// Commits `top` (a qcow2 whose backing file is `base`) into `base`; see the module
    /// documentation of `convert::commit`. The base is durable when this returns Ok; progress
    /// counts guest bytes of the top's virtual size.
    pub fn commit(
        &self,
        top: &Layer,
        base: &Layer,
        opts: &CommitOptions,
        ctl: &Control,
    ) -> Result<CommitReport, IoError> {
        let th = check_pair(top, base)?;
        ctl.start(th.size);
        let mut reason = why_qemu_img(&th, top, base, opts)?;
        if reason.is_none() {
            match self.native_commit(top, base, th.size, opts, ctl) {
                Ok(Ok(report)) => return Ok(report),
                Ok(Err(why)) => reason = Some(why),
                Err(e) => return Err(e),
            }
        }
        let reason = reason.expect("native path not taken");
        tracing::info!(base = %base.path.display(), %reason, "committing with qemu-img");
        let mut args: Vec<String> = ["commit", "-p", "-t", "none", "-b"]
            .map(String::from)
            .into();
        args.push(base.path.display().to_string());
        args.extend(["-f".into(), "qcow2".into()]);
        if let Some(r) = ctl.bandwidth_limit() {
            args.extend(["-r".into(), r.to_string()]);
        }
        args.push(top.path.display().to_string());
        let cwd = top.path.parent().unwrap_or(Path::new("/"));
        qemu_img::run(&args, cwd, &base.path, ctl)?;
        Ok(CommitReport {
            converter: Converter::QemuImg { reason },
            base_size: th.size,
            bytes_written: 0,
            bytes_zeroed: 0,
            qemu_img_args: Some(args),
        })
    }

    /// The native commit; `Ok(Err(why))` when imago refuses an image (qemu-img then commits;
    /// nothing was written yet).
    fn native_commit(
        &self,
        top: &Layer,
        base: &Layer,
        top_size: u64,
        opts: &CommitOptions,
        ctl: &Control,
    ) -> Result<Result<CommitReport, String>, IoError> {
        let top_layer = match OpenLayer::open(&top.path, ImageFormat::Qcow2)? {
            Ok(l) => l,
            Err(why) => return Ok(Err(why)),
        };
        let mut b = match base.format {
            ImageFormat::Raw => Base::Raw(Target::open(&base.path, true)?),
            ImageFormat::Qcow2 => match open_writable(&base.path)? {
                Ok(q) => Base::Qcow2 {
                    q,
                    data: Target::open(&base.path, true)?,
                },
                Err(why) => return Ok(Err(why)),
            },
        };
        grow(&mut b, &base.path, top_size)?;
        let chain = Chain {
            layers: vec![top_layer],
        };
        let chunk = self.chunk_size() as u64;
        let mut moves = Vec::new();
        let mut zeros: Vec<(u64, u64)> = Vec::new();
        let mut cur = Cursor::new(&chain, 1);
        let mut pos = 0;
        while pos < top_size {
            if ctl.is_aborted() {
                return Err(IoError::aborted(OP, &base.path));
            }
            let (k, end) = cur.at(pos)?;
            match k {
                Kind::Unallocated => ctl.add_done(end - pos),
                Kind::Zero => zeros.push((pos, end - pos)),
                Kind::Data { host, .. } => {
                    let mut at = pos;
                    while at < end {
                        let len = (end - at).min(chunk);
                        let from = From::File {
                            off: host + (at - pos),
                        };
                        at += place(&b, &base.path, from, at, len, &mut moves)?;
                    }
                }
                Kind::Compressed { .. } => {
                    let mut at = pos;
                    while at < end {
                        let len = (end - at).min(chunk);
                        at += place(
                            &b,
                            &base.path,
                            From::Decode { guest: at },
                            at,
                            len,
                            &mut moves,
                        )?;
                    }
                }
            }
            pos = end;
        }
        let layer = &chain.layers[0];
        let src = Fds {
            direct: layer.target.fd(),
            buffered: layer.buffered_fd,
            align: if layer.target.direct {
                layer.target.align
            } else {
                1
            },
        };
        let dst_target = match &mut b {
            Base::Raw(t) | Base::Qcow2 { data: t, .. } => t,
        };
        // Clusters imago allocated past the end of a qcow2 file: extend it first, so that no
        // data write extends it (a file system serializes O_DIRECT writes that do).
        let end = moves.iter().map(|m| m.to + m.len as u64).max().unwrap_or(0);
        if dst_target.kind == FileKind::Regular && dst_target.size < end {
            dst_target.set_len(end)?;
        }
        let dst = Fds {
            direct: dst_target.fd(),
            buffered: dst_target.buffered_fd()?,
            align: if dst_target.direct {
                dst_target.align
            } else {
                1
            },
        };
        let q = layer.qcow2.as_ref().expect("the top is qcow2");
        let decode = |buf: &mut [u8], guest: u64| {
            q.read(buf, guest)
                .map_err(|e| IoError::image(&top.path, format!("decoding offset {guest}: {e}")))
        };
        let mut io = Io::new(self.backend(), self.queue_depth(), chunk as usize)?;
        if layer.target.in_memory {
            io.run_inline(src.direct);
            io.run_inline(src.buffered);
        }
        if dst_target.in_memory {
            io.run_inline(dst.direct);
            io.run_inline(dst.buffered);
        }
        let written = mover::run(&mut io, &moves, (src, dst), &decode, ctl, &base.path)?;
        drop(io);
        let zeroed: u64 = zeros.iter().map(|z| z.1).sum();
        finish(&b, &base.path, &zeros, opts.keep_allocation, ctl)?;
        Ok(Ok(CommitReport {
            converter: Converter::Native,
            base_size: top_size,
            bytes_written: written,
            bytes_zeroed: zeroed,
            qemu_img_args: None,
        }))
    }
}

/// Checks that `top` is a qcow2 whose backing file is `base` in `base`'s format; returns the
/// top's header.
fn check_pair(top: &Layer, base: &Layer) -> Result<Header, IoError> {
    if top.format != ImageFormat::Qcow2 {
        return Err(IoError::invalid(
            OP,
            &base.path,
            "the top of a commit must be qcow2",
        ));
    }
    let th = Header::read(&top.path)?;
    let Some(name) = &th.backing_file else {
        return Err(IoError::invalid(
            OP,
            &base.path,
            format!("{} has no backing file", top.path.display()),
        ));
    };
    let dir = top.path.parent().unwrap_or(Path::new("/"));
    if !same_file(&dir.join(name), &base.path) {
        return Err(IoError::invalid(
            OP,
            &base.path,
            format!(
                "the backing file of {} is {name:?}, not this image",
                top.path.display()
            ),
        ));
    }
    if let Some(f) = &th.backing_format {
        if f != base.format.as_str() && !(f == "file" && base.format == ImageFormat::Raw) {
            return Err(IoError::invalid(
                OP,
                &base.path,
                format!(
                    "the top names backing format {f:?}, the base is {}",
                    base.format.as_str()
                ),
            ));
        }
    }
    Ok(th)
}

/// Why qemu-img must commit, if it must.
fn why_qemu_img(
    th: &Header,
    top: &Layer,
    base: &Layer,
    opts: &CommitOptions,
) -> Result<Option<String>, IoError> {
    if opts.force_qemu_img {
        return Ok(Some("qemu-img forced by the caller".into()));
    }
    if let Some(why) = th.native_blocker() {
        return Ok(Some(format!("{}: {why}", top.path.display())));
    }
    if base.format == ImageFormat::Qcow2 {
        let bh = Header::read(&base.path)?;
        if let Some(why) = bh.writer_blocker() {
            return Ok(Some(format!("{}: {why}", base.path.display())));
        }
        if th.cluster_bits < bh.cluster_bits {
            return Ok(Some(format!(
                "top clusters ({} B) are smaller than the base's ({} B)",
                1u64 << th.cluster_bits,
                1u64 << bh.cluster_bits
            )));
        }
    }
    Ok(None)
}

/// Opens a qcow2 for writing through imago; `Err(reason)` when imago refuses it.
pub(super) fn open_writable(
    path: &Path,
) -> Result<Result<FormatAccess<ImagoFile>, String>, IoError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| IoError::os("open", path, e))?;
    let opened = ImagoFile::try_from(f).and_then(|f| {
        Qcow2::<ImagoFile>::builder(f)
            .write(true)
            .backing(None)
            .open(DenyImplicitOpenGate::default())
    });
    Ok(opened
        .map(FormatAccess::new)
        .map_err(|e| format!("imago cannot open {} for writing: {e}", path.display())))
}

/// Makes the base's virtual size at least `size`.
fn grow(b: &mut Base, path: &Path, size: u64) -> Result<(), IoError> {
    match b {
        Base::Raw(t) if t.size >= size => Ok(()),
        Base::Raw(t) if t.kind == FileKind::Block => Err(IoError::invalid(
            OP,
            path,
            format!("device holds {} bytes, the top {size}", t.size),
        )),
        Base::Raw(t) => t.set_len(size),
        Base::Qcow2 { q, .. } if q.size() >= size => Ok(()),
        Base::Qcow2 { q, .. } => q
            .resize_grow(size, PreallocateMode::Zero)
            .map_err(|e| IoError::os("grow", path, e)),
    }
}

/// Queues the move of `len` bytes at guest offset `guest` into the base; returns how many
/// bytes one move took (a qcow2 base maps at most up to its next discontiguous cluster).
fn place(
    b: &Base,
    path: &Path,
    from: From,
    guest: u64,
    len: u64,
    moves: &mut Vec<Move>,
) -> Result<u64, IoError> {
    let (to, len) = match b {
        Base::Raw(_) => (guest, len),
        Base::Qcow2 { q, .. } => {
            let (_, host, mapped) = q
                .ensure_data_mapping(guest, len, true)
                .map_err(|e| IoError::at("allocate clusters in", path, guest, e))?;
            (host, mapped)
        }
    };
    let from = match from {
        From::File { off } => From::File { off },
        From::Decode { .. } => From::Decode { guest },
    };
    moves.push(Move {
        from,
        to,
        len: len as usize,
    });
    Ok(len)
}

/// Zeroes what the top has as zero clusters, then makes the base durable: the data first,
/// the qcow2 metadata (which points at it) after.
fn finish(
    b: &Base,
    path: &Path,
    zeros: &[(u64, u64)],
    keep_allocation: bool,
    ctl: &Control,
) -> Result<(), IoError> {
    match b {
        Base::Raw(t) => {
            for &(off, len) in zeros {
                zero_raw(t, off, len, keep_allocation)?;
                ctl.add_done(len);
            }
            t.sync_data()
        }
        Base::Qcow2 { q, data } => {
            for &(off, len) in zeros {
                q.write_zeroes(off, len)
                    .map_err(|e| IoError::at("write zero clusters to", path, off, e))?;
                ctl.add_done(len);
            }
            data.sync_data()?;
            q.flush()
                .and_then(|()| q.sync())
                .map_err(|e| IoError::os("write qcow2 metadata to", path, e))
        }
    }
}

/// Makes `[off, off+len)` of a RAW base read zeros: a hole, zeroed blocks, or BLKZEROOUT.
fn zero_raw(t: &Target, off: u64, len: u64, keep_allocation: bool) -> Result<(), IoError> {
    let err = |e| IoError::at("zero", &t.path, off, e);
    if t.kind == FileKind::Block {
        let a = t.lbs;
        let (s, e) = (off.next_multiple_of(a), (off + len) / a * a);
        if s < e {
            sys::blk_zeroout(t.fd(), s, e - s).map_err(err)?;
        }
        write_zeros(t, off, s.min(off + len) - off)?;
        if e > s {
            write_zeros(t, e, off + len - e)?;
        }
        return Ok(());
    }
    let mode = if keep_allocation {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    };
    match sys::fallocate(t.fd(), mode, off, len) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => write_zeros(t, off, len),
        Err(e) => Err(err(e)),
    }
}

/// Writes zero bytes (buffered): the pieces no zeroing call can take.
fn write_zeros(t: &Target, off: u64, len: u64) -> Result<(), IoError> {
    if len == 0 {
        return Ok(());
    }
    let f = OpenOptions::new()
        .write(true)
        .open(&t.path)
        .map_err(|e| IoError::os("open", &t.path, e))?;
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = off;
    while at < off + len {
        let n = (off + len - at).min(zeros.len() as u64) as usize;
        std::os::unix::fs::FileExt::write_all_at(&f, &zeros[..n], at)
            .map_err(|e| IoError::at("write zeros to", &t.path, at, e))?;
        at += n as u64;
    }
    f.sync_data()
        .map_err(|e| IoError::os("fdatasync", &t.path, e))
}
