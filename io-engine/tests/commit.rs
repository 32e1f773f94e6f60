//! Commit (cold merge) and sparsify on the engine, each body over io_uring and the sync
//! engine, with qemu-img and qemu-io as the oracle: what the chain read before is what the
//! base reads after; sparsified images read the same and hold less.

mod common;

use std::path::{Path, PathBuf};

use common::conv::*;
use common::qemu::*;
use common::*;
use sdm_io::{
    CommitOptions, Control, ConvertOptions, Converter, Engine, ImageFormat, IoErrorKind, Layer,
};

per_backend!(
    commit_into_qcow2_and_raw_bases,
    commit_base_variants,
    commit_grows_the_base,
    commit_of_compressed_clusters,
    commit_refuses_what_is_not_the_backing,
    commit_abort,
    sparsify_raw_file,
    sparsify_qcow2,
    sparsify_qcow2_through_qemu_io,
    compressed_conversion_decodes_in_parallel_and_aborts,
);

/// The chain read through `top`, as a RAW file: what the base must read after the commit.
fn expected(dir: &Path, top: &Path) -> PathBuf {
    let out = dir.join("expected.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &s(top), &s(&out)]);
    out
}

fn commit(e: &Engine, top: &Path, base: &Layer, opts: &CommitOptions) -> sdm_io::CommitReport {
    let ctl = Control::new();
    let r = e
        .commit(&qcow2(top.to_owned()), base, opts, &ctl)
        .unwrap_or_else(|err| panic!("commit {top:?} into {base:?}: {err}"));
    let p = ctl.progress();
    if r.converter == Converter::Native {
        assert_eq!(p.bytes_done, p.bytes_total, "{r:?}");
    }
    r
}

/// After committing `top` into `base`: the base (with its own backing) reads what the chain
/// read through the top before, the top still reads the same, the base is clean.
fn check_committed(dir: &Path, want: &Path, top: &Path, base: &Layer) {
    assert_same(want, ImageFormat::Raw, &base.path, base.format);
    assert_same(want, ImageFormat::Raw, top, ImageFormat::Qcow2);
    if base.format == ImageFormat::Qcow2 {
        assert_check_clean(&base.path);
    }
    let _ = dir;
}

fn commit_into_qcow2_and_raw_bases(e: &Engine) {
    for base_fmt in [ImageFormat::Qcow2, ImageFormat::Raw] {
        let dir = tempdir();
        let [top, mid, base] = build_chain(dir.path(), base_fmt, "");
        // top into mid (a qcow2 base with a backing file of its own) ...
        let want = expected(dir.path(), &top);
        let top_alloc_before = allocated(&top);
        let r = commit(e, &top, &qcow2(mid.clone()), &CommitOptions::default());
        assert_eq!(r.converter, Converter::Native, "{r:?}");
        assert!(r.bytes_written > 0 && r.bytes_zeroed > 0, "{r:?}");
        check_committed(dir.path(), &want, &top, &qcow2(mid.clone()));
        assert_eq!(allocated(&top), top_alloc_before, "the top is not emptied");
        // ... then mid into the base, RAW or qcow2.
        let want = expected(dir.path(), &mid);
        let b = Layer {
            path: base.clone(),
            format: base_fmt,
        };
        let r = commit(e, &mid, &b, &CommitOptions::default());
        assert_eq!(r.converter, Converter::Native, "{r:?}");
        check_committed(dir.path(), &want, &mid, &b);
        // The mid's zero range is a hole or zero cluster in the base now, not data.
        assert_no_data(&base, base_fmt, 3 * MIB, 256 * 1024);
    }
}

/// Bases the native writer must leave to qemu-img, and one it handles with other cluster
/// sizes; each ends equal to the chain.
fn commit_base_variants(e: &Engine) {
    let cases: &[(&str, &str, bool)] = &[
        ("", "cluster_size=512", true),
        ("cluster_size=2M", "", true),
        ("", "cluster_size=2M", false),
        ("", "compat=0.10", false),
        ("", "refcount_bits=1", true),
        ("", "refcount_bits=64", true),
        ("", "bitmap", false),
        ("", "snapshot", false),
        ("", "preallocation=metadata", true),
        ("", "preallocation=falloc", true),
    ];
    for &(top_opts, base_opts, native) in cases {
        let dir = tempdir();
        let base = dir.path().join("base");
        let top = dir.path().join("top");
        let real_opts = match base_opts {
            "bitmap" | "snapshot" => "",
            o => o,
        };
        create_qcow2(&base, SIZE, real_opts, None);
        qemu_io(
            &base,
            "qcow2",
            &["write -P 0x11 0 2M", "write -P 0x12 6M 1M"],
        );
        match base_opts {
            "bitmap" => {
                qemu_img(&["bitmap", "--add", &s(&base), "b0"]);
            }
            "snapshot" => {
                qemu_img(&["snapshot", "-c", "s1", &s(&base)]);
            }
            _ => {}
        }
        create_qcow2(&top, SIZE, top_opts, Some(("base", "qcow2")));
        qemu_io(
            &top,
            "qcow2",
            &[
                "write -P 0x21 1M 2M",
                "write -z 6M 256k",
                "write -P 0x22 7680k 512k",
            ],
        );
        let want = expected(dir.path(), &top);
        let r = commit(e, &top, &qcow2(base.clone()), &CommitOptions::default());
        assert_eq!(
            r.converter == Converter::Native,
            native,
            "{top_opts}/{base_opts}: {r:?}"
        );
        check_committed(dir.path(), &want, &top, &qcow2(base.clone()));
        if base_opts == "bitmap" {
            let i = info(&base, ImageFormat::Qcow2);
            let bitmaps = &i["format-specific"]["data"]["bitmaps"];
            assert_eq!(bitmaps[0]["name"], "b0", "bitmap kept: {i}");
        }
    }
}

fn commit_grows_the_base(e: &Engine) {
    for base_fmt in [ImageFormat::Qcow2, ImageFormat::Raw] {
        let dir = tempdir();
        let base = dir.path().join("base");
        let top = dir.path().join("top");
        match base_fmt {
            ImageFormat::Qcow2 => create_qcow2(&base, SIZE, "", None),
            ImageFormat::Raw => {
                qemu_img(&["create", "-q", "-f", "raw", &s(&base), &SIZE.to_string()]);
            }
        }
        qemu_io(&base, base_fmt.as_str(), &["write -P 0x11 7M 1M"]);
        // 12 MiB + 512: larger, and not cluster aligned.
        let big = 12 * MIB + 512;
        create_qcow2(&top, big, "", Some(("base", base_fmt.as_str())));
        qemu_io(
            &top,
            "qcow2",
            &["write -P 0x21 7680k 1M", "write -P 0x22 11M 1049088"],
        );
        let want = expected(dir.path(), &top);
        let b = Layer {
            path: base.clone(),
            format: base_fmt,
        };
        let r = commit(e, &top, &b, &CommitOptions::default());
        assert_eq!(r.base_size, big);
        assert_eq!(info(&base, base_fmt)["virtual-size"], big, "{r:?}");
        check_committed(dir.path(), &want, &top, &b);
    }
}

fn commit_of_compressed_clusters(e: &Engine) {
    let dir = tempdir();
    let base = dir.path().join("base");
    let top = dir.path().join("top");
    create_qcow2(&base, SIZE, "", None);
    qemu_io(&base, "qcow2", &["write -P 0x11 0 4M"]);
    create_qcow2(&top, SIZE, "", Some(("base", "qcow2")));
    qemu_io(
        &top,
        "qcow2",
        &["write -c -P 0x31 1M 64k", "write -c -P 0x32 2M 128k"],
    );
    let want = expected(dir.path(), &top);
    let r = commit(e, &top, &qcow2(base.clone()), &CommitOptions::default());
    assert_eq!(r.converter, Converter::Native, "{r:?}");
    check_committed(dir.path(), &want, &top, &qcow2(base));
}

fn commit_refuses_what_is_not_the_backing(e: &Engine) {
    let dir = tempdir();
    let [top, mid, base] = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let before = sha256sum(&base);
    // The base is not the top's backing file (it is two levels down).
    let err = e
        .commit(
            &qcow2(top.clone()),
            &qcow2(base.clone()),
            &CommitOptions::default(),
            &Control::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::InvalidInput, "{err}");
    assert_eq!(sha256sum(&base), before);
    // A RAW top has no backing at all.
    let err = e
        .commit(
            &raw(mid.clone()),
            &qcow2(base.clone()),
            &CommitOptions::default(),
            &Control::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::InvalidInput, "{err}");
    assert_eq!(sha256sum(&base), before);
}

fn commit_abort(e: &Engine) {
    let dir = tempdir();
    let base = dir.path().join("base");
    let top = dir.path().join("top");
    create_qcow2(&base, 64 * MIB, "", None);
    create_qcow2(&top, 64 * MIB, "", Some(("base", "qcow2")));
    qemu_io(&top, "qcow2", &["write -P 0x21 0 48M"]);
    let err = run_aborted(|ctl| {
        e.commit(
            &qcow2(top.clone()),
            &qcow2(base.clone()),
            &CommitOptions::default(),
            ctl,
        )
        .map(|_| unreachable!("aborted commit finished"))
    });
    assert_eq!(err.kind(), IoErrorKind::Aborted, "{err}");
}

fn sparsify_raw_file(e: &Engine) {
    let dir = tempdir();
    let img = dir.path().join("img.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        &s(&img),
        &(16 * MIB + 512).to_string(),
    ]);
    qemu_io(
        &img,
        "raw",
        &[
            "write -P 0x11 0 1M",
            "write -P 0 1M 3M",
            "write -P 0x12 4M 4k",
            "write -P 0 4100k 4M",
            "write -P 0x13 16M 512",
        ],
    );
    let sum = sha256sum(&img);
    let ctl = Control::new();
    let r = e
        .sparsify(&raw(img.clone()), &ctl)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(sha256sum(&img), sum, "same bytes");
    assert!(r.bytes_given_back >= 7 * MIB, "{r:?}");
    assert!(r.allocated_after + 7 * MIB <= r.allocated_before, "{r:?}");
    assert_no_data(&img, ImageFormat::Raw, MIB, 3 * MIB);
    assert_no_data(&img, ImageFormat::Raw, 4100 * 1024, 4 * MIB);
    // Nothing left to give back the second time.
    let again = e.sparsify(&raw(img.clone()), &ctl).unwrap();
    assert_eq!(again.bytes_given_back, 0, "{again:?}");
}

fn sparsify_qcow2(e: &Engine) {
    for backed in [false, true] {
        let dir = tempdir();
        let base = dir.path().join("base");
        let img = dir.path().join("img");
        create_qcow2(&base, SIZE, "", None);
        qemu_io(&base, "qcow2", &["write -P 0x77 0 8M"]);
        create_qcow2(&img, SIZE, "", backed.then_some(("base", "qcow2")));
        qemu_io(
            &img,
            "qcow2",
            &[
                "write -P 0x11 0 1M",
                "write -P 0 1M 2M",
                "write -P 0x12 3M 64k",
                // Half a cluster of zeros: the cluster is filled from below, so it is all
                // zeros without a backing file and half 0x77 with one.
                "write -P 0 3136k 32k",
                "write -c -P 0 5M 64k",
                "write -P 0 8128k 64k",
            ],
        );
        let want = expected(dir.path(), &img);
        let r = e
            .sparsify(&qcow2(img.clone()), &Control::new())
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(r.converter, Converter::Native, "{r:?}");
        let half_cluster = if backed { 0 } else { 64 * 1024 };
        assert_eq!(
            r.bytes_given_back,
            2 * MIB + 128 * 1024 + half_cluster,
            "{r:?}"
        );
        assert!(r.allocated_after + 2 * MIB <= r.allocated_before, "{r:?}");
        assert_same(&want, ImageFormat::Raw, &img, ImageFormat::Qcow2);
        assert_check_clean(&img);
        for m in qemu_map(&img, ImageFormat::Qcow2) {
            let zeroed = m.start < 3 * MIB && m.start + m.length > MIB;
            assert!(!(zeroed && m.data && m.depth == 0), "{m:?}");
        }
    }
}

fn sparsify_qcow2_through_qemu_io(e: &Engine) {
    for opts in ["bitmap", "compat=0.10"] {
        let dir = tempdir();
        let img = dir.path().join("img");
        create_qcow2(&img, SIZE, if opts == "bitmap" { "" } else { opts }, None);
        qemu_io(&img, "qcow2", &["write -P 0x11 0 1M", "write -P 0 1M 2M"]);
        if opts == "bitmap" {
            qemu_img(&["bitmap", "--add", &s(&img), "b0"]);
        }
        let want = expected(dir.path(), &img);
        let r = e
            .sparsify(&qcow2(img.clone()), &Control::new())
            .unwrap_or_else(|err| panic!("{opts}: {err}"));
        assert!(matches!(r.converter, Converter::QemuImg { .. }), "{r:?}");
        assert_eq!(r.bytes_given_back, 2 * MIB, "{r:?}");
        assert!(
            r.allocated_after + MIB <= r.allocated_before,
            "{opts}: {r:?}"
        );
        assert_same(&want, ImageFormat::Raw, &img, ImageFormat::Qcow2);
        assert_check_clean(&img);
        if opts == "bitmap" {
            let i = info(&img, ImageFormat::Qcow2);
            assert_eq!(i["format-specific"]["data"]["bitmaps"][0]["name"], "b0");
        }
    }
}

/// A zlib-compressed source is decoded on worker threads: the result is exact, and an abort
/// while windows are out with the workers ends cleanly (every lent slot comes back).
fn compressed_conversion_decodes_in_parallel_and_aborts(e: &Engine) {
    let dir = tempdir();
    let raw_src = dir.path().join("src.raw");
    // Compressible: every other 4 KiB block zeroed.
    let mut bytes = random_bytes(5, (32 * MIB) as usize);
    for block in bytes.chunks_mut(8192) {
        block[..4096].fill(0);
    }
    std::fs::write(&raw_src, &bytes).unwrap();
    let src = dir.path().join("src.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &s(&raw_src),
        &s(&src),
    ]);
    let dst = raw_dest(&dir.path().join("dst.raw"));
    let r = convert(e, &[qcow2(src.clone())], &dst);
    assert_eq!(r.converter, Converter::Native, "{r:?}");
    assert_same(&src, ImageFormat::Qcow2, &dst.path, ImageFormat::Raw);
    let err =
        run_aborted(|ctl| e.convert(&[qcow2(src.clone())], &dst, &ConvertOptions::default(), ctl));
    assert_eq!(err.kind(), IoErrorKind::Aborted, "{err}");
}
