//! Format conversion (raw/qcow2 chains into raw/qcow2), each body run over io_uring and the
//! sync engine, with qemu-img (compare, check, map, measure) as the oracle.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::qemu::*;
use common::*;
use sdm_io::{
    BackingFile, Control, ConvertDest, ConvertOptions, ConvertReport, Converter, DestFormat,
    Engine, ImageFormat, IoErrorKind, Layer, Qcow2Compat, Qcow2Options,
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
    abort_qemu_img_kills_the_child,
    qemu_img_lines_are_vdsms,
    truncated_chain_is_pinned_for_qemu_img,
    encrypted_source_is_never_read_natively,
    copy_bitmaps_goes_through_qemu_img,
    bad_chains_are_refused,
    allocation_map_and_zero_ranges,
);

const SIZE: u64 = 8 * MIB;

fn qcow2_dest(path: &Path, backing: Option<(&str, ImageFormat)>) -> ConvertDest {
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

fn raw_dest(path: &Path) -> ConvertDest {
    ConvertDest {
        path: path.to_owned(),
        format: DestFormat::Raw,
        size: None,
        create: true,
        reads_zero: true,
    }
}

fn convert(e: &Engine, src: &[Layer], dst: &ConvertDest) -> ConvertReport {
    make_empty_if_missing(&dst.path);
    let ctl = Control::new();
    let r = e
        .convert(src, dst, &ConvertOptions::default(), &ctl)
        .unwrap_or_else(|err| panic!("convert {src:?} -> {dst:?}: {err}"));
    assert_eq!(ctl.progress().bytes_done, r.virtual_size, "{r:?}");
    r
}

fn make_empty_if_missing(p: &Path) {
    if !p.exists() {
        make_empty(p);
    }
}

/// Checks a finished conversion against the source chain with qemu-img.
fn verify(src: &Path, sfmt: ImageFormat, dst: &ConvertDest) {
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
fn build_chain(dir: &Path, base_fmt: ImageFormat, base_opts: &str) -> [PathBuf; 3] {
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

fn layers(paths: &[PathBuf], base_fmt: ImageFormat) -> Vec<Layer> {
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
fn assert_no_data(dst: &Path, fmt: ImageFormat, off: u64, len: u64) {
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

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Sets incompatible feature bit `bit` in a v3 header.
fn set_incompatible_bit(p: &Path, bit: u32) {
    use std::os::unix::fs::FileExt;
    let f = open_rw(p);
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 72).unwrap();
    let v = u64::from_be_bytes(b) | (1 << bit);
    f.write_all_at(&v.to_be_bytes(), 72).unwrap();
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

/// Runs `op` throttled and aborts it after a while; returns its error.
fn run_aborted(
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

fn opts_forced() -> ConvertOptions {
    ConvertOptions {
        force_qemu_img: true,
        ..Default::default()
    }
}

/// qemu-img processes whose command line names `path`.
fn qemu_img_procs(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-img") && cmd.contains(&needle) {
            found.push(cmd);
        }
    }
    found
}

fn abort_qemu_img_kills_the_child(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    make_image(&src, Shape::Random, 31);
    let q = dir.path().join("src.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &s(&src), &s(&q)]);
    let dst = raw_dest(&dir.path().join("dst"));
    make_empty(&dst.path);
    // The bandwidth limit reaches qemu-img as -r, so it is still running at the abort.
    let err = run_aborted(|ctl| e.convert(&[qcow2(q.clone())], &dst, &opts_forced(), ctl));
    assert_eq!(err.kind(), IoErrorKind::Aborted, "{err}");
    assert!(
        qemu_img_procs(&dst.path).is_empty(),
        "qemu-img left running"
    );
}

fn qemu_img_lines_are_vdsms(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let src = layers(&chain, ImageFormat::Qcow2);
    let top = s(&chain[0]);
    // Collapse into a new RAW file, into a new qcow2, and top-only into an existing qcow2.
    let to_raw = raw_dest(&dir.path().join("r"));
    let to_q = qcow2_dest(&dir.path().join("q"), None);
    let to_top = qcow2_dest(&dir.path().join("t"), Some(("mid", ImageFormat::Qcow2)));
    create_qcow2(&to_top.path, SIZE, "compat=1.1", Some(("mid", "qcow2")));
    for (dst, want) in [
        (&to_raw, vec!["-f", "qcow2", "-O", "raw"]),
        (
            &to_q,
            vec!["-f", "qcow2", "-O", "qcow2", "-o", "compat=1.1"],
        ),
        (
            &to_top,
            vec!["-f", "qcow2", "-O", "qcow2", "-n", "-B", "mid"],
        ),
    ] {
        make_empty_if_missing(&dst.path);
        let r = e
            .convert(&src, dst, &opts_forced(), &Control::new())
            .expect("qemu-img convert");
        let mut line = vec!["convert", "-p", "-t", "none", "-T", "none"];
        line.extend(want);
        let d = s(&dst.path);
        line.extend([top.as_str(), d.as_str()]);
        assert_eq!(r.qemu_img_args.unwrap(), line);
        assert!(matches!(r.converter, Converter::QemuImg { .. }));
        verify(&chain[0], ImageFormat::Qcow2, dst);
    }
}

fn truncated_chain_is_pinned_for_qemu_img(e: &Engine) {
    // Collapsing [top, mid] without base: both converters must read base as absent.
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let src = layers(&chain[..2], ImageFormat::Qcow2);
    let native = raw_dest(&dir.path().join("native"));
    let viaq = raw_dest(&dir.path().join("viaq"));
    convert(e, &src, &native);
    make_empty(&viaq.path);
    let r = e
        .convert(&src, &viaq, &opts_forced(), &Control::new())
        .expect("qemu-img");
    let args = r.qemu_img_args.unwrap();
    assert!(
        args.iter()
            .any(|a| a.starts_with("json:") && a.contains(r#""backing":null"#)),
        "{args:?}"
    );
    assert_cmp(&native.path, &viaq.path, SIZE);
    // And it differs from the full collapse: the base's data is really left out.
    let full = raw_dest(&dir.path().join("full"));
    convert(e, &layers(&chain, ImageFormat::Qcow2), &full);
    let same = std::process::Command::new("cmp")
        .args([&native.path, &full.path])
        .output()
        .unwrap();
    assert!(!same.status.success(), "truncated chain read the base");
}

fn encrypted_source_is_never_read_natively(e: &Engine) {
    let dir = tempdir();
    let p = dir.path().join("luks");
    let secret = "secret,id=sec0,data=sdm-test-passphrase";
    qemu_img(&[
        "create",
        "-q",
        "--object",
        secret,
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        &s(&p),
        "4M",
    ]);
    let dst = raw_dest(&dir.path().join("dst"));
    make_empty(&dst.path);
    // qemu-img has no key either: the conversion fails, it never copies ciphertext.
    let err = e
        .convert(
            &[qcow2(p.clone())],
            &dst,
            &ConvertOptions::default(),
            &Control::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::External, "{err}");
    assert!(err.to_string().contains("qemu-img"), "{err}");
    let m = e.measure(
        &[qcow2(p)],
        &DestFormat::Qcow2(Qcow2Options::default()),
        None,
    );
    assert!(m.is_err() || m.unwrap().required > 0);
}

fn copy_bitmaps_goes_through_qemu_img(e: &Engine) {
    let dir = tempdir();
    let src = dir.path().join("src");
    create_qcow2(&src, SIZE, "", None);
    qemu_img(&["bitmap", "--add", &s(&src), "b0"]);
    qemu_io(&src, "qcow2", &["write -P 7 0 1M"]);
    let dst = qcow2_dest(&dir.path().join("dst"), None);
    make_empty(&dst.path);
    let opts = ConvertOptions {
        copy_bitmaps: true,
        ..Default::default()
    };
    let r = e
        .convert(&[qcow2(src.clone())], &dst, &opts, &Control::new())
        .expect("convert");
    assert!(matches!(&r.converter, Converter::QemuImg { reason } if reason.contains("bitmaps")));
    verify(&src, ImageFormat::Qcow2, &dst);
    let bitmaps = &info(&dst.path, ImageFormat::Qcow2)["format-specific"]["data"]["bitmaps"];
    assert_eq!(bitmaps[0]["name"], "b0", "{bitmaps}");
    // Bitmaps to or from RAW are refused.
    let err = e
        .convert(
            &[qcow2(src)],
            &raw_dest(&dir.path().join("r")),
            &opts,
            &Control::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::InvalidInput);
}

fn bad_chains_are_refused(e: &Engine) {
    let dir = tempdir();
    let chain = build_chain(dir.path(), ImageFormat::Qcow2, "");
    let dst = raw_dest(&dir.path().join("dst"));
    make_empty(&dst.path);
    let run = |src: &[Layer]| {
        e.convert(src, &dst, &ConvertOptions::default(), &Control::new())
            .unwrap_err()
            .kind()
    };
    // A layer that is not the backing file of the one above it.
    let wrong = [qcow2(chain[0].clone()), qcow2(chain[2].clone())];
    assert_eq!(run(&wrong), IoErrorKind::InvalidInput);
    // RAW in the middle, a declared qcow2 that is not one, nothing at all.
    let raw_mid = [raw(chain[2].clone()), qcow2(chain[1].clone())];
    assert_eq!(run(&raw_mid), IoErrorKind::InvalidInput);
    let fake = dir.path().join("fake");
    make_garbage(&fake, MIB, 1);
    assert_eq!(run(&[qcow2(fake)]), IoErrorKind::BadImage);
    assert_eq!(run(&[]), IoErrorKind::InvalidInput);
    // An empty backing file name.
    let q = qcow2_dest(&dir.path().join("q"), Some(("", ImageFormat::Qcow2)));
    make_empty(&q.path);
    let err = e
        .convert(
            &layers(&chain, ImageFormat::Qcow2),
            &q,
            &ConvertOptions::default(),
            &Control::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::InvalidInput);
}

fn allocation_map_and_zero_ranges(e: &Engine) {
    use sdm_io::{Allocation, MapExtent};
    let dir = tempdir();
    let p = dir.path().join("img");
    create_qcow2(&p, 4 * MIB, "", None);
    qemu_io(
        &p,
        "qcow2",
        &[
            "write -P 1 0 128k",
            "write -z 1M 64k",
            "write -P 0 2M 64k",
            "write -P 2 3M 4k",
        ],
    );
    let img = qcow2(p.clone());
    let map = e.allocation_map(&img).expect("map");
    let kind_at = |off: u64| -> MapExtent {
        *map.iter()
            .find(|m| m.offset <= off && off < m.offset + m.length)
            .expect("covered")
    };
    assert_eq!(kind_at(0).allocation, Allocation::Data);
    assert!(kind_at(0).host_offset.is_some());
    assert_eq!(kind_at(MIB).allocation, Allocation::Zero);
    assert_eq!(kind_at(2 * MIB).allocation, Allocation::Data);
    assert_eq!(kind_at(512 * 1024).allocation, Allocation::Unallocated);
    assert_eq!(map.iter().map(|m| m.length).sum::<u64>(), 4 * MIB);
    // qemu-img map agrees on what is data.
    let q: u64 = data_bytes(&qemu_map(&p, ImageFormat::Qcow2), false);
    let ours: u64 = map
        .iter()
        .filter(|m| m.allocation == Allocation::Data)
        .map(|m| m.length)
        .sum();
    assert_eq!(ours, q);
    let ctl = Control::new();
    let zeros = e.zero_ranges(&img, &ctl).expect("zero ranges");
    assert_eq!(ctl.progress().bytes_done, 4 * MIB);
    let zero_bytes: u64 = zeros.iter().map(|z| z.1).sum();
    // Everything but the 128 KiB and the 64 KiB cluster holding 4 KiB of data reads zeros
    // (within that cluster, the other 60 KiB count too).
    assert_eq!(zero_bytes, 4 * MIB - 128 * 1024 - 4096);
    assert!(zeros
        .iter()
        .any(|&(o, l)| o <= 2 * MIB && 2 * MIB + 65536 <= o + l));
    // RAW: holes and zero blocks.
    let r = dir.path().join("raw");
    make_image(&r, Shape::ZeroHeavy, 3);
    let zeros = e.zero_ranges(&raw(r.clone()), &Control::new()).unwrap();
    let zero_bytes: u64 = zeros.iter().map(|z| z.1).sum();
    assert!(
        zero_bytes >= Shape::ZeroHeavy.len() - 4 * 69_632 && zero_bytes < Shape::ZeroHeavy.len()
    );
}
