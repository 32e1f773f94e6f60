//! Faults injected at the IO boundary must surface as errors (or be handled, for short
//! transfers and EINTR/EAGAIN), never as a silent success.
//!
//! Failpoints are process-wide, so these tests live in their own binary and each holds the
//! `fail::FailScenario` lock while it runs.
#![cfg(feature = "failpoints")]

mod common;

use std::path::Path;

use common::*;
use sdm_io::{Control, CopyOptions, Engine, IoErrorKind, WipeOptions};

per_backend!(
    write_error_mid_copy_fails,
    write_enospc_mid_copy_is_no_space,
    read_error_mid_copy_fails,
    short_reads_and_writes_are_continued,
    eintr_and_eagain_are_retried,
    fsync_error_fails_without_retry,
    refused_zeroing_falls_back_to_writes,
    zeroing_error_fails,
    read_error_fails_checksum,
    read_error_fails_verify,
    write_error_fails_wipe,
    fsync_error_fails_wipe,
);

/// Runs `f` with the given failpoints configured, serialised against the other tests.
fn with_failpoints<R>(points: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let scenario = fail::FailScenario::setup();
    for (name, actions) in points {
        fail::cfg(*name, actions).expect("valid failpoint actions");
    }
    let r = f();
    scenario.teardown();
    r
}

struct Pair {
    _dir: tempfile::TempDir,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
}

fn pair(shape: Shape, garbage_dst: bool) -> Pair {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, shape, 21);
    if garbage_dst {
        make_garbage(&dst, shape.len(), 21);
    } else {
        make_empty(&dst);
    }
    Pair {
        _dir: dir,
        src,
        dst,
    }
}

fn copy(e: &Engine, p: &Pair, verify: bool) -> Result<sdm_io::CopyReport, sdm_io::IoError> {
    e.copy(
        &p.src,
        &p.dst,
        &CopyOptions {
            verify,
            ..Default::default()
        },
        &Control::new(),
    )
}

fn write_error_mid_copy_fails(e: &Engine) {
    let p = pair(Shape::Random, false);

    let err = with_failpoints(&[("sdm_io::write", "3*off->return(EIO)")], || {
        copy(e, &p, false)
    })
    .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io);
    let msg = err.to_string();
    assert!(
        msg.starts_with("write to ") && msg.contains("Input/output error"),
        "{msg}"
    );
}

fn write_enospc_mid_copy_is_no_space(e: &Engine) {
    let p = pair(Shape::Random, false);

    let err = with_failpoints(&[("sdm_io::write", "2*off->return(ENOSPC)")], || {
        copy(e, &p, false)
    })
    .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::NoSpace);
    assert!(err.to_string().contains("No space left on device"), "{err}");
}

fn read_error_mid_copy_fails(e: &Engine) {
    let p = pair(Shape::Sparse, false);

    let err = with_failpoints(&[("sdm_io::read", "2*off->return(EIO)")], || {
        copy(e, &p, false)
    })
    .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io);
    assert!(err.to_string().starts_with("read from "), "{err}");
}

fn short_reads_and_writes_are_continued(e: &Engine) {
    for shape in [Shape::Random, Shape::UnalignedTail, Shape::Sparse] {
        let p = pair(shape, true);
        let points = [
            ("sdm_io::read", "50%return(short)"),
            ("sdm_io::write", "return(short)"),
        ];

        with_failpoints(&points, || copy(e, &p, false)).expect("short IO is not an error");

        assert_cmp(&p.src, &p.dst, shape.len());
    }
}

fn eintr_and_eagain_are_retried(e: &Engine) {
    let p = pair(Shape::Random, true);
    let points = [
        ("sdm_io::read", "3*return(EINTR)"),
        ("sdm_io::write", "3*return(EAGAIN)"),
        ("sdm_io::zero", "2*return(EINTR)"),
    ];

    with_failpoints(&points, || copy(e, &p, true)).expect("EINTR/EAGAIN are retried");

    assert_cmp(&p.src, &p.dst, Shape::Random.len());
}

fn fsync_error_fails_without_retry(e: &Engine) {
    let p = pair(Shape::Random, false);

    // Only the first fdatasync fails: a retry would succeed and hide the lost writeback.
    let err =
        with_failpoints(&[("sdm_io::fsync", "1*return(EIO)")], || copy(e, &p, false)).unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io);
    assert!(err.to_string().starts_with("fdatasync of "), "{err}");
}

fn refused_zeroing_falls_back_to_writes(e: &Engine) {
    // Punch hole and zero range refused: the holes must still end up zero (by writing).
    let p = pair(Shape::Sparse, true);

    let r = with_failpoints(&[("sdm_io::zero", "2*return(EOPNOTSUPP)")], || {
        copy(e, &p, true)
    })
    .expect("fallback to zero writes");

    assert!(r.verified);
    assert_cmp(&p.src, &p.dst, Shape::Sparse.len());
    assert_qemu_compare(&p.src, &p.dst);
}

fn zeroing_error_fails(e: &Engine) {
    let p = pair(Shape::Sparse, true);

    let err =
        with_failpoints(&[("sdm_io::zero", "return(EIO)")], || copy(e, &p, false)).unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io);
    assert!(err.to_string().starts_with("zeroing "), "{err}");
}

fn read_error_fails_checksum(e: &Engine) {
    let p = pair(Shape::Random, false);

    let err = with_failpoints(&[("sdm_io::read", "5*off->return(EIO)")], || {
        e.checksum(&p.src, &Control::new())
    })
    .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io);
}

fn read_error_fails_verify(e: &Engine) {
    let p = pair(Shape::Random, false);
    // The copy pass reads the source once per chunk; the verify pass's reads come after.
    let n = Shape::Random.len() / e.chunk_size() as u64;

    let err = with_failpoints(
        &[("sdm_io::read", &format!("{}*off->return(EIO)", n + 3))],
        || copy(e, &p, true),
    )
    .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io, "{err}");
}

fn write_error_fails_wipe(e: &Engine) {
    let dir = tempdir();
    let v = dir.path().join("v");
    make_image(&v, Shape::Random, 3);

    let err = with_failpoints(&[("sdm_io::zero", "4*off->return(EIO)")], || {
        e.wipe(&v, &WipeOptions::default(), &Control::new())
    })
    .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::Io);
}

fn fsync_error_fails_wipe(e: &Engine) {
    let dir = tempdir();
    let v = dir.path().join("v");
    make_image(&v, Shape::Random, 3);

    let err = with_failpoints(&[("sdm_io::fsync", "return(EIO)")], || {
        e.wipe(Path::new(&v), &WipeOptions::default(), &Control::new())
    })
    .unwrap_err();

    assert!(err.to_string().starts_with("fdatasync of "), "{err}");
}
