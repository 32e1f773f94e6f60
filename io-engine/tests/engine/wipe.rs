//! Wipes of files (with and without discard) and of loop devices.

use sdm_io::{Control, Engine, WipeOptions};

use crate::common::*;

pub(crate) fn wipe_file(e: &Engine) {
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

pub(crate) fn wipe_file_with_discard(e: &Engine) {
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

pub(crate) fn wipe_loop_device(e: &Engine) {
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
