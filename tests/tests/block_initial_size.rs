//! `Volume.create`'s `initialSize` on a block domain, with a real agent, real lvm2 and loop
//! devices: the LV sizes VDSM gives (COW sparse × 1.1, COW preallocated as given, rounded up to
//! 128 MiB extents, never beyond 1.1 × capacity), read with `lvs`; RAW with an initial size and
//! one beyond the maximum refused with 1000 and no LV made. Root only; skips elsewhere, saying
//! why. Disks, VGs and loop devices are removed by name when the test ends, also on failure.

use sdm_proto::*;
use sdm_tests::block::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const EXTENT: u64 = 128 * MIB;

/// `Volume.create` by VDSM's names, as an engine sends it, with `initialSize`: Ok, or the
/// error code.
#[allow(clippy::too_many_arguments)]
fn create(
    agent: &AgentProc,
    sd: &Uuid,
    vol: &Uuid,
    capacity: u64,
    format: VolumeFormat,
    alloc: Preallocation,
    initial: u64,
) -> Result<(), i64> {
    let params = serde_json::json!({
        "storagedomainID": sd,
        "storagepoolID": "00000000-0000-0000-0000-000000000000",
        "imageID": uuid(),
        "volumeID": vol,
        "size": capacity.to_string(),
        "volFormat": if format == VolumeFormat::Cow { 4 } else { 5 },
        "preallocate": if alloc == Preallocation::Sparse { 2 } else { 1 },
        "diskType": "DATA",
        "desc": "",
        "srcImgUUID": "00000000-0000-0000-0000-000000000000",
        "srcVolUUID": "00000000-0000-0000-0000-000000000000",
        "initialSize": initial.to_string(),
    });
    let resp = raw_call(agent.addr, "Volume.create", params);
    if resp.get("error").is_some() {
        Err(error_code(&resp))
    } else {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn initial_size_sizes_cow_lvs_as_vdsm_does() {
    require_block!();
    let disks = TestDisks::new(1, DISK);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let agent = AgentProc::start(AgentOptions {
        config: Some(block_config(disks.paths(), "", "")),
        ..Default::default()
    });
    let c = agent.client();
    let sd = uuid();
    create_block_domain(&c, &sd, disks.paths()).await;
    let lv_size = |vol: &Uuid| {
        lvs(&lvm, &devs, &sd)
            .into_iter()
            .find(|l| l.name == vol.as_str())
            .map(|l| l.size)
    };

    // COW sparse, 4 GiB, initial 1 GiB: 1.1 GiB, rounded up to 9 extents (1152 MiB).
    let v = uuid();
    create(
        &agent,
        &sd,
        &v,
        4 * GIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        GIB,
    )
    .expect("COW sparse with initialSize");
    assert_eq!(
        lv_size(&v),
        Some((GIB * 11).div_ceil(10).div_ceil(EXTENT) * EXTENT)
    );
    // Without initialSize it would have been one 2.5 GiB chunk.
    assert_ne!(lv_size(&v), Some(2560 * MIB));

    // COW sparse at the maximum: initial = capacity gives 1.1 × capacity exactly.
    let v = uuid();
    create(
        &agent,
        &sd,
        &v,
        GIB,
        VolumeFormat::Cow,
        Preallocation::Sparse,
        GIB,
    )
    .expect("COW sparse at its maximum");
    assert_eq!(lv_size(&v), Some((GIB * 11 / 10).div_ceil(EXTENT) * EXTENT));

    // COW preallocated: the initial size as given, in extents.
    let v = uuid();
    create(
        &agent,
        &sd,
        &v,
        4 * GIB,
        VolumeFormat::Cow,
        Preallocation::Preallocated,
        300 * MIB,
    )
    .expect("COW preallocated with initialSize");
    assert_eq!(lv_size(&v), Some(384 * MIB));

    // Refused, nothing made: beyond the maximum, and any initial size for RAW.
    for (format, alloc, cap, initial) in [
        (VolumeFormat::Cow, Preallocation::Sparse, GIB, 2 * GIB),
        (VolumeFormat::Raw, Preallocation::Preallocated, GIB, GIB),
    ] {
        let v = uuid();
        let err = create(&agent, &sd, &v, cap, format, alloc, initial).unwrap_err();
        assert_eq!(
            err,
            i64::from(ErrorCode::InvalidParameterException.code()),
            "{format} {alloc}"
        );
        assert_eq!(lv_size(&v), None, "{format} {alloc}: an LV was made");
    }
}
