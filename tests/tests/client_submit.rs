//! Safe retries: a `SDM.copy_data` whose answer is lost on the way back is submitted again with
//! the same job id, and the agent starts nothing twice.

use std::time::Duration;

use sdm_client::{AgentClient, MovePolicy, Outcome, SdmApiClient, Via};
use sdm_proto::{Endpoint, ErrorCode, Generation, Uuid, VolumeFormat};
use sdm_tests::cluster::*;

fn runs_of(log: &str, job: &Uuid) -> usize {
    log.lines()
        .filter(|l| l.contains("job running") && l.contains(job.as_str()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_retried_with_the_same_job_id_and_nothing_runs_twice() {
    let cluster = Cluster::start(1).await;
    let direct = cluster.client(0);
    let (img, vol, dst_img) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (sd, i) in [(&cluster.sd1, &img), (&cluster.sd2, &dst_img)] {
        sdm_tests::create_volume(&direct, sd, i, &vol, 2 << 20, VolumeFormat::Raw, None, None)
            .await;
    }
    sdm_tests::write_pattern(
        &cluster.volume_path(&cluster.sd1, &img, &vol),
        0,
        2 << 20,
        5,
    );
    let proxy = FlakyProxy::start(cluster.agents[0].addr, "SDM.copy_data", 1);
    let lossy = AgentClient::new(&proxy.url).unwrap();
    let src = Endpoint::div(cluster.sd1.clone(), img.clone(), vol.clone(), None);
    let dst = Endpoint::div(
        cluster.sd2.clone(),
        dst_img.clone(),
        vol.clone(),
        Some(Generation(0)),
    );
    let job = Uuid::new_v4();

    lossy
        .submit(&job, |h| {
            let (j, s, d) = (job.clone(), src.clone(), dst.clone());
            async move { h.copy_data(j, s, d, None, None, None, None).await }
        })
        .await
        .expect("the retry finds the job registered and counts it as submitted");

    assert_eq!(proxy.lost(), 1, "the first answer was lost");
    assert_eq!(proxy.seen(), 2, "and the request was sent again");
    let info = sdm_tests::wait_job(&direct, &job).await;
    assert_eq!(info.status, sdm_proto::JobStatus::Done, "{info:?}");
    let jobs = direct
        .api()
        .get_jobs(None, None)
        .await
        .via(&direct)
        .unwrap();
    assert_eq!(
        jobs.values()
            .filter(|j| j.description == "copy_data")
            .count(),
        1,
        "{jobs:?}"
    );
    assert_eq!(
        runs_of(&cluster.agents[0].log_text(), &job),
        1,
        "the job ran once"
    );
    let d = sdm_tests::volume_info(&direct, &cluster.sd2, &dst_img, &vol).await;
    assert_eq!(d.generation, 1, "exactly one copy committed");

    // Sending it yet again, on purpose, is refused and changes nothing.
    let again = direct
        .api()
        .copy_data(
            job.clone(),
            src.clone(),
            dst.clone(),
            None,
            None,
            None,
            None,
        )
        .await
        .via(&direct)
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::JobExists));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs_of(&cluster.agents[0].log_text(), &job), 1);
    let d = sdm_tests::volume_info(&direct, &cluster.sd2, &dst_img, &vol).await;
    assert_eq!(d.generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_copy_over_a_lossy_link_submits_each_volume_once() {
    let cluster = Cluster::start(1).await;
    let disk = create_disk(&cluster, &cluster.sd1, 2, 1).await;
    let proxy = FlakyProxy::start(cluster.agents[0].addr, "SDM.copy_data", 2);
    let dir = tempfile::tempdir().unwrap();
    let disks = engine_over(std::slice::from_ref(&proxy.url), &dir.path().join("j")).await;
    let log = EventLog::default();

    let report = disks
        .copy_disk(
            &disk.img,
            &cluster.sd1,
            &cluster.sd2,
            MovePolicy {
                parallelism: 1,
                ..Default::default()
            },
            &log,
        )
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Committed, "{report:#?}");
    assert_eq!(proxy.lost(), 2, "both copies lost their first answer");
    let agent_log = cluster.agents[0].log_text();
    for v in &report.volumes {
        assert_eq!(v.attempts.len(), 1, "{v:?}");
        assert_eq!(v.generation, Some(1), "one copy committed");
        assert_eq!(
            runs_of(&agent_log, &v.attempts[0].job),
            1,
            "job {} ran once",
            v.attempts[0].job
        );
    }
    assert_eq!(
        agent_log.matches("description=copy_data").count(),
        2 * 2,
        "two copies started and finished, no more"
    );
    for v in &disk.volumes {
        assert_eq!(
            sdm_tests::sha256sum(&cluster.volume_path(&cluster.sd2, &disk.img, &v.vol)),
            v.sha256
        );
    }
}
