//! Format conversion through qemu-img and the checks before it: VDSM's command lines,
//! abort killing the child, images the native path must not read, bad chains; and the
//! single-image allocation map and zero ranges. Each body runs over both engine backends.

mod common;

use std::path::Path;

use common::conv::*;
use common::qemu::*;
use common::*;
use sdm_io::{
    Control, ConvertOptions, Converter, DestFormat, Engine, ImageFormat, IoErrorKind, Layer,
    Qcow2Options,
};

per_backend!(
    abort_qemu_img_kills_the_child,
    qemu_img_lines_are_vdsms,
    truncated_chain_is_pinned_for_qemu_img,
    encrypted_source_is_never_read_natively,
    copy_bitmaps_goes_through_qemu_img,
    bad_chains_are_refused,
    allocation_map_and_zero_ranges,
);

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
