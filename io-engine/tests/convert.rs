//! Format conversion on the native path: raw/qcow2 chains into raw/qcow2, each body run over
//! io_uring and the sync engine, with qemu-img (compare, check, map, measure) as the oracle.

mod common;

use std::path::{Path, PathBuf};

use common::conv::*;
use common::qemu::*;
use common::*;
use sdm_io::{
    BackingFile, Control, ConvertDest, ConvertOptions, Converter, DestFormat, Engine, ImageFormat,
    IoErrorKind, Qcow2Compat, Qcow2Options,
};

per_backend!(
    collapse_qcow2_chains,
    collapse_chain_on_raw_base,
    top_only_writes_only_the_top,
    top_only_with_partial_clusters_reads_below,
    grow_and_unaligned_sizes,
    smaller_destination_is_refused_untouched,
    source_variants_convert_exactly,
    destination_variants,
    raw_to_qcow2_skips_zeros,
    block_device_destinations,
    measure_matches_the_written_image,
    abort_native_conversion,
);

fn collapse_qcow2_chains(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    for depth in 1..=3 {
        let paths = &chain[3 - depth..];
        let src = layers(paths, ImageFormat::Qcow2);
        for (n, dst) in [
            raw_dest(&dir.path().join(format!("d{depth}.raw"))),
            qcow2_dest(&dir.path().join(format!("d{depth}.qcow2")), None),
        ]
        .into_iter()
        .enumerate()
        {
            let r = convert(e, &src, &dst);
            assert_eq!(r.converter, Converter::Native, "{r:?}");
            assert!(!r.top_only);
            verify(&src[0].path, ImageFormat::Qcow2, &dst);
            let fmt = [ImageFormat::Raw, ImageFormat::Qcow2][n];
            // The base's zero-filled data cluster and its explicit zero range are no data.
            assert_no_data(&dst.path, fmt, 5 * MIB, MIB + 128 * 1024);
            let src_data = data_bytes(&qemu_map(&src[0].path, ImageFormat::Qcow2), false);
            let dst_data = data_bytes(&qemu_map(&dst.path, fmt), false);
            assert!(dst_data <= src_data, "{dst_data} > {src_data} ({depth})");
        }
    }
}

fn collapse_chain_on_raw_base(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Raw, "");
    let src = layers(&chain, ImageFormat::Raw);
    for dst in [
        raw_dest(&dir.path().join("d.raw")),
        qcow2_dest(&dir.path().join("d.qcow2"), None),
    ] {
        let r = convert(e, &src, &dst);
        assert_eq!(r.converter, Converter::Native);
        verify(&chain[0], ImageFormat::Qcow2, &dst);
    }
}

fn top_only_writes_only_the_top(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let dst = qcow2_dest(&dir.path().join("dst"), Some(("mid", ImageFormat::Qcow2)));
    // The whole chain given, and the top alone: the same image either way.
    for given in [&chain[..], &chain[..1]] {
        let r = convert(e, &layers(given, ImageFormat::Qcow2), &dst);
        assert_eq!(r.converter, Converter::Native, "{r:?}");
        assert!(r.top_only);
        verify(&chain[0], ImageFormat::Qcow2, &dst);
        let i = info(&dst.path, ImageFormat::Qcow2);
        assert_eq!(i["backing-filename"], "mid");
        assert_eq!(i["backing-filename-format"], "qcow2");
        assert_eq!(i["format-specific"]["data"]["compat"], "1.1");
        // Depth-0 allocations of the destination are exactly the top's.
        let own = |p: &Path| -> Vec<(u64, u64, bool)> {
            qemu_map(p, ImageFormat::Qcow2)
                .into_iter()
                .filter(|m| m.depth == 0)
                .map(|m| (m.start, m.length, m.zero))
                .collect()
        };
        assert_eq!(own(&dst.path), own(&chain[0]));
    }
}

fn top_only_with_partial_clusters_reads_below(e: &Engine) {
    // A top with 4 KiB clusters into a 64 KiB-cluster destination: a destination cluster
    // mixes top data with the parent's, which must come from the layers below.
    let dir = tempdir();
    let base = dir.path().join("base");
    let top = dir.path().join("top");
    create_qcow2(&base, SIZE, "", None);
    qemu_io(&base, "qcow2", &["write -P 0x77 0 2M"]);
    create_qcow2(&top, SIZE, "cluster_size=4096", Some(("base", "qcow2")));
    qemu_io(&top, "qcow2", &["write -P 0x88 8k 4k", "write -z 80k 4k"]);
    let dst = qcow2_dest(&dir.path().join("dst"), Some(("base", ImageFormat::Qcow2)));
    let src = [qcow2(top.clone()), qcow2(base.clone())];
    let r = convert(e, &src, &dst);
    assert_eq!(r.converter, Converter::Native);
    verify(&top, ImageFormat::Qcow2, &dst);
    // With only the top given, the native path cannot fill those clusters: qemu-img does.
    let r = convert(e, &src[..1], &dst);
    assert!(
        matches!(&r.converter, Converter::QemuImg { reason } if reason.contains("mix")),
        "{r:?}"
    );
    verify(&top, ImageFormat::Qcow2, &dst);
}

fn grow_and_unaligned_sizes(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    let odd = 5 * MIB + 12345;
    create_qcow2(&src, odd, "", None);
    qemu_io(
        &src,
        "qcow2",
        &["write -P 0x5a 0 100k", "write -P 0xa5 5230000 12345"],
    );
    // qemu-img create rounds a qcow2 size up to a sector.
    let odd = info(&src, ImageFormat::Qcow2)["virtual-size"]
        .as_u64()
        .unwrap();
    for (i, size) in [None, Some(odd + 1), Some(9 * MIB + 777)]
        .into_iter()
        .enumerate()
    {
        for mut dst in [
            raw_dest(&dir.path().join(format!("d{i}.raw"))),
            qcow2_dest(&dir.path().join(format!("d{i}.qcow2")), None),
        ] {
            dst.size = size;
            let r = convert(e, &[qcow2(src.clone())], &dst);
            // qcow2 sizes are whole sectors, as qemu-img makes them.
            let want = size.unwrap_or(odd);
            let want = match dst.format {
                DestFormat::Raw => want,
                _ => want.next_multiple_of(512),
            };
            assert_eq!(r.virtual_size, want);
            verify(&src, ImageFormat::Qcow2, &dst);
            let fmt = match dst.format {
                DestFormat::Raw => ImageFormat::Raw,
                _ => ImageFormat::Qcow2,
            };
            // (qemu reports a RAW size rounded up to a sector: the file itself is exact.)
            let got = match fmt {
                ImageFormat::Raw => std::fs::metadata(&dst.path).unwrap().len(),
                _ => info(&dst.path, fmt)["virtual-size"].as_u64().unwrap(),
            };
            assert_eq!(got, r.virtual_size);
        }
    }
}

fn smaller_destination_is_refused_untouched(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    create_qcow2(&src, 4 * MIB, "", None);
    qemu_io(&src, "qcow2", &["write -P 1 0 1M"]);
    for mut dst in [
        raw_dest(&dir.path().join("d.raw")),
        qcow2_dest(&dir.path().join("d.qcow2"), None),
    ] {
        make_garbage(&dst.path, MIB, 3);
        let before = sha256sum(&dst.path);
        dst.size = Some(4 * MIB - 512);
        let err = e
            .convert(
                &[qcow2(src.clone())],
                &dst,
                &ConvertOptions::default(),
                &Control::new(),
            )
            .unwrap_err();
        assert_eq!(err.kind(), IoErrorKind::InvalidInput, "{err}");
        assert_eq!(sha256sum(&dst.path), before, "destination changed");
    }
}

/// Source images made by qemu-img in every variant the issue names: each converts exactly
/// natively, or is handed to qemu-img with a reason.
fn source_variants_convert_exactly(e: &Engine) {
    let dir = tempdir();
    let d = dir.path();
    let pattern = [
        "write -P 0x31 0 300k",
        "write -P 0x32 1M 64k",
        "write -z 2M 1M",
        "write -P 0x33 7M 1M",
    ];
    let mut cases: Vec<(&str, PathBuf, bool)> = Vec::new();
    for (name, opts) in [
        ("compat010", "compat=0.10"),
        ("c512", "cluster_size=512"),
        ("c2m", "cluster_size=2M"),
        ("rc1", "refcount_bits=1"),
        ("rc64", "refcount_bits=64"),
        ("pre_meta", "preallocation=metadata"),
        ("pre_falloc", "preallocation=falloc"),
        ("pre_full", "preallocation=full"),
        ("lazy", "lazy_refcounts=on"),
    ] {
        let p = d.join(name);
        create_qcow2(&p, SIZE, opts, None);
        qemu_io(&p, "qcow2", &pattern);
        cases.push((name, p, true));
    }
    // zlib-compressed clusters.
    let plain = d.join("plain.raw");
    make_image(&plain, Shape::Sparse, 5);
    let comp = d.join("compressed");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &s(&plain),
        &s(&comp),
    ]);
    cases.push(("compressed", comp, true));
    // An internal snapshot, then more writes: only the active state is converted.
    let snap = d.join("snap");
    create_qcow2(&snap, SIZE, "", None);
    qemu_io(&snap, "qcow2", &pattern);
    qemu_img(&["snapshot", "-c", "s1", &s(&snap)]);
    qemu_io(&snap, "qcow2", &["write -P 0x99 0 64k", "write -z 1M 64k"]);
    cases.push(("snapshot", snap, true));
    // A persistent bitmap (not copied unless asked).
    let bm = d.join("bitmap");
    create_qcow2(&bm, SIZE, "", None);
    qemu_img(&["bitmap", "--add", &s(&bm), "b0"]);
    qemu_io(&bm, "qcow2", &pattern);
    cases.push(("bitmap", bm, true));
    // The dirty bit (lazy refcounts not flushed): qemu-img must handle it.
    let dirty = d.join("dirty");
    create_qcow2(&dirty, SIZE, "lazy_refcounts=on", None);
    qemu_io(&dirty, "qcow2", &pattern);
    set_incompatible_bit(&dirty, 0);
    cases.push(("dirty", dirty, false));
    for (name, p, native) in cases {
        for dst in [
            raw_dest(&d.join(format!("{name}.out.raw"))),
            qcow2_dest(&d.join(format!("{name}.out.qcow2")), None),
        ] {
            let r = convert(e, &[qcow2(p.clone())], &dst);
            match (&r.converter, native) {
                (Converter::Native, true) => {}
                (Converter::QemuImg { reason }, false) => {
                    assert!(reason.contains("dirty"), "{name}: {reason}")
                }
                (c, _) => panic!("{name}: unexpected converter {c:?}"),
            }
            verify(&p, ImageFormat::Qcow2, &dst);
        }
    }
}

fn destination_variants(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let src = layers(&chain, ImageFormat::Qcow2);
    for (name, compat, cs, backing) in [
        ("v2", Qcow2Compat::V0_10, 65536, false),
        ("v2b", Qcow2Compat::V0_10, 65536, true),
        ("c512", Qcow2Compat::V1_1, 512, false),
        ("c2m", Qcow2Compat::V1_1, 2 << 20, false),
        ("c4kb", Qcow2Compat::V1_1, 4096, true),
    ] {
        let dst = ConvertDest {
            path: dir.path().join(name),
            format: DestFormat::Qcow2(Qcow2Options {
                compat,
                cluster_size: cs,
                backing: backing.then(|| BackingFile {
                    name: "mid".into(),
                    format: ImageFormat::Qcow2,
                }),
            }),
            size: None,
            create: true,
            reads_zero: true,
        };
        let r = convert(e, &src, &dst);
        assert_eq!(r.converter, Converter::Native, "{name}");
        verify(&chain[0], ImageFormat::Qcow2, &dst);
        let i = info(&dst.path, ImageFormat::Qcow2);
        assert_eq!(i["cluster-size"], cs, "{name}");
        assert_eq!(
            i["format-specific"]["data"]["compat"],
            compat.as_str(),
            "{name}"
        );
    }
}

fn raw_to_qcow2_skips_zeros(e: &Engine) {
    let dir = tempdir();
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        make_image(&src, shape, i as u64 + 70);
        let dst = qcow2_dest(&dir.path().join(format!("dst{i}")), None);
        let r = convert(e, &[raw(src.clone())], &dst);
        assert_eq!(r.converter, Converter::Native);
        verify(&src, ImageFormat::Raw, &dst);
        // Data clusters hold at most the source's data, rounded to clusters.
        let data = data_bytes(&qemu_map(&dst.path, ImageFormat::Qcow2), false);
        let src_data = allocated(&src);
        assert!(
            data <= src_data + 16 * 65536,
            "{shape:?}: {data} vs {src_data}"
        );
        if matches!(shape, Shape::ZeroHeavy) {
            assert!(
                data <= 8 * 65536,
                "zero-filled source written as data: {data}"
            );
        }
        let back = raw_dest(&dir.path().join(format!("back{i}")));
        convert(e, &[qcow2(dst.path.clone())], &back);
        assert_cmp(&src, &back.path, shape.len());
    }
}

fn block_device_destinations(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let src = layers(&chain, ImageFormat::Qcow2);
    let raw_file = dir.path().join("raw.lv");
    make_garbage(&raw_file, SIZE, 9);
    let Some(raw_dev) = LoopDev::attach(&raw_file, false) else {
        return;
    };
    // Garbage on the device and no "reads zero": holes must be zeroed.
    let mut dst = raw_dest(&raw_dev.dev);
    dst.create = false;
    dst.reads_zero = false;
    let r = convert(e, &src, &dst);
    assert_eq!(r.converter, Converter::Native);
    assert_same(
        &chain[0],
        ImageFormat::Qcow2,
        &raw_dev.dev,
        ImageFormat::Raw,
    );
    let q_file = dir.path().join("qcow2.lv");
    make_garbage(&q_file, 2 * SIZE, 10);
    let Some(q_dev) = LoopDev::attach(&q_file, false) else {
        return;
    };
    let dst = qcow2_dest(&q_dev.dev, None);
    let r = convert(e, &src, &dst);
    assert!(r.image_end.unwrap() <= 2 * SIZE);
    verify(&chain[0], ImageFormat::Qcow2, &dst);
    // qemu-img writing RAW to a block device gets -W, as VDSM's line.
    let mut dst = raw_dest(&raw_dev.dev);
    dst.create = false;
    let r = e
        .convert(
            &src,
            &dst,
            &ConvertOptions {
                force_qemu_img: true,
                ..Default::default()
            },
            &Control::new(),
        )
        .expect("qemu-img convert");
    let args = r.qemu_img_args.expect("qemu-img ran");
    assert!(
        args.contains(&"-W".to_string()) && args.contains(&"-n".to_string()),
        "{args:?}"
    );
    assert_same(
        &chain[0],
        ImageFormat::Qcow2,
        &raw_dev.dev,
        ImageFormat::Raw,
    );
}

fn measure_matches_the_written_image(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let src = layers(&chain, ImageFormat::Qcow2);
    for (name, backing, given) in [
        ("full", None, 3),
        ("top", Some(("mid", ImageFormat::Qcow2)), 1),
    ] {
        let dst = qcow2_dest(&dir.path().join(name), backing);
        let m = e
            .measure(&src[..given], &dst.format, None)
            .expect("measure");
        let r = convert(e, &src[..given], &dst);
        assert_eq!(Some(m.required), r.image_end, "{name}");
        assert_eq!(std::fs::metadata(&dst.path).unwrap().len(), m.required);
        assert!(m.fully_allocated >= SIZE && m.fully_allocated >= m.required);
        if backing.is_none() {
            // qemu-img measure of the same collapse agrees within a few clusters.
            let q = qemu_img(&[
                "measure",
                "--output=json",
                "-O",
                "qcow2",
                "-f",
                "qcow2",
                &s(&chain[0]),
            ]);
            let q: serde_json::Value = serde_json::from_str(&q).unwrap();
            let qreq = q["required"].as_u64().unwrap();
            assert!(
                m.required.abs_diff(qreq) <= 8 * 65536,
                "{} vs qemu {qreq}",
                m.required
            );
        }
    }
}

fn abort_native_conversion(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    make_image(&src, Shape::Random, 21);
    let q = dir.path().join("src.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &s(&src), &s(&q)]);
    for dst in [
        raw_dest(&dir.path().join("d.raw")),
        qcow2_dest(&dir.path().join("d.q"), None),
    ] {
        make_empty(&dst.path);
        let err = run_aborted(|ctl| {
            e.convert(&[qcow2(q.clone())], &dst, &ConvertOptions::default(), ctl)
        });
        assert_eq!(err.kind(), IoErrorKind::Aborted, "{err}");
    }
}
