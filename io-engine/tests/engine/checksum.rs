//! Checksums of files and loop devices against sha256sum.

use sdm_io::{Control, Engine};

use crate::common::*;

pub(crate) fn checksum_matches_sha256sum(e: &Engine) {
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

pub(crate) fn checksum_of_loop_device(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    make_image(&src, Shape::Sparse, 5);
    let Some(dev) = LoopDev::attach(&src, true) else {
        return;
    };

    let sum = e.checksum(&dev.dev, &Control::new()).expect("checksum");

    assert_eq!(sum, sha256sum(&dev.dev));
}
