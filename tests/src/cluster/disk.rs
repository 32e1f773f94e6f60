//! Test disks with known content, and the checks of a source left untouched and of a disk
//! moved.

use std::process::Command;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{Uuid, VolumeFormat};

use crate::{create_volume, volume_info, write_pattern};

use super::Cluster;

/// A volume of a test disk.
#[derive(Clone, Debug)]
pub struct TestVolume {
    /// Volume id.
    pub vol: Uuid,
    /// SHA-256 of its file.
    pub sha256: String,
}

/// A disk created for a test: a RAW base filled with pseudo-random data, and `cow_layers` COW
/// volumes on top, each with a few written extents.
#[derive(Clone, Debug)]
pub struct TestDisk {
    /// Image id.
    pub img: Uuid,
    /// Volumes, parents first.
    pub volumes: Vec<TestVolume>,
}

/// Creates a [`TestDisk`] of a `base_mib` MiB RAW base and `cow_layers` COW layers on `sd`.
pub async fn create_disk(
    cluster: &Cluster,
    sd: &Uuid,
    base_mib: u64,
    cow_layers: usize,
) -> TestDisk {
    let c = cluster.client(0);
    let img = Uuid::new_v4();
    let size = base_mib << 20;
    let base = Uuid::new_v4();
    create_volume(&c, sd, &img, &base, size, VolumeFormat::Raw, None, None).await;
    let path = cluster.volume_path(sd, &img, &base);
    write_pattern(
        &path,
        0,
        (base_mib << 20) as usize,
        img.as_str().len() as u64 + base_mib,
    );
    let mut vols = vec![base];
    for layer in 0..cow_layers {
        let parent = vols.last().cloned();
        let v = Uuid::new_v4();
        // Each layer one higher in the chain order (SEQ), which moves and copies keep
        // (`sequence` is a parameter sdm's typed client does not send).
        let r = crate::raw_call(
            cluster.agents[0].addr,
            "Volume.create",
            serde_json::json!({"sd_id": sd, "img_id": img, "vol_id": v, "capacity": size,
                "format": "COW", "preallocate": "SPARSE", "parent_vol_id": parent,
                "sequence": layer + 1}),
        );
        assert!(r.get("error").is_none(), "Volume.create: {r}");
        let p = cluster.volume_path(sd, &img, &v);
        let offset = (layer as u64 * 3 + 1) << 18;
        let out = Command::new("qemu-io")
            .arg("-f")
            .arg("qcow2")
            .arg("-c")
            .arg(format!("write -P {} {} 192k", 0x40 + layer, offset))
            .arg(&p)
            // The backing file is named relative to the image directory.
            .current_dir(p.parent().unwrap())
            .output()
            .expect("qemu-io");
        assert!(
            out.status.success(),
            "qemu-io: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        vols.push(v);
    }
    let volumes = vols
        .into_iter()
        .map(|vol| {
            let sha256 = crate::sha256sum(&cluster.volume_path(sd, &img, &vol));
            TestVolume { vol, sha256 }
        })
        .collect();
    TestDisk { img, volumes }
}

/// Checks, asking `c`, that every volume of `disk` is still LEGAL on `src` ("source
/// untouched"), and that its file on `bytes_on` holds the bytes the disk was created with.
pub async fn assert_source_untouched(
    c: &AgentClient,
    cluster: &Cluster,
    disk: &TestDisk,
    src: &Uuid,
    bytes_on: &Uuid,
) {
    for v in &disk.volumes {
        let info = volume_info(c, src, &disk.img, &v.vol).await;
        assert_eq!(
            info.legality,
            sdm_proto::Legality::Legal,
            "source untouched"
        );
        assert_eq!(
            crate::sha256sum(&cluster.volume_path(bytes_on, &disk.img, &v.vol)),
            v.sha256
        );
    }
}

/// Checks that `disk` now lives on `dst` exactly (same bytes, LEGAL at `generation` for each
/// volume as listed, same chain), and is gone from `src` without leftovers.
pub async fn assert_moved(cluster: &Cluster, disk: &TestDisk, src: &Uuid, dst: &Uuid) {
    let c = cluster.live_client();
    let mut listed = c
        .api()
        .get_volumes(dst.clone(), disk.img.clone())
        .await
        .via(&c)
        .expect("dst volumes");
    listed.sort();
    let mut want: Vec<Uuid> = disk.volumes.iter().map(|v| v.vol.clone()).collect();
    want.sort();
    assert_eq!(listed, want, "destination has exactly the source's volumes");
    let mut parent = Uuid::blank();
    for v in &disk.volumes {
        let info = volume_info(&c, dst, &disk.img, &v.vol).await;
        assert_eq!(
            info.legality,
            sdm_proto::Legality::Legal,
            "volume {} is LEGAL",
            v.vol
        );
        assert!(
            info.lease.owners.is_empty(),
            "volume {} lease is free",
            v.vol
        );
        assert_eq!(info.parent, parent, "volume {} keeps its parent", v.vol);
        assert_eq!(
            info.sequence as usize,
            disk.volumes.iter().position(|x| x.vol == v.vol).unwrap(),
            "volume {} keeps its place in the chain (SEQ)",
            v.vol
        );
        parent = v.vol.clone();
        let got = crate::sha256sum(&cluster.volume_path(dst, &disk.img, &v.vol));
        assert_eq!(got, v.sha256, "volume {} has the source's bytes", v.vol);
    }
    let images = c.api().get_images(src.clone()).await.via(&c).unwrap();
    assert!(!images.contains(&disk.img), "source image is deleted");
    assert!(!cluster
        .dir(src)
        .join("images")
        .join(disk.img.as_str())
        .exists());
}
