//! Conversion fixtures: destinations, a 3-layer chain built with qemu-img/qemu-io, and the
//! qemu-img based verification every converter test ends with.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::qemu::*;
use super::*;
use sdm_io::{
    BackingFile, Control, ConvertDest, ConvertOptions, ConvertReport, DestFormat, Engine,
    ImageFormat, Layer, Qcow2Options,
};

pub const SIZE: u64 = 8 * MIB;

pub fn qcow2_dest(path: &Path, backing: Option<(&str, ImageFormat)>) -> ConvertDest {
    ConvertDest {
        path: path.to_owned(),
        format: DestFormat::Qcow2(Qcow2Options {
            backing: backing.map(|(n, f)| BackingFile {
                name: n.into(),
                format: f,
            }),
            ..Default::default()
        }),
        size: None,
        create: backing.is_none(),
        reads_zero: true,
    }
}

pub fn raw_dest(path: &Path) -> ConvertDest {
    ConvertDest {
        path: path.to_owned(),
        format: DestFormat::Raw,
        size: None,
        create: true,
        reads_zero: true,
    }
}

pub fn convert(e: &Engine, src: &[Layer], dst: &ConvertDest) -> ConvertReport {
    make_empty_if_missing(&dst.path);
    let ctl = Control::new();
    let r = e
        .convert(src, dst, &ConvertOptions::default(), &ctl)
        .unwrap_or_else(|err| panic!("convert {src:?} -> {dst:?}: {err}"));
    assert_eq!(ctl.progress().bytes_done, r.virtual_size, "{r:?}");
    r
}

pub fn make_empty_if_missing(p: &Path) {
    if !p.exists() {
        make_empty(p);
    }
}

/// Checks a finished conversion against the source chain with qemu-img.
pub fn verify(src: &Path, sfmt: ImageFormat, dst: &ConvertDest) {
    let dfmt = match dst.format {
        DestFormat::Raw => ImageFormat::Raw,
        DestFormat::Qcow2(_) => ImageFormat::Qcow2,
    };
    if dfmt == ImageFormat::Qcow2 {
        assert_check_clean(&dst.path);
    }
    assert_same(src, sfmt, &dst.path, dfmt);
}

/// base (qcow2 or raw) <- mid <- top, each layer writing over, zeroing and discarding
/// ranges of the ones below. Returns [top, mid, base] paths.
pub fn build_chain(dir: &Path, base_fmt: ImageFormat, base_opts: &str) -> [PathBuf; 3] {
    let base = dir.join("base");
    let mid = dir.join("mid");
    let top = dir.join("top");
    match base_fmt {
        ImageFormat::Qcow2 => {
            create_qcow2(&base, SIZE, base_opts, None);
            qemu_io(
                &base,
                "qcow2",
                &[
                    "write -P 0x11 0 1M",
                    "write -P 0x22 3M 512k",
                    "write -P 0x33 8128k 64k",
                    "write -z 5M 1M",
                    // Allocated, but all zeros: must not come out as data.
                    "write -P 0 6M 128k",
                ],
            );
        }
        ImageFormat::Raw => {
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "raw",
                &base.display().to_string(),
                &SIZE.to_string(),
            ]);
            qemu_io(
                &base,
                "raw",
                &[
                    "write -P 0x11 0 1M",
                    "write -P 0x22 3M 512k",
                    "write -P 0 6M 128k",
                ],
            );
        }
    }
    create_qcow2(&mid, SIZE, "", Some(("base", base_fmt.as_str())));
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0x44 512k 1M",
            "write -z 3M 256k",
            "discard 3328k 64k",
        ],
    );
    create_qcow2(&top, SIZE, "", Some(("mid", "qcow2")));
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0x55 2M 128k",
            "write -z 0 256k",
            "discard 768k 64k",
            "write -P 0x66 7M 4k",
        ],
    );
    [top, mid, base]
}

pub fn layers(paths: &[PathBuf], base_fmt: ImageFormat) -> Vec<Layer> {
    let n = paths.len();
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| Layer {
            path: p.clone(),
            format: if i + 1 == n {
                base_fmt
            } else {
                ImageFormat::Qcow2
            },
        })
        .collect()
}

/// Asserts no guest byte in [off, off+len) is data in `dst`'s map (depth 0).
pub fn assert_no_data(dst: &Path, fmt: ImageFormat, off: u64, len: u64) {
    for m in qemu_map(dst, fmt) {
        let overlap = m.start < off + len && off < m.start + m.length;
        assert!(
            !(overlap && m.data && m.depth == 0),
            "{} has data at {m:?}, expected none in [{off}, {})",
            dst.display(),
            off + len
        );
    }
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Sets incompatible feature bit `bit` in a v3 header.
pub fn set_incompatible_bit(p: &Path, bit: u32) {
    use std::os::unix::fs::FileExt;
    let f = open_rw(p);
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 72).unwrap();
    let v = u64::from_be_bytes(b) | (1 << bit);
    f.write_all_at(&v.to_be_bytes(), 72).unwrap();
}

/// Runs `op` throttled and aborts it after a while; returns its error.
pub fn run_aborted(
    op: impl FnOnce(&Control) -> Result<ConvertReport, sdm_io::IoError> + Send,
) -> sdm_io::IoError {
    let ctl = Arc::new(Control::new());
    ctl.set_bandwidth_limit(Some(MIB));
    let aborter = Arc::clone(&ctl);
    std::thread::scope(|sc| {
        sc.spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            aborter.abort();
        });
        let started = std::time::Instant::now();
        let err = op(&ctl).expect_err("aborted operation must fail");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "abort took {:?}",
            started.elapsed()
        );
        err
    })
}

pub fn opts_forced() -> ConvertOptions {
    ConvertOptions {
        force_qemu_img: true,
        ..Default::default()
    }
}
