//! A file domain as oVirt writes it (fixtures built from the documented V5 layout: the sealed
//! `dom_md/metadata` sample with its checksum, V5 and V4 `.meta` files, no `.lease` files as on
//! LOCALFS) attaches as it is, and its volumes can be read, copied and updated.

use std::path::Path;

use sdm_client::{SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::*;

const SD: &str = "275766cb-c7d8-43d6-a663-4e52160de620";
const DOMAIN_MD: &str = "ALIGNMENT=1048576\nBLOCK_SIZE=512\nCLASS=Data\nDESCRIPTION=storage domain\nIOOPTIMEOUTSEC=10\nLEASERETRIES=3\nLEASETIMESEC=60\nLOCKPOLICY=\nLOCKRENEWALINTERVALSEC=5\nPOOL_UUID=\nREMOTE_PATH=server:/path\nROLE=Regular\nSDUUID=275766cb-c7d8-43d6-a663-4e52160de620\nTYPE=LOCALFS\nVERSION=5\n_SHA_CKSUM=9336f77705ff9e3d5faf65c4d0dc818a29de458d\n";
const IMG5: &str = "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60";
const VOL5: &str = "0b8a3d2c-7e6f-4a1b-9c8d-7e6f5a4b3c2d";
const IMG4: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const VOL4: &str = "d4c3b2a1-f6e5-4b7a-9d8c-5c4b3a2f1e0d";

fn make_ovirt_domain(root: &Path) -> std::path::PathBuf {
    let dom = root.join(SD);
    std::fs::create_dir_all(dom.join("dom_md")).unwrap();
    // Older vdsm left this next to the domain; discovery must ignore it.
    std::fs::write(root.join("__DIRECT_IO_TEST__"), b"").unwrap();
    std::fs::write(dom.join("dom_md/metadata"), DOMAIN_MD).unwrap();
    for (f, size) in [
        ("ids", 0),
        ("leases", 0),
        ("inbox", 16 << 20),
        ("outbox", 16 << 20),
    ] {
        std::fs::File::create(dom.join("dom_md").join(f))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    write_volume(
        &dom,
        IMG5,
        VOL5,
        8 << 20,
        (1 << 20, 1 << 20, 42),
        &format!("CAP=8388608\nCTIME=1700000000\nDESCRIPTION={{\"DiskAlias\":\"d1\",\"DiskDescription\":\"\"}}\nDISKTYPE=DATA\nDOMAIN={SD}\nFORMAT=RAW\nGEN=4\nIMAGE={IMG5}\nLEGALITY=LEGAL\nPUUID=00000000-0000-0000-0000-000000000000\nSEQ=7\nTYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n"),
    );
    write_volume(
        &dom,
        IMG4,
        VOL4,
        4 << 20,
        (0, 4096, 43),
        &format!("CTIME=1500000000\nDESCRIPTION=old disk\nDISKTYPE=2\nDOMAIN={SD}\nFORMAT=RAW\nIMAGE={IMG4}\nLEGALITY=LEGAL\nMTIME=0\nPOOL_UUID=\nPUUID=00000000-0000-0000-0000-000000000000\nSIZE=8192\nTYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n"),
    );
    dom
}

/// A volume as vdsm leaves it in `dom`: a data file of `size` bytes with pseudo-random data at
/// `data` = (offset, length, seed), and its `.meta` file.
fn write_volume(dom: &Path, img: &str, vol: &str, size: u64, data: (u64, usize, u64), meta: &str) {
    let dir = dom.join("images").join(img);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(vol))
        .unwrap()
        .set_len(size)
        .unwrap();
    let (offset, len, seed) = data;
    write_pattern(&dir.join(vol), offset, len, seed);
    std::fs::write(dir.join(format!("{vol}.meta")), meta).unwrap();
}

#[tokio::test]
async fn an_ovirt_written_domain_attaches_and_works() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let root = agent.state_dir.join("mnt").join("server:_path");
    let dom = make_ovirt_domain(&root);
    let md_before = std::fs::read(dom.join("dom_md/metadata")).unwrap();

    let sd = Uuid::parse(SD).unwrap();
    let r = c
        .api()
        .attach_domain(dom.to_string_lossy().into(), None, None, None, None)
        .await
        .via(&c)
        .unwrap();
    assert_eq!(r.sd_id, sd);
    let listed = c.api().list_domains().await.via(&c).unwrap();
    let d = listed.iter().find(|d| d.sd_id == sd).unwrap();
    assert_eq!(d.description, "storage domain");
    let mut images = c.api().get_images(sd.clone()).await.via(&c).unwrap();
    images.sort();
    let mut want = vec![Uuid::parse(IMG5).unwrap(), Uuid::parse(IMG4).unwrap()];
    want.sort();
    assert_eq!(images, want);

    let (img5, vol5) = (Uuid::parse(IMG5).unwrap(), Uuid::parse(VOL5).unwrap());
    let i = c
        .api()
        .get_volume_info(sd.clone(), img5.clone(), vol5.clone())
        .await
        .via(&c)
        .unwrap();
    assert_eq!(
        (i.capacity, i.generation, i.sequence, i.legality),
        (Size(8 << 20), 4, 7, Legality::Legal)
    );
    assert_eq!(
        i.description,
        "{\"DiskAlias\":\"d1\",\"DiskDescription\":\"\"}"
    );
    assert!(i.lease.owners.is_empty(), "no .lease file on LOCALFS: free");

    // V4 metadata: capacity from SIZE in sectors, generation 0.
    let (img4, vol4) = (Uuid::parse(IMG4).unwrap(), Uuid::parse(VOL4).unwrap());
    let i = c
        .api()
        .get_volume_info(sd.clone(), img4.clone(), vol4.clone())
        .await
        .via(&c)
        .unwrap();
    assert_eq!(
        (i.capacity, i.generation, i.disktype.as_str()),
        (Size(4 << 20), 0, "2")
    );

    // Checksum, copy into a new volume of the same domain, and a metadata update.
    let job = start_checksum(&c, &sd, &img5, &vol5).await;
    let sum = wait_job(&c, &job).await.result.unwrap().checksum;
    assert_eq!(sum, sha256sum(&dom.join("images").join(IMG5).join(VOL5)));
    let (nimg, nvol) = (uuid(), uuid());
    create_volume(
        &c,
        &sd,
        &nimg,
        &nvol,
        8 << 20,
        VolumeFormat::Raw,
        None,
        None,
    )
    .await;
    let job = uuid();
    c.api()
        .copy_data(
            job.clone(),
            endpoint(&sd, &img5, &vol5, None),
            endpoint(&sd, &nimg, &nvol, Some(0)),
            None,
            Some(Flag(true)),
            None,
            None,
        )
        .await
        .via(&c)
        .unwrap();
    assert_eq!(wait_job(&c, &job).await.status, JobStatus::Done);
    assert_eq!(sha256sum(&volume_path(&dom, &nimg, &nvol)), sum);
    let r = volume_ref(&sd, &img4, &vol4, Some(0));
    assert_eq!(
        update_volume(&c, r, legality_attrs(Legality::Illegal))
            .await
            .status,
        JobStatus::Done
    );
    let meta = std::fs::read_to_string(dom.join("images").join(IMG4).join(format!("{VOL4}.meta")))
        .unwrap();
    assert!(
        // V4 metadata has no SEQ: it reads as 0, and writes keep it (CONTRACT, as VDSM).
        meta.contains("CAP=4194304\n") && meta.contains("SEQ=0\n") && !meta.contains("SIZE="),
        "rewritten as V5: {meta}"
    );
    assert_eq!(
        std::fs::read(dom.join("dom_md/metadata")).unwrap(),
        md_before,
        "domain metadata untouched"
    );
    assert!(root.join("__DIRECT_IO_TEST__").exists());
}

#[tokio::test]
async fn a_broken_seal_is_refused_clearly() {
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let root = agent.state_dir.join("mnt").join("tampered");
    let dom = make_ovirt_domain(&root);
    std::fs::write(
        dom.join("dom_md/metadata"),
        DOMAIN_MD.replace("ROLE=Regular", "ROLE=Master"),
    )
    .unwrap();
    let e = c
        .api()
        .attach_domain(dom.to_string_lossy().into(), None, None, None, None)
        .await
        .via(&c)
        .unwrap_err();
    assert!(e.to_string().contains("seal is broken"), "{e}");
    assert!(c
        .api()
        .list_domains()
        .await
        .via(&c)
        .unwrap()
        .iter()
        .all(|d| d.sd_id.as_str() != SD));
}
