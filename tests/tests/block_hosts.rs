//! Several hosts on one block domain without an SPM: two agents, each with a sanlock daemon of
//! its own (two hosts as sanlock sees them), on one VG over shared loop devices. Volume creation
//! by both at once never shares a slot or loses an LV; a host killed while holding the
//! domain's metadata-writer lease blocks the others until its lease expires, and no longer.
//! Root, lvm2 and sanlock only; each test says why it skips elsewhere.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_lease::test_support::{sanlock_available, SanlockDaemon};
use sdm_proto::*;
use sdm_tests::block::*;
use sdm_tests::*;

const MIB: u64 = 1 << 20;

fn host_config(disks: &[PathBuf], run_dir: &Path) -> String {
    block_config(
        disks,
        &format!(
            "create_default_domains = false\n\n[leases]\ndefault_backend = \"sanlock\"\nsanlock_io_timeout_s = 1\nsanlock_run_dir = {:?}\n",
            run_dir.display().to_string()
        ),
        "",
    )
}

fn skip() -> bool {
    if let Some(why) = block_skip_reason() {
        eprintln!("skipping: {why}");
        return true;
    }
    if let Err(why) = sanlock_available() {
        eprintln!("skipping: {why}");
        return true;
    }
    false
}

fn host(disks: &TestDisks, daemon: &SanlockDaemon, id: u64, env: &[(&str, &str)]) -> AgentProc {
    AgentProc::start(AgentOptions {
        config: Some(host_config(disks.paths(), daemon.run_dir())),
        host_id: Some(id),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

async fn create_raw(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
) -> Result<Uuid, sdm_client::Error> {
    c.api()
        .create_volume(
            sd.clone(),
            img.clone(),
            vol.clone(),
            Capacity(Size(MIB)),
            VolumeFormat::Raw,
            Preallocation::Preallocated,
            None,
            None,
        )
        .await
        .via(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_create_200_volumes_at_once() {
    if skip() {
        return;
    }
    let disks = TestDisks::new(2, 16 << 30);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let (d1, d2) = (
        SanlockDaemon::start("sdm-blk-h1"),
        SanlockDaemon::start("sdm-blk-h2"),
    );
    let h1 = host(&disks, &d1, 1, &[]);
    let h2 = host(&disks, &d2, 2, &[]);
    let (c1, c2) = (
        h1.client().with_timeout(Duration::from_secs(300)).unwrap(),
        h2.client().with_timeout(Duration::from_secs(300)).unwrap(),
    );
    let sd = uuid();
    create_block_domain(&c1, &sd, disks.paths()).await;
    // A sanlock block domain is what VDSM makes: TYPE=ISCSI and no SDM_LEASES tag. A host
    // expecting local leases on it is refused (372) before it touches anything.
    assert!(!vg(&lvm, &devs, &sd)
        .tags
        .iter()
        .any(|t| t.starts_with("MDT_SDM_LEASES")));
    let refused = try_attach_block_domain_with(&c2, &sd, Some(LeaseBackendName::Local))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::StorageDomainTypeError),
        "{refused:?}"
    );
    try_attach_block_domain(&c2, &sd).await.unwrap();
    assert_eq!(
        c2.api().list_domains().await.via(&c2).unwrap()[0].lease_backend,
        "sanlock"
    );

    const EACH: usize = 100;
    const IN_FLIGHT: usize = 4;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (h, c) in [(1u8, c1.clone()), (2, c2.clone())] {
        for lane in 0..IN_FLIGHT {
            let (c, sd) = (c.clone(), sd.clone());
            tasks.spawn(async move {
                let mut made = Vec::new();
                for _ in (lane..EACH).step_by(IN_FLIGHT) {
                    let (img, vol) = (uuid(), uuid());
                    if let Err(e) = create_raw(&c, &sd, &img, &vol).await {
                        return Err(format!("host {h}: {e}"));
                    }
                    made.push((h, img, vol));
                }
                Ok(made)
            });
        }
    }
    let mut made = Vec::new();
    while let Some(r) = tasks.join_next().await {
        made.extend(r.unwrap().unwrap());
    }
    eprintln!(
        "{} volumes created by two hosts in {:?}",
        made.len(),
        started.elapsed()
    );
    assert_eq!(made.len(), 2 * EACH);

    // Every volume has its own LV and its own slot, fully tagged, its metadata in its slot.
    let all = lvs(&lvm, &devs, &sd);
    let mut slots = Vec::new();
    for (_, img, vol) in &made {
        let lv = all
            .iter()
            .find(|l| l.name == vol.as_str())
            .unwrap_or_else(|| panic!("LV of {vol} lost"));
        assert!(!lv.has_tag("OVIRT_VOL_INITIALIZING"), "{vol}");
        assert_eq!(tag(lv, "IU_"), Some(img.as_str()));
        let slot = slot_of(lv);
        let text = slot_text(&lvm, &devs, &sd, slot);
        assert!(
            text.contains(&format!("\nIMAGE={img}\n")),
            "slot {slot}: {text}"
        );
        slots.push(slot);
    }
    slots.sort_unstable();
    let distinct = {
        let mut s = slots.clone();
        s.dedup();
        s
    };
    assert_eq!(distinct.len(), slots.len(), "a slot was given twice");
    assert_eq!(slots, (1..=(2 * EACH) as u64).collect::<Vec<_>>());
    assert!(half_made_lvs(&lvm, &devs, &sd).is_empty());
    // Each host sees the other's volumes, with their leases at their slots' offsets.
    for (h, img, vol) in made.iter().step_by(17) {
        let other = if *h == 1 { &c2 } else { &c1 };
        let i = volume_info(other, &sd, img, vol).await;
        let lv = all.iter().find(|l| l.name == vol.as_str()).unwrap();
        assert_eq!(i.lease.offset, (100 + slot_of(lv)) * MIB);
        assert_eq!(i.legality, Legality::Legal);
    }
}

/// Host 1 starts a volume creation and is held inside the metadata-writer lease; host 2's
/// creation waits for it. Returns host 2's pending call and when it started.
async fn held_by_host1(
    h1c: &AgentClient,
    c2: &AgentClient,
    sd: &Uuid,
) -> tokio::task::JoinHandle<(Result<Uuid, sdm_client::Error>, Duration)> {
    let (c1, sd1) = (h1c.clone(), sd.clone());
    let first = tokio::spawn(async move { create_raw(&c1, &sd1, &uuid(), &uuid()).await });
    // The failpoint holds host 1 once it has the lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if first.is_finished() {
        panic!("host 1 was not held: {:?}", first.await.unwrap());
    }
    let (c2, sd2) = (c2.clone(), sd.clone());
    let call = tokio::spawn(async move {
        let t = Instant::now();
        let r = create_raw(&c2, &sd2, &uuid(), &uuid()).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !call.is_finished(),
        "host 2 did not wait for host 1's lease"
    );
    call
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_writer_blocks_others_only_until_its_lease_expires() {
    if skip() {
        return;
    }
    let disks = TestDisks::new(1, 12 << 30);
    let (lvm, devs) = (test_lvm(&disks), disks.devices());
    let (mut d1, d2) = (
        SanlockDaemon::start("sdm-blk-k1"),
        SanlockDaemon::start("sdm-blk-k2"),
    );
    let hold = [("FAILPOINTS", "sdm::block::writer_held=sleep(600000)")];
    let mut h1 = host(&disks, &d1, 1, &hold);
    let h2 = host(&disks, &d2, 2, &[]);
    let sd = uuid();
    create_block_domain(&h1.client(), &sd, disks.paths()).await;
    let c2 = h2.client().with_timeout(Duration::from_secs(400)).unwrap();
    try_attach_block_domain(&c2, &sd).await.unwrap();

    // The writer's process dies, its host (sanlock daemon) lives: the daemon releases the
    // lease at once.
    let call = held_by_host1(&h1.client(), &c2, &sd).await;
    let killed = Instant::now();
    h1.kill9();
    let (r, waited) = call.await.unwrap();
    r.unwrap();
    eprintln!(
        "host 2 waited {waited:?}; got the lease {:?} after host 1's agent was killed",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(20));

    // The whole host dies (agent and sanlock daemon) while writing: its lease stays on disk
    // until its delta lease expires (8 × io_timeout + 60 s), then host 2 takes it over.
    // Host 1's agent restarts (its daemon kept the lockspace joined) and attaches the domain
    // again from its state.
    h1.restart();
    let call = held_by_host1(&h1.client(), &c2, &sd).await;
    let killed = Instant::now();
    // The daemon first: killed after the agent, it could still see its client die and release
    // the lease at once (as in the first half), which a loaded machine made happen.
    d1.kill().unwrap();
    h1.kill9();
    let (r, _) = call.await.unwrap();
    r.unwrap();
    let took = killed.elapsed();
    eprintln!("host 2 took over the metadata-writer lease {took:?} after host 1 died");
    assert!(
        took >= Duration::from_secs(8),
        "taken before host 1's lease could have expired ({took:?})"
    );
    assert!(
        took < Duration::from_secs(8 + 60 + 60),
        "host 2 waited past the expiry of host 1's lease ({took:?})"
    );
    assert!(half_made_lvs(&lvm, &devs, &sd).is_empty());
    let vols = lvs(&lvm, &devs, &sd)
        .into_iter()
        .filter(|l| l.has_tag("OVIRT_VOL_INITIALIZING"))
        .count();
    assert_eq!(vols, 0, "host 1 was stopped before it made anything");
}
