//! The job registry against its state machine: ends, aborts, fences, events, autodelete.

use super::*;

fn id() -> Uuid {
    Uuid::new_v4()
}

async fn wait_status(jobs: &Jobs, id: &Uuid, want: JobStatus) -> JobInfo {
    for _ in 0..200 {
        let info = jobs.get(id).unwrap().info();
        if info.status == want {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job never reached {want:?}");
}

#[tokio::test]
async fn done_failed_and_duplicate() {
    let jobs = Jobs::new(2, None);
    let a = id();
    let job = jobs.register(&a, "test").unwrap();
    assert!(matches!(
        jobs.register(&a, "test"),
        Err(JobsError::Exists(_))
    ));
    assert!(job.info().progress.is_none());
    jobs.start(job, Box::new(|_| Ok(None)));
    let info = wait_status(&jobs, &a, JobStatus::Done).await;
    assert_eq!(info.progress, Some(100.0));
    assert!(info.error.is_none());

    let b = id();
    let job = jobs.register(&b, "test").unwrap();
    jobs.start(
        job,
        Box::new(|_| Err(ApiError::new(ErrorCode::GenerationMismatch, "gen"))),
    );
    let info = wait_status(&jobs, &b, JobStatus::Failed).await;
    assert_eq!(info.error.unwrap().code, 911);
    assert!(matches!(jobs.abort(&b), Err(JobsError::NotActive(_))));
    jobs.delete(&b).unwrap();
    assert!(matches!(jobs.get(&b), Err(JobsError::NoSuchJob(_))));
}

#[tokio::test]
async fn abort_running_and_pending() {
    let jobs = Jobs::new(1, None);
    let a = id();
    let job = jobs.register(&a, "slow").unwrap();
    jobs.start(
        job,
        Box::new(|j| {
            while !j.is_aborting() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(ApiError::new(ErrorCode::ActionStopped, "stopped"))
        }),
    );
    wait_status(&jobs, &a, JobStatus::Running).await;
    // The only slot is taken, so this one stays pending.
    let b = id();
    let jb = jobs.register(&b, "queued").unwrap();
    jobs.start(jb, Box::new(|_| Ok(None)));
    assert!(matches!(jobs.delete(&a), Err(JobsError::NotDone(_))));
    jobs.abort(&b).unwrap();
    assert_eq!(jobs.get(&b).unwrap().status(), JobStatus::Aborted);
    jobs.abort(&a).unwrap();
    let info = wait_status(&jobs, &a, JobStatus::Aborted).await;
    assert_eq!(info.error.unwrap().code, 443);
    assert!(jobs.wait_idle(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_fenced_job_fails_with_the_fence_reason_not_as_aborted() {
    let jobs = Jobs::new(1, None);
    let a = id();
    let job = jobs.register(&a, "copy").unwrap();
    let j = job.clone();
    jobs.start(
        job,
        Box::new(|j| {
            while !j.is_aborting() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(ApiError::new(ErrorCode::ActionStopped, "data path aborted"))
        }),
    );
    wait_status(&jobs, &a, JobStatus::Running).await;
    j.fence(ApiError::new(ErrorCode::AcquireLockFailure, "lease lost"));
    // A later abort by the user does not turn it into an abort either.
    let _ = jobs.abort(&a);
    j.fence(ApiError::new(
        ErrorCode::AcquireLockFailure,
        "second reason",
    ));
    let info = wait_status(&jobs, &a, JobStatus::Failed).await;
    let e = info.error.unwrap();
    assert_eq!((e.code, e.message.as_str()), (651, "lease lost"));
}

#[tokio::test]
async fn aborting_is_reported_and_ends_are_announced() {
    let jobs = Jobs::new(1, None);
    let mut events = jobs.events();
    let a = id();
    let job = jobs.register(&a, "slow").unwrap();
    jobs.start(
        job,
        Box::new(|j| {
            while !j.is_aborting() {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
            Err(ApiError::new(ErrorCode::ActionStopped, "stopped"))
        }),
    );
    wait_status(&jobs, &a, JobStatus::Running).await;
    // Pending behind it, then aborted: announced at once.
    let b = id();
    let jb = jobs.register(&b, "queued").unwrap();
    jobs.start(jb, Box::new(|_| Ok(None)));
    jobs.abort(&b).unwrap();
    let ev = events.recv().await.unwrap();
    assert_eq!((ev.id.clone(), ev.status), (b.clone(), JobStatus::Aborted));
    // Running, then aborted: "aborting" (VDSM's word) until it ends.
    jobs.abort(&a).unwrap();
    let info = jobs.get(&a).unwrap().info();
    assert_eq!(info.status, JobStatus::Aborting);
    assert!(info.aborting && info.status.is_active());
    let ev = events.recv().await.unwrap();
    assert_eq!((ev.id.clone(), ev.status), (a.clone(), JobStatus::Aborted));
    assert_eq!(ev.error.unwrap().code, 443);
    // A job recorded as done: reported, never announced.
    let c = id();
    jobs.record_done(&c, "create_volume").unwrap();
    assert_eq!(jobs.get(&c).unwrap().status(), JobStatus::Done);
    assert!(events.try_recv().is_err());
    // An empty type filters nothing.
    let all = jobs.infos(&JobFilter {
        job_type: Some(String::new()),
        job_ids: None,
    });
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn autodelete_and_filters() {
    let jobs = Jobs::new(2, Some(Duration::from_millis(50)));
    let a = id();
    let job = jobs.register(&a, "x").unwrap();
    jobs.start(job, Box::new(|_| Ok(None)));
    wait_status(&jobs, &a, JobStatus::Done).await;
    let f = JobFilter {
        job_type: Some("storage".into()),
        job_ids: Some(vec![a.clone()]),
    };
    assert_eq!(jobs.infos(&f).len(), 1);
    let f = JobFilter {
        job_type: Some("v2v".into()),
        job_ids: None,
    };
    assert!(jobs.infos(&f).is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(jobs.get(&a).is_err());
}
