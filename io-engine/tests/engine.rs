//! Differential tests of copy, wipe and checksum, each body run over io_uring and the sync
//! engine, on files and on loop block devices, with cmp, qemu-img and sha256sum as oracles.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sdm_io::{
    BackendChoice, BackendKind, Control, CopyOptions, Engine, EngineConfig, IoErrorKind,
    WipeOptions,
};

per_backend!(
    copy_to_fresh_file,
    copy_over_existing_file,
    copy_partial_length,
    copy_between_loop_devices,
    copy_file_to_larger_device,
    copy_to_small_device_is_invalid,
    checksum_matches_sha256sum,
    checksum_of_loop_device,
    wipe_file,
    wipe_file_with_discard,
    wipe_loop_device,
    abort_copy,
    abort_wipe_file,
    abort_wipe_loop_device,
    abort_checksum,
    copy_into_full_tmpfs_is_enospc,
    concurrent_copies,
    bandwidth_limit_slows_copy,
    throttled_operations_report_progress,
    fragmented_chunks_many_writes,
    copy_checksum_wipe_on_tmpfs,
);

fn copy_to_fresh_file(e: &Engine) {
    let dir = tempdir();
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        let dst = dir.path().join(format!("dst{i}"));
        make_image(&src, shape, i as u64);
        make_empty(&dst);
        let ctl = Control::new();

        let r = e
            .copy(&src, &dst, &CopyOptions::default(), &ctl)
            .expect("copy");

        let len = shape.len();
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), len, "{shape:?}");
        assert_cmp(&src, &dst, len);
        assert_qemu_compare(&src, &dst);
        assert_eq!(r.bytes_total, len);
        assert_eq!(
            r.bytes_written + r.bytes_zeroed_or_skipped,
            len,
            "{shape:?}: {r:?}"
        );
        assert_eq!(ctl.progress().bytes_done, len, "{shape:?}");
        // Sparse and zero-heavy sources stay sparse: only data chunks get allocated.
        assert!(allocated(&dst) <= allocated(&src), "{shape:?} dst grew");
        if matches!(shape, Shape::ZeroHeavy) {
            assert!(
                allocated(&dst) <= len / 4,
                "zero chunks were written: {r:?}"
            );
        }
        if matches!(shape, Shape::AllHole | Shape::Empty) {
            assert_eq!(r.bytes_read, 0, "holes were read");
        }
    }
}

fn copy_over_existing_file(e: &Engine) {
    let dir = tempdir();
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        let dst = dir.path().join(format!("dst{i}"));
        make_image(&src, shape, i as u64);
        // Larger than the source and full of garbage: must be zeroed where the source is not
        // data, and shrunk to the source size.
        make_garbage(&dst, shape.len() + 3 * MIB + 5, i as u64);
        let opts = CopyOptions {
            verify: true,
            ..Default::default()
        };
        let ctl = Control::new();

        let r = e.copy(&src, &dst, &opts, &ctl).expect("copy");

        assert!(r.verified);
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), shape.len());
        assert_cmp(&src, &dst, shape.len());
        assert_qemu_compare(&src, &dst);
        let p = ctl.progress();
        assert_eq!(
            (p.bytes_done, p.bytes_total),
            (2 * shape.len(), 2 * shape.len())
        );
    }
}

fn copy_partial_length(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 7);
    make_empty(&dst);
    let len = MIB + 100;
    let opts = CopyOptions {
        length: Some(len),
        verify: true,
        ..Default::default()
    };

    e.copy(&src, &dst, &opts, &Control::new()).expect("copy");

    assert_eq!(std::fs::metadata(&dst).unwrap().len(), len);
    assert_cmp(&src, &dst, len);
    let too_long = CopyOptions {
        length: Some(Shape::Random.len() + 1),
        ..Default::default()
    };
    let err = e.copy(&src, &dst, &too_long, &Control::new()).unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::InvalidInput);
}

fn copy_between_loop_devices(e: &Engine) {
    let dir = tempdir();
    for (i, shape) in SHAPES
        .into_iter()
        .enumerate()
        .filter(|(_, s)| s.sector_sized())
    {
        let src = dir.path().join(format!("src{i}"));
        let dst = dir.path().join(format!("dst{i}"));
        make_image(&src, shape, i as u64);
        make_garbage(&dst, shape.len(), i as u64);
        let Some(src_dev) = LoopDev::attach(&src, true) else {
            return;
        };
        let Some(dst_dev) = LoopDev::attach(&dst, false) else {
            return;
        };
        let opts = CopyOptions {
            verify: true,
            ..Default::default()
        };

        let r = e
            .copy(&src_dev.dev, &dst_dev.dev, &opts, &Control::new())
            .expect("copy");

        assert!(r.direct_io, "block devices take O_DIRECT");
        assert_cmp(&src_dev.dev, &dst_dev.dev, shape.len());
        assert_qemu_compare(&src_dev.dev, &dst_dev.dev);
        // Block device to sparse file: zero chunks read from the device are skipped.
        let back = dir.path().join(format!("back{i}"));
        make_empty(&back);
        e.copy(
            &dst_dev.dev,
            &back,
            &CopyOptions::default(),
            &Control::new(),
        )
        .expect("copy");
        assert_cmp(&src, &back, shape.len());
        assert!(allocated(&back) <= allocated(&src) + MIB, "{shape:?}");
    }
}

fn copy_file_to_larger_device(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::UnalignedTail, 3);
    let len = Shape::UnalignedTail.len();
    // Garbage over the copy length, zeros beyond it, so qemu-img can compare the sizes.
    make_garbage(&dst, len, 3);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dst)
        .unwrap()
        .set_len(len + 8192)
        .unwrap();
    let Some(dev) = LoopDev::attach(&dst, false) else {
        return;
    };

    e.copy(
        &src,
        &dev.dev,
        &CopyOptions {
            verify: true,
            ..Default::default()
        },
        &Control::new(),
    )
    .expect("copy");

    assert_cmp(&src, &dev.dev, len);
    assert_qemu_compare(&src, &dev.dev);
}

fn copy_to_small_device_is_invalid(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 1);
    make_garbage(&dst, MIB, 1);
    let Some(dev) = LoopDev::attach(&dst, false) else {
        return;
    };

    let err = e
        .copy(&src, &dev.dev, &CopyOptions::default(), &Control::new())
        .unwrap_err();

    assert_eq!(err.kind(), IoErrorKind::InvalidInput, "{err}");
}

fn checksum_matches_sha256sum(e: &Engine) {
    let dir = tempdir();
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        make_image(&src, shape, i as u64 + 40);
        let ctl = Control::new();

        let sum = e.checksum(&src, &ctl).expect("checksum");

        assert_eq!(sum, sha256sum(&src), "{shape:?}");
        assert_eq!(ctl.progress().bytes_done, shape.len());
    }
}

fn checksum_of_loop_device(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    make_image(&src, Shape::Sparse, 5);
    let Some(dev) = LoopDev::attach(&src, true) else {
        return;
    };

    let sum = e.checksum(&dev.dev, &Control::new()).expect("checksum");

    assert_eq!(sum, sha256sum(&dev.dev));
}

fn wipe_file(e: &Engine) {
    let dir = tempdir();
    for shape in [
        Shape::Random,
        Shape::Sparse,
        Shape::UnalignedTail,
        Shape::Empty,
    ] {
        let p = dir.path().join(format!("{shape:?}"));
        make_image(&p, shape, 9);
        let before = allocated(&p);
        let ctl = Control::new();

        let r = e.wipe(&p, &WipeOptions::default(), &ctl).expect("wipe");

        assert_zeros(&p, shape.len());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), shape.len());
        // Real overwrites keep the blocks: a wipe that merely unmapped would free them.
        assert!(
            allocated(&p) >= before,
            "{shape:?}: blocks were unmapped, not overwritten"
        );
        assert_eq!(r.bytes_zeroed + r.bytes_skipped, shape.len());
        assert_eq!(ctl.progress().bytes_done, shape.len());
    }
}

fn wipe_file_with_discard(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 2);

    let r = e.wipe(
        &p,
        &WipeOptions {
            discard: true,
            ..Default::default()
        },
        &Control::new(),
    );

    assert!(r.expect("wipe").discarded);
    assert_zeros(&p, Shape::Random.len());
    assert_eq!(allocated(&p), 0);
}

fn wipe_loop_device(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 4);
    let Some(dev) = LoopDev::attach(&p, false) else {
        return;
    };
    let opts = WipeOptions {
        step: MIB,
        ..Default::default()
    };

    let r = e.wipe(&dev.dev, &opts, &Control::new()).expect("wipe");

    assert_eq!(r.bytes_zeroed, Shape::Random.len());
    assert_zeros(&dev.dev, Shape::Random.len());
}

/// Runs `op` with a bandwidth limit, aborts it after a while, and checks it stops in time.
fn assert_aborts(op: impl FnOnce(&Control) -> Result<(), sdm_io::IoError> + Send) {
    let ctl = Arc::new(Control::new());
    ctl.set_bandwidth_limit(Some(4 * MIB));
    let aborter = Arc::clone(&ctl);
    let result = std::thread::scope(|s| {
        let h = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            aborter.abort();
            Instant::now()
        });
        let r = op(&ctl);
        let returned = Instant::now();
        (r, returned, h.join().unwrap())
    });
    let (r, returned, aborted_at) = result;
    let err = r.expect_err("aborted operation must fail");
    assert_eq!(err.kind(), IoErrorKind::Aborted, "{err}");
    assert!(
        returned.duration_since(aborted_at) < Duration::from_secs(1),
        "slow abort"
    );
    let p = ctl.progress();
    assert!(
        p.bytes_done < p.bytes_total,
        "finished before the abort: {p:?}"
    );
}

fn abort_copy(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 11);
    make_empty(&dst);

    assert_aborts(|ctl| e.copy(&src, &dst, &CopyOptions::default(), ctl).map(drop));
}

fn abort_wipe_file(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 12);

    assert_aborts(|ctl| e.wipe(&p, &WipeOptions::default(), ctl).map(drop));
}

fn abort_wipe_loop_device(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 13);
    let Some(dev) = LoopDev::attach(&p, false) else {
        return;
    };
    let opts = WipeOptions {
        step: 256 << 10,
        ..Default::default()
    };

    assert_aborts(|ctl| e.wipe(&dev.dev, &opts, ctl).map(drop));
}

fn abort_checksum(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 14);

    assert_aborts(|ctl| e.checksum(&p, ctl).map(drop));
}

fn copy_into_full_tmpfs_is_enospc(e: &Engine) {
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

fn concurrent_copies(e: &Engine) {
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

fn bandwidth_limit_slows_copy(e: &Engine) {
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
fn throttled_operations_report_progress(e: &Engine) {
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

fn fragmented_chunks_many_writes(e: &Engine) {
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

fn copy_checksum_wipe_on_tmpfs(e: &Engine) {
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

#[test]
fn sync_choice_is_reported() {
    let e = sync();
    assert_eq!(e.backend().as_str(), "sync");
    assert!(e.fallback_reason().is_some());
}

#[test]
fn missing_source_names_path() {
    let e = sync();
    let err = e
        .copy(
            std::path::Path::new("/nonexistent/src"),
            std::path::Path::new("/nonexistent/dst"),
            &CopyOptions::default(),
            &Control::new(),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("open /nonexistent/src failed: No such file"),
        "{err}"
    );
}
