//! Checkpoints and resumed copies, over io_uring and the sync engine: every checkpoint's
//! prefix already equals the source when the hook hears of it, and a copy started at a
//! checkpoint over a destination that holds that prefix (and garbage after it) ends equal to
//! the source while reading and writing only the remainder.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sdm_io::{CheckpointHook, Checkpointed, Control, CopyOptions, Engine};

per_backend!(
    checkpoints_cover_only_durable_equal_bytes,
    resumed_copy_writes_only_the_remainder,
    failing_hook_fails_the_copy,
);

fn read_range(p: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    File::open(p).unwrap().read_exact_at(&mut v, off).unwrap();
    v
}

/// A hook that, at each checkpoint, checks the destination's prefix against the source.
fn checking_hook(src: &Path, dst: &Path, seen: Arc<Mutex<Vec<Checkpointed>>>) -> CheckpointHook {
    let (src, dst) = (src.to_path_buf(), dst.to_path_buf());
    CheckpointHook {
        every: Duration::ZERO,
        every_bytes: u64::MAX,
        call: Arc::new(move |c: Checkpointed| {
            assert!(c.durable <= c.total);
            let n = c.durable;
            assert!(
                read_range(&src, 0, n) == read_range(&dst, 0, n),
                "prefix up to {n} differs at the checkpoint"
            );
            seen.lock().unwrap().push(c);
            Ok(())
        }),
    }
}

fn checkpoints_cover_only_durable_equal_bytes(e: &Engine) {
    let dir = tempdir();
    for (i, shape) in [
        Shape::Random,
        Shape::Sparse,
        Shape::ZeroHeavy,
        Shape::UnalignedTail,
    ]
    .into_iter()
    .enumerate()
    {
        let src = dir.path().join(format!("src{i}"));
        let dst = dir.path().join(format!("dst{i}"));
        make_image(&src, shape, 40 + i as u64);
        // Garbage, so that a prefix reported too early would not compare equal.
        make_garbage(&dst, shape.len(), 90 + i as u64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let opts = CopyOptions {
            checkpoint: Some(checking_hook(&src, &dst, seen.clone())),
            ..Default::default()
        };
        let r = e.copy(&src, &dst, &opts, &Control::new()).expect("copy");
        assert_cmp(&src, &dst, shape.len());
        let seen = seen.lock().unwrap();
        // The engine's own account: one per hook call, their time spent, and the copy's
        // thread waited at least for the last one (the hook reads both files, never free).
        // Waiting may exceed the work: a join also waits for the helper thread to start.
        let st = r.checkpoints;
        assert_eq!(st.count as usize, seen.len(), "{shape:?}: {st:?}");
        assert!(
            st.work > Duration::ZERO && st.blocked > Duration::ZERO,
            "{shape:?}: {st:?}"
        );
        assert!(
            seen.len() >= 2,
            "{shape:?}: only {} checkpoints",
            seen.len()
        );
        assert!(
            seen.windows(2).all(|w| w[0].durable < w[1].durable),
            "{shape:?}: offsets not increasing: {seen:?}"
        );
    }
}

fn resumed_copy_writes_only_the_remainder(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 5);
    let len = Shape::Random.len();
    make_garbage(&dst, len, 6);
    // The destination holds the source's first 2.5 MiB (a checkpoint at an unaligned offset
    // is rounded down, so the copy rewrites a little more than the remainder).
    let start = 2 * MIB + MIB / 2 + 100;
    File::options()
        .write(true)
        .open(&dst)
        .unwrap()
        .write_all_at(&read_range(&src, 0, start), 0)
        .unwrap();
    let ctl = Control::new();
    let opts = CopyOptions {
        start,
        verify: true,
        ..Default::default()
    };
    let r = e.copy(&src, &dst, &opts, &ctl).expect("resumed copy");
    assert_cmp(&src, &dst, len);
    assert!(r.verified);
    let rest = len - start;
    assert!(
        r.bytes_read >= rest && r.bytes_read <= rest + 4096,
        "read {} for a remainder of {rest}",
        r.bytes_read
    );
    assert!(r.bytes_written >= rest && r.bytes_written <= rest + 4096);
    // Progress counts the prefix as done, and verify the whole volume.
    assert_eq!(ctl.progress().bytes_done, 2 * len);

    // A start past the end copies nothing and is not an error.
    let r = e
        .copy(
            &src,
            &dst,
            &CopyOptions {
                start: len + MIB,
                ..Default::default()
            },
            &Control::new(),
        )
        .expect("nothing left");
    assert_eq!((r.bytes_read, r.bytes_written), (0, 0));
}

fn failing_hook_fails_the_copy(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 8);
    make_empty(&dst);
    let opts = CopyOptions {
        checkpoint: Some(CheckpointHook {
            every: Duration::ZERO,
            every_bytes: u64::MAX,
            call: Arc::new(|_| Err(std::io::Error::from_raw_os_error(libc::ENOSPC))),
        }),
        ..Default::default()
    };
    let err = e
        .copy(&src, &dst, &opts, &Control::new())
        .expect_err("hook error");
    assert_eq!(err.kind(), sdm_io::IoErrorKind::NoSpace, "{err}");
    assert!(err.to_string().contains("checkpoint of"), "{err}");
}
