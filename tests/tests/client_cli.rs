//! `sdmctl` across several agents: hosts, disk move/copy/delete with JSON and human reports,
//! jobs watch, and exit codes.

use std::process::Output;
use std::time::Duration;

use sdm_proto::Uuid;
use sdm_tests::cluster::*;
use sdm_tests::{assert_success, start_checksum};

fn sdmctl(cluster: &Cluster, args: &[&str]) -> Output {
    sdm_tests::sdmctl_cmd(&cluster.urls())
        .args(args)
        .output()
        .expect("run sdmctl")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdmctl_moves_copies_and_deletes_disks_across_agents() {
    let cluster = Cluster::start(2).await;
    let disk = create_disk(&cluster, &cluster.sd1, 2, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let j = journal.to_str().unwrap();
    let (img, sd1, sd2) = (
        disk.img.as_str(),
        cluster.sd1.as_str(),
        cluster.sd2.as_str(),
    );

    // hosts
    let out = sdmctl(&cluster, &["--json", "hosts"]);
    assert_success(&out);
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 2);
    for h in hosts.as_array().unwrap() {
        assert_eq!(h["health"]["state"], "up", "{h}");
        let domains = h["domains"].as_array().unwrap();
        assert!(domains.iter().any(|d| d == sd1) && domains.iter().any(|d| d == sd2));
    }
    let out = sdmctl(&cluster, &["hosts"]);
    assert!(text(&out.stdout).contains("up"), "{}", text(&out.stdout));

    // disk move, JSON report
    let out = sdmctl(
        &cluster,
        &[
            "--json",
            "disk",
            "move",
            img,
            "--from",
            sd1,
            "--to",
            sd2,
            "--journal",
            j,
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "committed", "{report}");
    assert_eq!(report["deleted"], true);
    let vols = report["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2);
    for (v, want) in vols.iter().zip(&disk.volumes) {
        assert_eq!(v["vol_id"], want.vol.as_str());
        assert_eq!(v["checksum"], want.sha256.as_str());
    }
    assert_moved(&cluster, &disk, &cluster.sd1, &cluster.sd2).await;

    // disk copy back, human summary
    let out = sdmctl(
        &cluster,
        &[
            "disk",
            "copy",
            img,
            "--from",
            sd2,
            "--to",
            sd1,
            "--journal",
            j,
        ],
    );
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("copy of image {img} committed")),
        "{stdout}"
    );
    assert!(stdout.contains(disk.volumes[0].vol.as_str()), "{stdout}");
    // Progress went to stderr as plain lines (no terminal here).
    assert!(
        text(&out.stderr).contains("destination committed"),
        "{}",
        text(&out.stderr)
    );

    // disk delete with wipe
    let out = sdmctl(
        &cluster,
        &["disk", "delete", img, "--sd", sd1, "--wipe", "--journal", j],
    );
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("source deleted"),
        "{}",
        text(&out.stdout)
    );

    // Failures: unknown image (agent error, 1), bad id (usage, 2).
    let missing = Uuid::new_v4();
    let out = sdmctl(
        &cluster,
        &[
            "disk",
            "move",
            missing.as_str(),
            "--from",
            sd1,
            "--to",
            sd2,
            "--journal",
            j,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ImageDoesNotExistInSD (268)"),
        "{}",
        text(&out.stderr)
    );
    let out = sdmctl(
        &cluster,
        &[
            "disk",
            "move",
            "nope",
            "--from",
            sd1,
            "--to",
            sd2,
            "--journal",
            j,
        ],
    );
    assert_eq!(out.status.code(), Some(2));

    let out = sdmctl(&cluster, &["resume", "--list", "--journal", j]);
    assert!(
        text(&out.stdout).contains("nothing to resume"),
        "{}",
        text(&out.stdout)
    );
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdmctl_jobs_watch_finds_jobs_on_any_agent() {
    let cluster = Cluster::start(2).await;
    let disk = create_disk(&cluster, &cluster.sd1, 2, 0).await;
    let c = cluster.client(1);
    let job = start_checksum(&c, &cluster.sd1, &disk.img, &disk.volumes[0].vol).await;

    let out = sdmctl(&cluster, &["jobs", "watch", job.as_str()]);
    assert_success(&out);
    assert!(
        text(&out.stdout).contains(&format!("job {job} checksum done")),
        "{}",
        text(&out.stdout)
    );

    let out = sdmctl(&cluster, &["jobs", "watch", Uuid::new_v4().as_str()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = sdmctl(&cluster, &["jobs", "watch"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("no active jobs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdmctl_without_a_live_agent_exits_3() {
    let mut cluster = Cluster::start(1).await;
    let disk = create_disk(&cluster, &cluster.sd1, 1, 0).await;
    let (sd1, sd2) = (cluster.sd1.to_string(), cluster.sd2.to_string());
    cluster.kill9(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("j");
    let out = sdmctl(
        &cluster,
        &[
            "disk",
            "move",
            disk.img.as_str(),
            "--from",
            &sd1,
            "--to",
            &sd2,
            "--journal",
            j.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no healthy host"),
        "{}",
        text(&out.stderr)
    );
}
