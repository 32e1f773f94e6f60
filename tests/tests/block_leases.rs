//! Fencing rules on block domains, with a real agent, real lvm2 and loop devices: the lease
//! backend recorded in the domain (the sealed `MDT_SDM_LEASES=local` tag for local leases,
//! TYPE=ISCSI either way), an attach expecting the other backend refused with 372 and nothing
//! changed, and a child's `Volume.create` holding its parent's lease in the `leases` LV.
//! Root only; each test says why it skips elsewhere. Disks, VGs and loop devices are removed by
//! name when a test ends, also when it fails.

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_lease::{LeaseBackend, LocalLeases};
use sdm_proto::*;
use sdm_tests::block::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn start_agent(disks: &TestDisks) -> AgentProc {
    AgentProc::start(AgentOptions {
        config: Some(block_config(disks.paths(), "", "")),
        ..Default::default()
    })
}

async fn create(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
    parent: Option<Uuid>,
) -> Result<Uuid, sdm_client::Error> {
    c.api()
        .create_volume(
            sd.clone(),
            img.clone(),
            vol.clone(),
            Capacity(Size(64 * MIB)),
            VolumeFormat::Cow,
            Preallocation::Sparse,
            parent,
            None,
        )
        .await
        .via(c)
}

fn listed_backend(domains: &[DomainInfo], sd: &Uuid) -> Option<String> {
    domains
        .iter()
        .find(|d| &d.sd_id == sd)
        .map(|d| d.lease_backend.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_block_domain_records_its_backend_and_refuses_another() {
    require_block!();
    let disks = TestDisks::new(1, DISK);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let mut agent = start_agent(&disks);
    let c = agent.client();
    let sd = uuid();
    try_create_block_domain_with(&c, &sd, disks.paths(), Some(LeaseBackendName::Local))
        .await
        .expect("create a local block domain");

    // VDSM's TYPE, and sdm's sealed tag next to it.
    let g = vg(&lvm, &devs, &sd);
    assert!(g.has_tag("MDT_TYPE=ISCSI"), "{:?}", g.tags);
    assert!(g.has_tag("MDT_SDM_LEASES=local"), "{:?}", g.tags);
    let listed = c.api().list_domains().await.via(&c).unwrap();
    assert_eq!(listed_backend(&listed, &sd).as_deref(), Some("local"));

    // Detached, then attached expecting sanlock: 372, nothing attached, tags unchanged.
    c.api().detach_domain(sd.clone()).await.via(&c).unwrap();
    let tags_before = vg(&lvm, &devs, &sd).tags;
    let err = try_attach_block_domain_with(&c, &sd, Some(LeaseBackendName::Sanlock))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::StorageDomainTypeError),
        "{err:?}"
    );
    let listed = c.api().list_domains().await.via(&c).unwrap();
    assert_eq!(
        listed_backend(&listed, &sd),
        None,
        "refused attach remembered"
    );
    assert_eq!(vg(&lvm, &devs, &sd).tags, tags_before);
    // Nothing of it stays active on this host after the refusal.
    let active: Vec<String> = lvs(&lvm, &devs, &sd)
        .into_iter()
        .filter(|l| l.dm_active() == Some(true))
        .map(|l| l.name)
        .collect();
    assert!(active.is_empty(), "LVs left active: {active:?}");

    // Without an expectation (or expecting local) it attaches with local leases, and a
    // restarted agent attaches it the same way.
    try_attach_block_domain_with(&c, &sd, Some(LeaseBackendName::Local))
        .await
        .expect("attach expecting local");
    agent.restart();
    let c = agent.client();
    let listed = c.api().list_domains().await.via(&c).unwrap();
    assert_eq!(listed_backend(&listed, &sd).as_deref(), Some("local"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_is_created_only_under_its_parents_lease() {
    require_block!();
    let disks = TestDisks::new(1, DISK);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let agent = start_agent(&disks);
    let c = agent.client();
    let sd = uuid();
    try_create_block_domain_with(&c, &sd, disks.paths(), Some(LeaseBackendName::Local))
        .await
        .expect("create a local block domain");
    let (img, parent, child) = (uuid(), uuid(), uuid());
    create(&c, &sd, &img, &parent, None).await.unwrap();

    // The parent's lease is the local range lock at (100 + slot) MiB of the `leases` LV, which
    // the agent reaches through its stable link; this process takes it as another holder would.
    let slot: u64 = lvs(&lvm, &devs, &sd)
        .into_iter()
        .find(|l| l.name == parent.as_str())
        .and_then(|l| {
            l.tags
                .iter()
                .find_map(|t| t.strip_prefix("MD_").and_then(|s| s.parse().ok()))
        })
        .expect("parent's MD_ tag");
    let link = agent
        .state_dir
        .join("block-links")
        .join(sd.as_str())
        .join("dom_md/leases");
    assert!(link.exists(), "{} missing", link.display());
    let other = LocalLeases::new(99);
    let held = other
        .acquire(sd.as_str(), parent.as_str(), &link, (100 + slot) * MIB)
        .expect("take the parent's lease from outside");

    let err = create(&c, &sd, &img, &child, Some(parent.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AcquireLockFailure), "{err:?}");
    let p = volume_info(&c, &sd, &img, &parent).await;
    assert_eq!((p.voltype, p.legality), (VolumeRole::Leaf, Legality::Legal));
    assert!(
        !lvs(&lvm, &devs, &sd)
            .iter()
            .any(|l| l.name == child.as_str()),
        "the child's LV was made without the parent's lease"
    );

    held.release().unwrap();
    create(&c, &sd, &img, &child, Some(parent.clone()))
        .await
        .expect("create the child once the lease is free");
    let p = volume_info(&c, &sd, &img, &parent).await;
    assert_eq!(p.voltype, VolumeRole::Internal);
    let ch = volume_info(&c, &sd, &img, &child).await;
    assert_eq!(ch.parent, parent);
}
