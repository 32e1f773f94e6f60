//! Operations under pressure: a full tmpfs, concurrent copies, bandwidth limits, progress
//! of throttled operations, fragmented chunks, and everything on tmpfs.

use std::time::{Duration, Instant};

use sdm_io::{
    BackendChoice, BackendKind, Control, CopyOptions, Engine, EngineConfig, IoErrorKind,
    WipeOptions,
};

use crate::common::*;

pub(crate) fn copy_into_full_tmpfs_is_enospc(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    make_image(&src, Shape::Random, 15);
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let dst = fs.path().join("dst");
    make_empty(&dst);

    let err = e
        .copy(&src, &dst, &CopyOptions::default(), &Control::new())
        .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::NoSpace, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("No space left on device") && msg.contains("dst"),
        "{msg}"
    );
}

pub(crate) fn concurrent_copies(e: &Engine) {
    let dir = tempdir();
    let pairs: Vec<_> = (0..4)
        .map(|i| {
            let src = dir.path().join(format!("src{i}"));
            let dst = dir.path().join(format!("dst{i}"));
            make_image(
                &src,
                if i % 2 == 0 {
                    Shape::Random
                } else {
                    Shape::Sparse
                },
                i,
            );
            make_empty(&dst);
            (src, dst)
        })
        .collect();

    std::thread::scope(|s| {
        for (src, dst) in &pairs {
            let e = e.clone();
            s.spawn(move || {
                e.copy(src, dst, &CopyOptions::default(), &Control::new())
                    .unwrap()
            });
        }
    });

    for (src, dst) in &pairs {
        assert_cmp(src, dst, Shape::Random.len());
    }
}

pub(crate) fn bandwidth_limit_slows_copy(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 16);
    make_empty(&dst);
    let ctl = Control::new();
    ctl.set_bandwidth_limit(Some(12 * MIB));
    let start = Instant::now();

    e.copy(&src, &dst, &CopyOptions::default(), &ctl)
        .expect("copy");

    // 6 MiB at 12 MiB/s, starting from an empty bucket: about half a second.
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
    assert_cmp(&src, &dst, Shape::Random.len());
}

/// A throttled operation on a volume smaller than the pipeline (queue depth × chunk) must still
/// publish progress while it runs, not only at the end.
pub(crate) fn throttled_operations_report_progress(e: &Engine) {
    // 4 MiB chunks: the 6 MiB volume is two requests, the second held back a full second by
    // the limit; the first must be reaped and counted meanwhile.
    let e = &Engine::new(EngineConfig {
        backend: match e.backend() {
            BackendKind::IoUring => BackendChoice::IoUring,
            BackendKind::Sync => BackendChoice::Sync,
        },
        queue_depth: 8,
        chunk_size: 4 << 20,
        ..Default::default()
    });
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 17);
    let len = Shape::Random.len();
    type Op<'a> = Box<dyn FnOnce(&Control) + Send + 'a>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "copy",
            Box::new(|c: &Control| {
                make_empty(&dst);
                e.copy(&src, &dst, &CopyOptions::default(), c)
                    .expect("copy");
            }),
        ),
        (
            "checksum",
            Box::new(|c: &Control| {
                e.checksum(&src, c).expect("checksum");
            }),
        ),
        (
            "wipe",
            Box::new(|c: &Control| {
                e.wipe(&dst, &WipeOptions::default(), c).expect("wipe");
            }),
        ),
    ];
    for (name, op) in ops {
        let ctl = Control::new();
        ctl.set_bandwidth_limit(Some(4 * MIB));
        let mid = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                std::thread::sleep(Duration::from_millis(600));
                ctl.progress()
            });
            op(&ctl);
            sampler.join().unwrap()
        });
        assert!(
            mid.bytes_done > 0 && mid.bytes_done < len,
            "{name}: progress in the middle of a throttled run: {mid:?}"
        );
        assert_eq!(ctl.progress().bytes_done, len, "{name}");
    }
}

pub(crate) fn fragmented_chunks_many_writes(e: &Engine) {
    // 4 MiB chunks of alternating 64 KiB data and explicit zeros: 32 writes per slot, more
    // than the ring's completion queue holds at queue depth 1, so submission must back off.
    let backend = match e.backend() {
        BackendKind::IoUring => BackendChoice::IoUring,
        BackendKind::Sync => BackendChoice::Sync,
    };
    let e = Engine::new(EngineConfig {
        backend,
        queue_depth: 1,
        chunk_size: 4 << 20,
        ..Default::default()
    });
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    let len = 8 * MIB as usize;
    let mut data = random_bytes(31, len);
    for run in data.chunks_mut(64 << 10).skip(1).step_by(2) {
        run.fill(0);
    }
    std::fs::write(&src, &data).unwrap();
    make_empty(&dst);

    let r = e.copy(
        &src,
        &dst,
        &CopyOptions {
            verify: true,
            ..Default::default()
        },
        &Control::new(),
    );

    let r = r.expect("copy");
    assert_cmp(&src, &dst, len as u64);
    assert_eq!(r.bytes_written, len as u64 / 2);
    assert!(
        allocated(&dst) <= len as u64 / 2 + MIB,
        "zero runs were written"
    );
}

pub(crate) fn copy_checksum_wipe_on_tmpfs(e: &Engine) {
    // Memory-backed files take plain syscalls even under io_uring; same results required.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("SKIP: no /dev/shm");
        return;
    };
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        let dst = dir.path().join(format!("dst{i}"));
        make_image(&src, shape, i as u64 + 60);
        make_garbage(&dst, shape.len() + 4096, i as u64);
        let opts = CopyOptions {
            verify: true,
            ..Default::default()
        };

        e.copy(&src, &dst, &opts, &Control::new()).expect("copy");
        assert_cmp(&src, &dst, shape.len());
        assert_qemu_compare(&src, &dst);
        let sum = e.checksum(&dst, &Control::new()).expect("checksum");
        assert_eq!(sum, sha256sum(&dst), "{shape:?}");
        e.wipe(&src, &WipeOptions::default(), &Control::new())
            .expect("wipe");
        assert_zeros(&src, shape.len());
    }
}
