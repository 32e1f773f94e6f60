//! Aborting each operation: it must stop soon, and before it finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_io::{Control, CopyOptions, Engine, IoErrorKind, WipeOptions};

use crate::common::*;

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

pub(crate) fn abort_copy(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    make_image(&src, Shape::Random, 11);
    make_empty(&dst);

    assert_aborts(|ctl| e.copy(&src, &dst, &CopyOptions::default(), ctl).map(drop));
}

pub(crate) fn abort_wipe_file(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 12);

    assert_aborts(|ctl| e.wipe(&p, &WipeOptions::default(), ctl).map(drop));
}

pub(crate) fn abort_wipe_loop_device(e: &Engine) {
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

pub(crate) fn abort_checksum(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("v");
    make_image(&p, Shape::Random, 14);

    assert_aborts(|ctl| e.checksum(&p, ctl).map(drop));
}
