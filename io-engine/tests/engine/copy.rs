//! Copies: files, loop devices, partial lengths and a destination too small.

use sdm_io::{Control, CopyOptions, Engine, IoErrorKind};

use crate::common::*;

pub(crate) fn copy_to_fresh_file(e: &Engine) {
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

pub(crate) fn copy_over_existing_file(e: &Engine) {
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

pub(crate) fn copy_partial_length(e: &Engine) {
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

pub(crate) fn copy_between_loop_devices(e: &Engine) {
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

pub(crate) fn copy_file_to_larger_device(e: &Engine) {
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

pub(crate) fn copy_to_small_device_is_invalid(e: &Engine) {
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
