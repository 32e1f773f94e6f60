//! `sdm-client` disk operations against real agents sharing two domains: a multi-volume move
//! spread over three hosts, copy and delete, and a copy that fails everywhere (rolled back).

use std::collections::BTreeSet;
use std::time::Duration;

use sdm_client::{DeletePolicy, MovePolicy, Outcome, SdmApiClient, Via};
use sdm_proto::ErrorCode;
use sdm_tests::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_volume_move_spreads_over_three_hosts_and_verifies() {
    let cluster = Cluster::start(3).await;
    let disk = create_disk(&cluster, &cluster.sd1, 4, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let disks = engine(&cluster, &dir.path().join("journal")).await;
    let log = EventLog::default();
    // Throttled so that the three copies overlap and placement has to spread them.
    let policy = MovePolicy {
        verify: true,
        bandwidth_limit: Some(2 << 20),
        ..Default::default()
    };

    let report = disks
        .move_disk(&disk.img, &cluster.sd1, &cluster.sd2, policy, &log)
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    assert!(report.deleted, "source deleted");
    assert!(report.target_ready_s.is_some());
    assert_eq!(report.volumes.len(), 3);
    let mut hosts = BTreeSet::new();
    for (v, want) in report.volumes.iter().zip(&disk.volumes) {
        assert_eq!(v.vol_id, want.vol, "parents first");
        assert_eq!(v.attempts.len(), 1, "{v:?}");
        assert_eq!(v.attempts[0].outcome, "done");
        assert_eq!(v.generation, Some(1));
        assert_eq!(
            v.checksum.as_deref(),
            Some(want.sha256.as_str()),
            "verified checksum is the source's"
        );
        hosts.insert(v.attempts[0].host.clone());
    }
    assert_eq!(hosts.len(), 3, "one volume per host: {hosts:?}");
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    cluster.assert_clean().await;

    // Order: every verification before the commit, the commit before the source's deletion.
    let events = log.json();
    let ready = log.position("target_ready").unwrap();
    let delete = log.position("delete_submitted").unwrap();
    assert!(ready < delete);
    let verified: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["event"] == "verified")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(verified.len(), 3);
    assert!(verified.iter().all(|i| *i < ready));
    assert!(
        log.decisions().is_empty(),
        "no recovery needed: {:?}",
        log.decisions()
    );
    assert!(disks.journal().unfinished().is_empty());
    assert!(
        disks.resume(&log).await.unwrap().is_empty(),
        "nothing left to resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_keeps_the_source_and_delete_wipes() {
    let cluster = Cluster::start(2).await;
    let disk = create_disk(&cluster, &cluster.sd1, 2, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let disks = engine(&cluster, &dir.path().join("journal")).await;
    let log = EventLog::default();

    let report = disks
        .copy_disk(
            &disk.img,
            &cluster.sd1,
            &cluster.sd2,
            MovePolicy::default(),
            &log,
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    assert!(!report.deleted);
    let c = cluster.client(1);
    assert_source_untouched(&c, &cluster, &disk, &cluster.sd1, &cluster.sd2).await;
    // A second copy to the same domain is refused before anything is recorded.
    let err = disks
        .copy_disk(
            &disk.img,
            &cluster.sd1,
            &cluster.sd2,
            MovePolicy::default(),
            &log,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::VolumeAlreadyExists), "{err}");

    // Delete the copy, wiping it.
    let report = disks
        .delete_disk(
            &disk.img,
            &cluster.sd2,
            DeletePolicy {
                wipe: true,
                discard: false,
            },
            &log,
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    assert!(report.deleted);
    let imgs = c
        .api()
        .get_images(cluster.sd2.clone())
        .await
        .via(&c)
        .unwrap();
    assert!(!imgs.contains(&disk.img));
    // Deleting what is not there is refused up front.
    let err = disks
        .delete_disk(&disk.img, &cluster.sd2, DeletePolicy::default(), &log)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ImageDoesNotExistInSD), "{err}");
    cluster.assert_clean().await;
    assert!(disks.journal().unfinished().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_on_every_host_is_rolled_back() {
    // Every copy job dies after marking its destination ILLEGAL.
    let cluster =
        Cluster::start_with(2, &[("FAILPOINTS", "sdm::copy_data::after_illegal=panic")]).await;
    let disk = create_disk(&cluster, &cluster.sd1, 1, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let disks = engine(&cluster, &dir.path().join("journal")).await;
    let log = EventLog::default();

    let report = disks
        .move_disk(
            &disk.img,
            &cluster.sd1,
            &cluster.sd2,
            MovePolicy {
                max_attempts: 2,
                ..Default::default()
            },
            &log,
        )
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert!(
        report
            .message
            .as_deref()
            .unwrap_or("")
            .contains("failed 2 times"),
        "{report:#?}"
    );
    assert!(report.into_result().is_err());
    let c = cluster.client(0);
    let vols = c
        .api()
        .get_volumes(cluster.sd2.clone(), disk.img.clone())
        .await
        .via(&c)
        .unwrap();
    assert!(vols.is_empty(), "destination deleted: {vols:?}");
    assert_source_untouched(&c, &cluster, &disk, &cluster.sd1, &cluster.sd1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.assert_clean().await;
    assert!(log.position("target_ready").is_none());
    assert!(disks.journal().unfinished().is_empty());
}
