//! `SDM.copy_data` converting between formats through a real agent, with qemu-img as the
//! oracle (compare through both chains, check, map): every direction and allocation pair,
//! chains of 1-3 volumes whose upper layers zero and discard lower ranges (collapsed, or
//! copied volume by volume top-only), capacity growth with a size that is not cluster-aligned,
//! the qcow2 source variants qemu-img makes, bitmaps, and the refusals that change nothing.

use std::path::Path;
use std::time::Duration;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::chains::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
/// Not a multiple of the 64 KiB cluster size.
const SIZE: u64 = 8 * MIB + 4 * KIB;

/// Data, written zeros, a zero range, more data and a piece of the last partial cluster.
async fn source(c: &AgentClient, sd: &Uuid, f: VolumeFormat) -> Vol {
    let v = make_volume(c, sd, &uuid(), SIZE, f, Preallocation::Sparse, None).await;
    let zero = if f == VolumeFormat::Cow {
        "write -z 2M 1M"
    } else {
        "write -P 0 2M 1M"
    };
    qemu_io(
        &v.path,
        fmt(f),
        &[
            "write -P 0x11 0 1M",
            zero,
            "write -P 0 3M 128k",
            "write -P 0x22 5M 64k",
            "write -P 0x33 8M 4k",
        ],
    );
    v
}

async fn copy_ok(c: &AgentClient, src: &Vol, dst: &Vol) {
    let job = copy_volume(c, src, dst, Some(0), None).await;
    let done = wait_job(c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert_eq!(done.progress, Some(100.0));
    let i = dst.info(c).await;
    assert_eq!((i.legality, i.generation), (Legality::Legal, 1), "{i:?}");
    assert!(i.lease.owners.is_empty());
}

#[tokio::test]
async fn every_direction_and_allocation() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    for sf in [VolumeFormat::Raw, VolumeFormat::Cow] {
        let src = source(&c, &sd1, sf).await;
        let before = sha256sum(&src.path);
        for df in [VolumeFormat::Raw, VolumeFormat::Cow] {
            for pre in [Preallocation::Sparse, Preallocation::Preallocated] {
                let dst = make_volume(&c, &sd2, &uuid(), SIZE, df, pre, None).await;
                copy_ok(&c, &src, &dst).await;
                assert_same(&src.path, sf, &dst.path, df);
                if df == VolumeFormat::Cow {
                    assert_check_clean(&dst.path);
                    assert_eq!(
                        info(&dst.path, df)["format-specific"]["data"]["compat"],
                        "1.1"
                    );
                }
                if (sf, df, pre) == (VolumeFormat::Cow, VolumeFormat::Cow, Preallocation::Sparse) {
                    // The same shape: the qcow2 file is copied as it is (what an engine
                    // verifying a move by checksums needs), zero-filled data clusters included.
                    assert_eq!(sha256sum(&dst.path), before, "COW->COW copied as is");
                } else if pre == Preallocation::Sparse {
                    // 1 MiB + 64 KiB + 4 KiB of data; zeros (written or not) are no data.
                    let data = own_data_bytes(&dst.path, df);
                    assert!(data <= MIB + 192 * KIB, "{sf}->{df}: {data} bytes of data");
                }
            }
        }
        assert_eq!(sha256sum(&src.path), before, "source untouched");
        assert_eq!(src.info(&c).await.generation, 0);
    }
}

/// base (RAW or COW) <- mid <- top in one image; each upper layer writes over, zeroes and
/// discards ranges of the ones below. Returns [base, mid, top].
async fn chain(c: &AgentClient, sd: &Uuid, base_fmt: VolumeFormat) -> [Vol; 3] {
    let img = uuid();
    let sp = Preallocation::Sparse;
    let base = make_volume(c, sd, &img, SIZE, base_fmt, sp, None).await;
    qemu_io(
        &base.path,
        fmt(base_fmt),
        &[
            "write -P 0x11 0 2M",
            "write -P 0x12 3M 1M",
            "write -P 0x13 6M 1M",
        ],
    );
    let mid = make_volume(c, sd, &img, SIZE, VolumeFormat::Cow, sp, Some(&base)).await;
    qemu_io(
        &mid.path,
        "qcow2",
        &[
            "write -P 0x21 512k 1M",
            "write -z 3M 256k",
            "discard 6M 128k",
        ],
    );
    let top = make_volume(c, sd, &img, SIZE, VolumeFormat::Cow, sp, Some(&mid)).await;
    qemu_io(
        &top.path,
        "qcow2",
        &[
            "write -P 0x31 1M 128k",
            "write -z 0 256k",
            "discard 768k 64k",
            "write -P 0x32 8M 4k",
        ],
    );
    [base, mid, top]
}

#[tokio::test]
async fn chains_collapse_or_copy_top_only() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    for base_fmt in [VolumeFormat::Raw, VolumeFormat::Cow] {
        let vols = chain(&c, &sd1, base_fmt).await;
        let fmt_of = |i: usize| {
            if i == 0 {
                base_fmt
            } else {
                VolumeFormat::Cow
            }
        };
        // Collapse: a destination without a parent gets the whole chain below the source.
        for (depth, src) in vols.iter().enumerate() {
            for df in [VolumeFormat::Raw, VolumeFormat::Cow] {
                let dst =
                    make_volume(&c, &sd2, &uuid(), SIZE, df, Preallocation::Sparse, None).await;
                copy_ok(&c, src, &dst).await;
                assert_same(&src.path, fmt_of(depth), &dst.path, df);
                if df == VolumeFormat::Cow {
                    assert_check_clean(&dst.path);
                    assert!(info(&dst.path, df).get("backing-filename").is_none());
                }
            }
        }
        // Top-only: the chain copied volume by volume, parents first, each destination on its
        // own parent: only what each source volume holds itself is written.
        let img = uuid();
        let mut parent: Option<Vol> = None;
        let mut copies = Vec::new();
        for (i, src) in vols.iter().enumerate() {
            let dst = make_volume(
                &c,
                &sd2,
                &img,
                SIZE,
                fmt_of(i),
                Preallocation::Sparse,
                parent.as_ref(),
            )
            .await;
            copy_ok(&c, src, &dst).await;
            if i > 0 {
                let p = parent.as_ref().unwrap();
                let inf = info(&dst.path, VolumeFormat::Cow);
                assert_eq!(inf["backing-filename"], p.vol.as_str(), "bare parent UUID");
                assert_check_clean(&dst.path);
                let (own_src, own_dst) = (
                    own_data_bytes(&src.path, VolumeFormat::Cow),
                    own_data_bytes(&dst.path, VolumeFormat::Cow),
                );
                assert!(own_dst <= own_src, "top-only wrote {own_dst} > {own_src}");
            }
            assert_same(&src.path, fmt_of(i), &dst.path, fmt_of(i));
            parent = Some(dst.clone());
            copies.push(dst);
        }
    }
}

#[tokio::test]
async fn capacity_grows_and_unaligned_sizes() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    for sf in [VolumeFormat::Raw, VolumeFormat::Cow] {
        let src = source(&c, &sd1, sf).await;
        for df in [VolumeFormat::Raw, VolumeFormat::Cow] {
            let big = 12 * MIB + 8 * KIB;
            let dst = make_volume(&c, &sd2, &uuid(), big, df, Preallocation::Sparse, None).await;
            copy_ok(&c, &src, &dst).await;
            assert_eq!(info(&dst.path, df)["virtual-size"], big, "{sf}->{df}");
            assert_eq!(dst.info(&c).await.capacity, Size(big));
            // qemu-img compare requires the larger image's extra area to read zeros.
            assert_same(&src.path, sf, &dst.path, df);
        }
    }
}

#[tokio::test]
async fn smaller_destination_is_refused_unchanged() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = source(&c, &sd1, VolumeFormat::Cow).await;
    for df in [VolumeFormat::Raw, VolumeFormat::Cow] {
        let dst = make_volume(&c, &sd2, &uuid(), 4 * MIB, df, Preallocation::Sparse, None).await;
        let before = sha256sum(&dst.path);
        let job = copy_volume(&c, &src, &dst, Some(0), None).await;
        let f = wait_job(&c, &job).await;
        assert_eq!(f.status, JobStatus::Failed);
        assert_eq!(f.error.unwrap().code, 1000);
        let i = dst.info(&c).await;
        assert_eq!((i.legality, i.generation), (Legality::Legal, 0));
        assert_eq!(sha256sum(&dst.path), before, "nothing written");
    }
}

/// Replaces a COW volume's image by one qemu-img makes from `raw` with `opts`.
fn remake(raw: &Path, v: &Vol, opts: &str, compress: bool) {
    let (r, p) = (raw.display().to_string(), v.path.display().to_string());
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([r.as_str(), p.as_str()]);
    qemu_img(&args);
}

#[tokio::test]
async fn qcow2_source_variants_convert_exactly() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let raw = agent.state_dir.join("pattern.raw");
    std::fs::File::create(&raw).unwrap().set_len(SIZE).unwrap();
    write_pattern(&raw, 0, MIB as usize, 1);
    write_pattern(&raw, 5 * MIB, 300 * KIB as usize, 2);
    write_pattern(&raw, SIZE - 4 * KIB, 4 * KIB as usize, 3);
    let variants: &[(&str, &str, bool)] = &[
        ("compat 0.10", "compat=0.10", false),
        ("compat 1.1", "compat=1.1", false),
        ("512 B clusters", "cluster_size=512", false),
        ("2 MiB clusters", "cluster_size=2M", false),
        ("refcount_bits 1", "refcount_bits=1", false),
        ("refcount_bits 64", "refcount_bits=64", false),
        ("zlib compressed", "", true),
        ("preallocation metadata", "preallocation=metadata", false),
        ("preallocation falloc", "preallocation=falloc", false),
        ("preallocation full", "preallocation=full", false),
        ("internal snapshot", "", false),
        ("persistent bitmap", "", false),
    ];
    for &(name, opts, compress) in variants {
        let src = make_volume(
            &c,
            &sd1,
            &uuid(),
            SIZE,
            VolumeFormat::Cow,
            Preallocation::Sparse,
            None,
        )
        .await;
        remake(&raw, &src, opts, compress);
        match name {
            "internal snapshot" => {
                let p = src.path.display().to_string();
                qemu_img(&["snapshot", "-c", "s1", &p]);
                // The active layer differs from the snapshot.
                qemu_io(&src.path, "qcow2", &["write -P 0x44 2M 64k"]);
            }
            "persistent bitmap" => {
                let p = src.path.display().to_string();
                qemu_img(&["bitmap", "--add", &p, "b0"]);
            }
            _ => {}
        }
        for df in [VolumeFormat::Raw, VolumeFormat::Cow] {
            let dst = make_volume(&c, &sd2, &uuid(), SIZE, df, Preallocation::Sparse, None).await;
            copy_ok(&c, &src, &dst).await;
            assert_same(&src.path, VolumeFormat::Cow, &dst.path, df);
            if df == VolumeFormat::Cow {
                assert_check_clean(&dst.path);
            }
            eprintln!("{name} -> {df}: ok");
        }
    }
}

#[tokio::test]
async fn copy_bitmaps_cow_to_cow_only() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = source(&c, &sd1, VolumeFormat::Cow).await;
    let p = src.path.display().to_string();
    qemu_img(&["bitmap", "--add", &p, "b0"]);
    let dst = make_volume(
        &c,
        &sd2,
        &uuid(),
        SIZE,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await;
    let job = uuid();
    c.api()
        .copy_data(
            job.clone(),
            src.ep(None),
            dst.ep(Some(0)),
            Some(Flag(true)),
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    let done = wait_job(&c, &job).await;
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    assert_eq!(bitmap_names(&dst.path), vec!["b0".to_string()]);
    assert_same(&src.path, VolumeFormat::Cow, &dst.path, VolumeFormat::Cow);

    // Any RAW side: refused before a job exists, nothing changed.
    for (s, d) in [
        (VolumeFormat::Cow, VolumeFormat::Raw),
        (VolumeFormat::Raw, VolumeFormat::Cow),
    ] {
        let from = if s == VolumeFormat::Cow {
            src.clone()
        } else {
            source(&c, &sd1, VolumeFormat::Raw).await
        };
        let to = make_volume(&c, &sd2, &uuid(), SIZE, d, Preallocation::Sparse, None).await;
        let before = sha256sum(&to.path);
        let job = uuid();
        let err = c
            .api()
            .copy_data(
                job.clone(),
                from.ep(None),
                to.ep(Some(0)),
                Some(Flag(true)),
                None,
                None,
                None,
            )
            .await
            .via(&c)
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnsupportedOperation), "{err}");
        let jobs = c
            .api()
            .get_jobs(None, Some(vec![job]))
            .await
            .via(&c)
            .unwrap();
        assert!(jobs.is_empty(), "no job registered");
        let i = to.info(&c).await;
        assert_eq!((i.legality, i.generation), (Legality::Legal, 0));
        assert_eq!(sha256sum(&to.path), before);
    }
}

#[tokio::test]
async fn conversion_is_throttled_and_aborts_illegal() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let src = make_volume(
        &c,
        &sd1,
        &uuid(),
        64 * MIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await;
    qemu_io(&src.path, "qcow2", &["write -P 0x5a 0 48M"]);
    let dst = make_volume(
        &c,
        &sd2,
        &uuid(),
        64 * MIB,
        VolumeFormat::Raw,
        Preallocation::Sparse,
        None,
    )
    .await;
    let job = copy_volume(&c, &src, &dst, Some(0), Some(4 * MIB)).await;
    let running = wait_running(&c, &job).await;
    assert_eq!(running.status, JobStatus::Running, "{running:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mid = c
        .api()
        .get_jobs(None, Some(vec![job.clone()]))
        .await
        .via(&c)
        .unwrap()[&job]
        .clone();
    assert!(mid.bytes_done < 48 * MIB, "throttled: {mid:?}");
    assert!(mid.progress.unwrap_or(0.0) < 100.0);
    assert!(
        !dst.info(&c).await.lease.owners.is_empty(),
        "lease held while writing"
    );
    c.api().abort_job(job.clone()).await.via(&c).unwrap();
    let end = wait_job(&c, &job).await;
    assert_eq!(end.status, JobStatus::Aborted, "{end:?}");
    let i = dst.info(&c).await;
    assert_eq!((i.legality, i.generation), (Legality::Illegal, 0));
    assert!(i.lease.owners.is_empty());
}
