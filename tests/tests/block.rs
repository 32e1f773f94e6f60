//! Block domains with a real agent, real lvm2 and loop devices over sparse files: the on-disk
//! layout as VDSM makes it (checked with the LVM tools and `dd`, not through the agent), copies,
//! moves and deletions in every direction between file and block domains, and bad input.
//! Root only; each test says why it skips elsewhere. Disks, VGs and loop devices are removed by
//! name when a test ends, also when it fails.

use std::path::PathBuf;
use std::process::Command;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_lvm::Devices;
use sdm_proto::*;
use sdm_tests::block::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 128 * MIB;

fn start_agent(disks: &TestDisks) -> AgentProc {
    AgentProc::start(AgentOptions {
        config: Some(block_config(
            disks.paths(),
            "create_default_domains = true",
            "",
        )),
        ..Default::default()
    })
}

/// `Volume.create` with the given allocation.
// The verb's own parameters.
#[allow(clippy::too_many_arguments)]
async fn create(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
    size: u64,
    format: VolumeFormat,
    alloc: Preallocation,
    parent: Option<Uuid>,
) -> Result<Uuid, sdm_client::Error> {
    c.api()
        .create_volume(
            sd.clone(),
            img.clone(),
            vol.clone(),
            Capacity(Size(size)),
            format,
            alloc,
            parent,
            None,
        )
        .await
        .via(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn block_domain_layout_is_vdsms() {
    require_block!();
    let disks = TestDisks::new(2, DISK / 2);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let agent = start_agent(&disks);
    let c = agent.client();
    let caps = c.api().get_capabilities().await.via(&c).unwrap();
    let mode = caps
        .block_activation
        .clone()
        .expect("block activation shown");
    assert!(mode == "loop-mapped" || mode == "device-mapper", "{mode}");

    let sd = uuid();
    // The devices in the opposite of their name order: LVM allocates from its PVs in name
    // order, and PV0 (the first given) must still hold `metadata` at extent 0.
    let mut given = disks.paths().to_vec();
    given.sort_by(|a, b| b.cmp(a));
    create_block_domain(&c, &sd, &given).await;
    let listed = c.api().list_domains().await.via(&c).unwrap();
    let d = listed.iter().find(|d| d.sd_id == sd).expect("listed");
    assert_eq!(
        (d.kind.as_str(), d.path.as_str()),
        ("block", format!("/dev/{sd}").as_str())
    );
    assert!(d.capacity.0 > 12 << 30 && d.free.0 < d.capacity.0);

    // The VG: named by the domain, 128 MiB extents, the final tag only, sealed MDT_ tags.
    let g = vg(&lvm, &devs, &sd);
    assert_eq!(g.extent_size, EXTENT);
    assert!(g.has_tag("RHAT_storage_domain"));
    assert!(!g.has_tag("RHAT_storage_domain_UNREADY"));
    for want in [
        "MDT_VERSION=5",
        "MDT_CLASS=Data",
        "MDT_TYPE=ISCSI",
        "MDT_BLOCK_SIZE=512",
        "MDT_ALIGNMENT=1048576",
        "MDT_DESCRIPTION=block&32&test",
        "MDT_ROLE=Regular",
        "MDT_LOCKPOLICY=",
    ] {
        assert!(g.tags.iter().any(|t| t == want), "{want} in {:?}", g.tags);
    }
    assert!(g.has_tag(&format!("MDT_SDUUID={sd}")));
    assert!(g.has_tag(&format!("MDT_VGUUID={}", g.uuid)));
    let pv0 = g
        .tags
        .iter()
        .find(|t| t.starts_with("MDT_PV0="))
        .expect("PV0");
    let pv1 = g
        .tags
        .iter()
        .find(|t| t.starts_with("MDT_PV1="))
        .expect("PV1");
    let name0 = given[0].file_name().unwrap().to_string_lossy();
    assert!(
        pv0.starts_with(&format!("MDT_PV0=pv:{name0}&44&uuid:"))
            && pv0.contains("&44&pestart:0&44&pecount:")
            && pv0.ends_with("&44&mapoffset:0"),
        "{pv0}"
    );
    assert!(!pv1.ends_with("mapoffset:0"), "{pv1}");
    let seal = g
        .tags
        .iter()
        .find_map(|t| t.strip_prefix("MDT__SHA_CKSUM="))
        .expect("seal");
    assert_eq!(seal.len(), 40);

    // PVs as VDSM makes them: 128 MiB metadata areas (the first extent starts at 129 MiB), VG
    // metadata in use on the first PV only.
    for pv in lvm.pvs(&devs).unwrap() {
        assert_eq!(pv.pe_start, 129 * MIB, "{}", pv.name.display());
        assert_eq!(pv.vg_name.as_deref(), Some(sd.as_str()));
        let first = pv.name == given[0];
        assert_eq!(pv.mda_used_count > 0, first, "{}", pv.name.display());
    }

    // The special LVs and their sizes; metadata at extent 0 of the first PV.
    let all = lvs(&lvm, &devs, &sd);
    for (name, size) in [
        ("metadata", EXTENT),
        ("ids", EXTENT),
        ("leases", 16 * EXTENT),
        ("inbox", EXTENT),
        ("outbox", EXTENT),
        ("xleases", 8 * EXTENT),
        ("master", 8 * EXTENT),
    ] {
        let lv = all.iter().find(|l| l.name == name).expect(name);
        assert_eq!(lv.size, size, "{name}");
        assert!(lv.tags.is_empty(), "{name}: {:?}", lv.tags);
    }
    let (pv, off, _) = lv_extent(&lvm, &devs, &sd, "metadata");
    assert_eq!((pv, off), (given[0].clone(), 129 * MIB));
    // The xleases index at 1 MiB: magic, version, lockspace.
    let index = read_lv(&lvm, &devs, &sd, "xleases", MIB, 512);
    assert_eq!(&index[..4], &[0x12, 0x15, 0x20, 0x16]);
    assert_eq!(&index[5..9], b"0001");
    assert_eq!(&index[10..46], sd.as_str().as_bytes());
    // master is ext3 (VDSM's `mkfs -q -j -E nodiscard`) over the whole LV, and left inactive
    // as VDSM leaves it: nobody mounts it at creation.
    let sb = read_lv(&lvm, &devs, &sd, "master", 1024, 1024);
    assert_eq!(&sb[56..58], &[0x53, 0xef], "ext magic");
    assert_ne!(sb[92] & 0x04, 0, "has a journal (ext3)");
    let master = all.iter().find(|l| l.name == "master").unwrap();
    if mode == "loop-mapped" {
        let (pv, start, _) = lv_extent(&lvm, &devs, &sd, "master");
        let out = Command::new("losetup")
            .args(["--list", "--noheadings", "--output", "BACK-FILE,OFFSET"])
            .output()
            .expect("losetup");
        let mapped = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = format!("{} {start}", pv.display());
        assert!(
            !mapped
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want),
            "master still loop-mapped: {mapped}"
        );
    } else {
        assert_eq!(master.dm_active(), Some(false), "{}", master.attr);
    }
    let view = lv_view(&lvm, &devs, &sd, "master");
    let tool = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd)
            .args(args)
            .arg(&view.dev)
            .output()
            .expect(cmd);
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let probe = tool("blkid", &["--probe", "--output", "export"]);
    assert!(probe.lines().any(|l| l == "TYPE=ext3"), "{probe}");
    let head = tool("dumpe2fs", &["-h"]);
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {head}"))
    };
    assert!(
        field("Filesystem features").contains("has_journal"),
        "{head}"
    );
    assert_eq!(field("Filesystem state"), "clean");
    let blocks: u64 = field("Block count").parse().unwrap();
    let block_size: u64 = field("Block size").parse().unwrap();
    assert_eq!(
        blocks * block_size,
        master.size,
        "the file system fills the LV"
    );
    drop(view);
    // The mailboxes' reserved area and the slots are zero.
    assert!(read_lv(&lvm, &devs, &sd, "inbox", 0, 1_024_000)
        .iter()
        .all(|b| *b == 0));
    assert!(read_lv(&lvm, &devs, &sd, "metadata", 0, 17 * MIB)
        .iter()
        .all(|b| *b == 0));

    // Volumes: RAW preallocated (its LV rounded up to extents, CAP the LV's size), COW sparse
    // (one 2.5 GiB chunk at most) and a COW child.
    let img = uuid();
    let (raw, base, top) = (uuid(), uuid(), uuid());
    create(
        &c,
        &sd,
        &img,
        &raw,
        300 * MIB,
        VolumeFormat::Raw,
        Preallocation::Preallocated,
        None,
    )
    .await
    .unwrap();
    create(
        &c,
        &sd,
        &img,
        &base,
        3 << 30,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        None,
    )
    .await
    .unwrap();
    create(
        &c,
        &sd,
        &img,
        &top,
        3 << 30,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        Some(base.clone()),
    )
    .await
    .unwrap();
    let all = lvs(&lvm, &devs, &sd);
    let lv = |v: &Uuid| all.iter().find(|l| l.name == v.as_str()).unwrap().clone();
    let blank = "00000000-0000-0000-0000-000000000000";
    for (v, slot, parent, size) in [
        (&raw, 1, blank, 3 * EXTENT),
        (&base, 2, blank, 20 * EXTENT),
        (&top, 3, base.as_str(), 20 * EXTENT),
    ] {
        let l = lv(v);
        assert_eq!(slot_of(&l), slot, "{v}");
        assert_eq!(tag(&l, "IU_"), Some(img.as_str()));
        assert_eq!(tag(&l, "PU_"), Some(parent));
        assert!(!l.has_tag("OVIRT_VOL_INITIALIZING"));
        assert_eq!(l.size, size, "{v}");
        // The slot read by offset with direct IO holds the same text the agent reports.
        let text = slot_text(&lvm, &devs, &sd, slot);
        let info = volume_info(&c, &sd, &img, v).await;
        assert!(
            text.starts_with(&format!("CAP={}\nCTIME=", info.capacity.0)),
            "{text}"
        );
        assert!(text.contains(&format!("\nIMAGE={img}\n")), "{text}");
        assert!(text.contains(&format!("\nDOMAIN={sd}\n")), "{text}");
        assert!(text.contains(&format!("\nPUUID={parent}\n")), "{text}");
        assert!(text.ends_with("\nEOF\n"), "{text}");
        assert!(text.len() <= 512);
        // The volume lease in the leases LV at (100 + slot) MiB.
        assert_eq!(info.lease.offset, (100 + slot) * MIB, "{v}");
    }
    let ri = volume_info(&c, &sd, &img, &raw).await;
    assert_eq!((ri.capacity.0, ri.apparentsize.0), (3 * EXTENT, 3 * EXTENT));
    assert_eq!(ri.allocation, Preallocation::Preallocated);
    let bi = volume_info(&c, &sd, &img, &base).await;
    assert_eq!((bi.capacity.0, bi.voltype), (3 << 30, VolumeRole::Internal));
    assert!(text_has(
        &slot_text(&lvm, &devs, &sd, 2),
        "VOLTYPE=INTERNAL"
    ));
    let mut vols = c
        .api()
        .get_volumes(sd.clone(), img.clone())
        .await
        .via(&c)
        .unwrap();
    vols.sort();
    let mut want = vec![raw.clone(), base.clone(), top.clone()];
    want.sort();
    assert_eq!(vols, want);
    assert_eq!(
        c.api().get_images(sd.clone()).await.via(&c).unwrap(),
        vec![img.clone()]
    );
    // RAW SPARSE is refused, as VDSM refuses it.
    let e = create(
        &c,
        &sd,
        &img,
        &uuid(),
        MIB,
        VolumeFormat::Raw,
        Preallocation::Sparse,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException), "{e}");
    assert!(c
        .api()
        .check_domain(sd.clone())
        .await
        .via(&c)
        .unwrap()
        .is_empty());

    // No loop device besides the three special LVs the attached domain keeps active.
    if mode == "loop-mapped" {
        assert_eq!(loops_over(disks.paths()).len(), 3);
    }

    // Detach, attach by id, restart: the same domain, the same volumes.
    c.api().detach_domain(sd.clone()).await.via(&c).unwrap();
    if mode == "loop-mapped" {
        assert!(loops_over(disks.paths()).is_empty());
    }
    try_attach_block_domain(&c, &sd).await.unwrap();
    assert_eq!(volume_info(&c, &sd, &img, &top).await.parent, base);
    let mut agent = agent;
    agent.restart();
    let c = agent.client();
    assert_eq!(
        volume_info(&c, &sd, &img, &raw).await.capacity.0,
        3 * EXTENT
    );
    if mode == "loop-mapped" {
        assert_eq!(
            loops_over(disks.paths()).len(),
            3,
            "after a kill -9 and restart"
        );
    }
}

fn text_has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// A file volume's data file.
async fn file_data(c: &AgentClient, sd: &Uuid, img: &Uuid, vol: &Uuid) -> PathBuf {
    volume_path(&domain_dir(c, sd).await, img, vol)
}

/// Runs a job to its end and asserts it is done.
async fn done(c: &AgentClient, job: &Uuid) {
    let info = wait_job(c, job).await;
    assert_eq!(info.status, JobStatus::Done, "{info:?}");
}

fn cmp(a: &std::path::Path, b: &std::path::Path, len: u64) -> bool {
    Command::new("cmp")
        .arg("-n")
        .arg(len.to_string())
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// The bytes of a block volume, copied out of its PV into a file (for cmp and qemu-img).
fn block_volume_file(disks: &TestDisks, sd: &Uuid, vol: &Uuid, dir: &std::path::Path) -> PathBuf {
    let (lvm, devs) = (test_lvm(disks), disks.devices());
    let (pv, off, len) = lv_extent(&lvm, &devs, sd, vol.as_str());
    let out = dir.join(vol.as_str());
    std::fs::write(&out, read_direct(&pv, off, len)).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_move_and_delete_between_file_and_block() {
    require_block!();
    let disks = TestDisks::new(2, DISK);
    let (d0, d1) = (disks.paths()[0].clone(), disks.paths()[1].clone());
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let agent = start_agent(&disks);
    let c = agent.client();
    let tmp = tempfile::tempdir().unwrap();
    let (fsd1, fsd2, _, _) = file_domains(&c).await;
    let (bsd1, bsd2) = (uuid(), uuid());
    create_block_domain(&c, &bsd1, std::slice::from_ref(&d0)).await;
    create_block_domain(&c, &bsd2, std::slice::from_ref(&d1)).await;

    // A file RAW sparse volume with data and holes.
    let size = 64 * MIB;
    let src = new_volume(&c, &fsd1, size, VolumeFormat::Raw).await;
    write_pattern(&src.path, 0, MIB as usize, 1);
    write_pattern(&src.path, 40 * MIB, 3 * MIB as usize, 2);

    // file -> block (SDM.copy_data): RAW lands preallocated; the copy is byte-exact.
    let (bimg, bvol) = (uuid(), uuid());
    create(
        &c,
        &bsd1,
        &bimg,
        &bvol,
        size,
        VolumeFormat::Raw,
        Preallocation::Preallocated,
        None,
    )
    .await
    .unwrap();
    // Stale bytes in the new LV (its extents are not zeroed) must not survive in the holes.
    let (pv, off, _) = lv_extent(&lvm, &devs, &bsd1, bvol.as_str());
    std::fs::write(tmp.path().join("junk"), vec![0xa5u8; 2 * MIB as usize]).unwrap();
    let st = Command::new("dd")
        .arg(format!("if={}", tmp.path().join("junk").display()))
        .arg(format!("of={}", pv.display()))
        .args([
            "oflag=direct,seek_bytes",
            "bs=1M",
            "conv=notrunc",
            "status=none",
        ])
        .arg(format!("seek={}", off + 10 * MIB))
        .status()
        .unwrap();
    assert!(st.success());
    let job = start_copy(
        &c,
        src.ep(None),
        endpoint(&bsd1, &bimg, &bvol, Some(0)),
        None,
    )
    .await;
    done(&c, &job).await;
    let bi = volume_info(&c, &bsd1, &bimg, &bvol).await;
    assert_eq!((bi.legality, bi.generation), (Legality::Legal, 1));
    let out = block_volume_file(&disks, &bsd1, &bvol, tmp.path());
    assert!(cmp(&src.path, &out, size), "file -> block copy differs");

    // block -> file (SDM.copy_data): the destination gets the LV's capacity.
    let fdst = new_volume(&c, &fsd2, bi.capacity.0, VolumeFormat::Raw).await;
    let job = start_copy(
        &c,
        endpoint(&bsd1, &bimg, &bvol, None),
        fdst.ep(Some(0)),
        None,
    )
    .await;
    done(&c, &job).await;
    assert!(
        cmp(&out, &fdst.path, bi.capacity.0),
        "block -> file copy differs"
    );

    // block -> block (SDM.copy_data), across two VGs.
    let (cimg, cvol) = (uuid(), uuid());
    create(
        &c,
        &bsd2,
        &cimg,
        &cvol,
        bi.capacity.0,
        VolumeFormat::Raw,
        Preallocation::Preallocated,
        None,
    )
    .await
    .unwrap();
    let job = start_copy(
        &c,
        endpoint(&bsd1, &bimg, &bvol, None),
        endpoint(&bsd2, &cimg, &cvol, Some(0)),
        None,
    )
    .await;
    done(&c, &job).await;
    let out2 = block_volume_file(&disks, &bsd2, &cvol, tmp.path());
    assert!(
        cmp(&out, &out2, bi.capacity.0),
        "block -> block copy differs"
    );

    // A COW chain on a file domain, with data in both layers.
    let cimg2 = uuid();
    let (cbase, ctop) = (uuid(), uuid());
    create_volume(
        &c,
        &fsd1,
        &cimg2,
        &cbase,
        256 * MIB,
        VolumeFormat::Cow,
        None,
        None,
    )
    .await;
    create_volume(
        &c,
        &fsd1,
        &cimg2,
        &ctop,
        256 * MIB,
        VolumeFormat::Cow,
        Some(cbase.clone()),
        None,
    )
    .await;
    let fdir = domain_dir(&c, &fsd1).await;
    for (v, pat, at) in [(&cbase, "0x11", "0"), (&ctop, "0x22", "8M")] {
        let st = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -P {pat} {at} 4M"))
            .arg(volume_path(&fdir, &cimg2, v))
            .current_dir(fdir.join("images").join(cimg2.as_str()))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }

    // Image.move file -> block: COW onto the LVs, qcow2 as it was (compared layer by layer).
    let job = c
        .api()
        .move_image(
            cimg2.clone(),
            fsd1.clone(),
            bsd1.clone(),
            ImageOperation::Copy,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    done(&c, &job).await;
    for v in [&cbase, &ctop] {
        let i = volume_info(&c, &bsd1, &cimg2, v).await;
        assert_eq!((i.legality, i.format), (Legality::Legal, VolumeFormat::Cow));
        let on_lv = block_volume_file(&disks, &bsd1, v, tmp.path());
        let from = file_data(&c, &fsd1, &cimg2, v).await;
        let len = std::fs::metadata(&from).unwrap().len();
        assert!(cmp(&from, &on_lv, len), "COW layer {v} differs on the LV");
        assert!(qemu_img_check(&on_lv), "qcow2 {v} on the LV is consistent");
    }
    assert_eq!(volume_info(&c, &bsd1, &cimg2, &ctop).await.parent, cbase);
    // Image.move block -> file (the other file domain): the whole chain reads the same.
    let job = c
        .api()
        .move_image(
            cimg2.clone(),
            bsd1.clone(),
            fsd2.clone(),
            ImageOperation::Copy,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    done(&c, &job).await;
    let back = file_data(&c, &fsd2, &cimg2, &ctop).await;
    let orig = file_data(&c, &fsd1, &cimg2, &ctop).await;
    assert!(
        qemu_img_compare(&orig, &back),
        "chain differs after file -> block -> file"
    );
    // Image.move block -> block.
    let job = c
        .api()
        .move_image(
            cimg2.clone(),
            bsd1.clone(),
            bsd2.clone(),
            ImageOperation::Copy,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    done(&c, &job).await;
    assert_eq!(
        volume_info(&c, &bsd2, &cimg2, &ctop).await.legality,
        Legality::Legal
    );
    // Image.move file RAW sparse -> block: preallocated there.
    let job = c
        .api()
        .move_image(
            src.img.clone(),
            fsd1.clone(),
            bsd2.clone(),
            ImageOperation::Copy,
            None,
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    done(&c, &job).await;
    let mi = volume_info(&c, &bsd2, &src.img, &src.vol).await;
    assert_eq!(mi.allocation, Preallocation::Preallocated);
    let moved = block_volume_file(&disks, &bsd2, &src.vol, tmp.path());
    assert!(cmp(&src.path, &moved, size));

    // Image.delete with postZero: the LVs are zeroed, then removed.
    let (bpv, boff, blen) = lv_extent(&lvm, &devs, &bsd1, bvol.as_str());
    assert!(read_direct(&bpv, boff, MIB).iter().any(|b| *b != 0));
    let job = c
        .api()
        .delete_image(
            bimg.clone(),
            bsd1.clone(),
            Some(Flag(true)),
            None,
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    done(&c, &job).await;
    assert!(
        !lvs(&lvm, &devs, &bsd1)
            .iter()
            .any(|l| l.name == bvol.as_str()),
        "LV removed"
    );
    assert!(
        read_direct(&bpv, boff, blen).iter().all(|b| *b == 0),
        "the removed LV's extents were zeroed first"
    );
    // Image.delete with discard, no wipe: removed.
    let job = c
        .api()
        .delete_image(
            cimg2.clone(),
            bsd1.clone(),
            None,
            None,
            Some(Flag(true)),
            None,
        )
        .await
        .via(&c)
        .unwrap();
    done(&c, &job).await;
    // Image.getVolumes answers [] for an image the domain does not have, as VDSM does.
    assert!(c
        .api()
        .get_volumes(bsd1.clone(), cimg2.clone())
        .await
        .via(&c)
        .unwrap()
        .is_empty());
    assert!(!c
        .api()
        .get_images(bsd1.clone())
        .await
        .via(&c)
        .unwrap()
        .contains(&cimg2));
    for sd in [&bsd1, &bsd2] {
        assert!(half_made_lvs(&lvm, &devs, sd).is_empty());
        assert!(c
            .api()
            .check_domain(sd.clone())
            .await
            .via(&c)
            .unwrap()
            .is_empty());
    }
    // Only the special LVs of the two domains stay mapped.
    if caps_mode(&c).await == "loop-mapped" {
        assert_eq!(loops_over(disks.paths()).len(), 6);
    }
}

async fn caps_mode(c: &AgentClient) -> String {
    c.api()
        .get_capabilities()
        .await
        .via(c)
        .unwrap()
        .block_activation
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_code_and_changes_nothing() {
    require_block!();
    let disks = TestDisks::new(3, DISK / 2);
    let p = disks.paths().to_vec();
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    // Only the first two disks are allowed; the third is another VG's.
    let agent = AgentProc::start(AgentOptions {
        config: Some(block_config(&p[..2], "create_default_domains = false", "")),
        ..Default::default()
    });
    let c = agent.client();
    let head = |d: &PathBuf| read_direct(d, 0, 2 * MIB);
    let before: Vec<Vec<u8>> = p.iter().map(head).collect();

    // Not a block device.
    let file = disks.dir().join("not-a-device");
    std::fs::write(&file, vec![1u8; 4096]).unwrap();
    let e = try_create_block_domain(&c, &uuid(), std::slice::from_ref(&file))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), vec![1u8; 4096]);
    // A device `[block] devices` does not allow.
    let e = try_create_block_domain(&c, &uuid(), &[p[2].clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidParameterException), "{e}");
    // Too small together (one 7 GiB disk).
    let e = try_create_block_domain(&c, &uuid(), &[p[0].clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::VolumeGroupSizeError), "{e}");
    // A device already in another VG: refused before anything is written on either.
    let other = sdm_lvm::test_support::unique_vg_name();
    make_vg(&lvm, &other, &[p[1].clone()]);
    let before_other = head(&p[1]);
    let e = try_create_block_domain(&c, &uuid(), &p[..2])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PhysDevInitializationError), "{e}");
    assert!(e.to_string().contains(&other), "{e}");
    assert_eq!(head(&p[0]), before[0], "the free disk is untouched");
    assert_eq!(
        head(&p[1]),
        before_other,
        "the foreign VG's disk is untouched"
    );
    assert!(lvm.pvs(&devs).unwrap().iter().all(|pv| pv.name != p[0]));
    assert!(vg(&lvm, &devs, &Uuid::parse(&other).unwrap())
        .tags
        .is_empty());
    lvm.vgremove(&devs, &other).unwrap();
    lvm.pvremove(&Devices::new([&p[1]]).unwrap()).unwrap();

    // A VG named like a domain but without the domain tag: not a domain, left as it is.
    let bare = uuid();
    make_vg(&lvm, bare.as_str(), &[p[0].clone()]);
    let e = try_attach_block_domain(&c, &bare).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StorageDomainDoesNotExist), "{e}");
    assert!(e.to_string().contains("no RHAT_storage_domain tag"), "{e}");
    assert!(vg(&lvm, &devs, &bare).tags.is_empty());
    lvm.vgremove(&devs, bare.as_str()).unwrap();
    lvm.pvremove(&Devices::new([&p[0]]).unwrap()).unwrap();

    // A real domain, then a broken seal: attach refuses it and changes nothing.
    let sd = uuid();
    create_block_domain(&c, &sd, &p[..2]).await;
    let img = uuid();
    let v1 = uuid();
    create(
        &c,
        &sd,
        &img,
        &v1,
        MIB,
        VolumeFormat::Raw,
        Preallocation::Preallocated,
        None,
    )
    .await
    .unwrap();

    // A slot already taken: an LV made by hand claiming v1's slot. v1's metadata is never
    // written while two LVs claim it; new volumes never get that slot.
    let intruder = uuid();
    lvm.lvcreate(
        &devs,
        sd.as_str(),
        &sdm_lvm::LvCreate {
            name: intruder.to_string(),
            size: sdm_lvm::LvSize::Mib(1),
            tags: vec![
                format!("IU_{img}"),
                "MD_1".into(),
                "PU_00000000-0000-0000-0000-000000000000".into(),
            ],
        },
    )
    .unwrap();
    let slot1 = slot_text(&lvm, &devs, &sd, 1);
    let info = update_volume(
        &c,
        volume_ref(&sd, &img, &v1, Some(0)),
        VolumeAttributes {
            description: Some(Description::parse("changed").unwrap()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(info.status, JobStatus::Failed, "{info:?}");
    assert_eq!(
        info.error.as_ref().map(|e| e.code),
        Some(ErrorCode::MetaDataGeneralError.code()),
        "{info:?}"
    );
    assert_eq!(slot_text(&lvm, &devs, &sd, 1), slot1, "slot 1 unchanged");
    let v2 = uuid();
    create(
        &c,
        &sd,
        &img,
        &v2,
        MIB,
        VolumeFormat::Raw,
        Preallocation::Preallocated,
        None,
    )
    .await
    .unwrap();
    let l2 = lvs(&lvm, &devs, &sd)
        .into_iter()
        .find(|l| l.name == v2.as_str())
        .unwrap();
    assert_eq!(slot_of(&l2), 2);
    lvm.lvremove(&devs, sd.as_str(), &[intruder.as_str()])
        .unwrap();

    c.api().detach_domain(sd.clone()).await.via(&c).unwrap();
    let tags = vg(&lvm, &devs, &sd).tags;
    let desc = tags
        .iter()
        .find(|t| t.starts_with("MDT_DESCRIPTION="))
        .unwrap()
        .clone();
    lvm.change_vg_tags(
        &devs,
        sd.as_str(),
        std::slice::from_ref(&desc),
        &["MDT_DESCRIPTION=tampered".to_string()],
    )
    .unwrap();
    let tampered = vg(&lvm, &devs, &sd).tags;
    let e = try_attach_block_domain(&c, &sd).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MetaDataSealIsBroken), "{e}");
    assert_eq!(vg(&lvm, &devs, &sd).tags, tampered);
    assert!(!c
        .api()
        .list_domains()
        .await
        .via(&c)
        .unwrap()
        .iter()
        .any(|d| d.sd_id == sd));
    assert!(loops_over(disks.paths()).is_empty());
}
