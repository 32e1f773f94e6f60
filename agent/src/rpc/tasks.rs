//! VDSM's `Task.*` verbs over sdm's jobs. VDSM answers `Image.move`, `Image.delete` and
//! `Volume.create` with the id of an SPM task, which an engine follows with `Task.getStatus`
//! and forgets with `Task.clear`; sdm answers a job id, so these verbs show a job the way VDSM
//! shows a task (its deprecated status form, which `Task.getStatus` sends): state `running`
//! (pending or running), `aborting`, or `finished` with result `success`, or `cleanSuccess`
//! for a failed or aborted job (whose volumes the job left consistent), code and message from
//! the job's error.

use sdm_proto::{
    ApiError, ErrorCode, JobInfo, JobStatus, TaskInfo, TaskResult, TaskState, TaskStatus,
    TaskStatusMap, Uuid,
};

use crate::error::AgentError;
use crate::jobs::{Jobs, JobsError};

fn unknown(id: &Uuid) -> AgentError {
    ApiError::new(ErrorCode::UnknownTask, format!("Task id unknown: {id}")).into()
}

fn known<T>(id: &Uuid, r: Result<T, JobsError>) -> Result<T, AgentError> {
    r.map_err(|e| match e {
        JobsError::NoSuchJob(_) => unknown(id),
        e => e.into(),
    })
}

/// The task status of a job.
pub fn status_of(info: &JobInfo) -> TaskStatus {
    let (task_state, task_result) = match info.status {
        JobStatus::Pending | JobStatus::Running => (TaskState::Running, TaskResult::None),
        JobStatus::Aborting => (TaskState::Aborting, TaskResult::None),
        JobStatus::Done => (TaskState::Finished, TaskResult::Success),
        JobStatus::Failed | JobStatus::Aborted => (TaskState::Finished, TaskResult::CleanSuccess),
    };
    let (code, message) = match (&info.error, info.status) {
        (Some(e), _) => (e.code, e.message.clone()),
        (None, JobStatus::Done) => (0, "1 jobs completed successfully".to_string()),
        (None, JobStatus::Pending) => (0, String::new()),
        (None, _) => (0, "running job 1 of 1".to_string()),
    };
    TaskStatus {
        task_id: info.id.clone(),
        task_state,
        task_result,
        code,
        message,
    }
}

/// The jobs VDSM would have run as SPM tasks, by description, with VDSM's verb name.
const TASK_VERBS: [(&str, &str); 3] = [
    ("move_image", "moveImage"),
    ("delete_image", "deleteImage"),
    ("create_volume", "createVolume"),
];

/// VDSM's name of the verb a job carries out.
fn verb_of(description: &str) -> String {
    TASK_VERBS
        .iter()
        .find(|(d, _)| *d == description)
        .map_or(description, |(_, v)| v)
        .to_string()
}

/// `Host.getAllTasksStatuses`: the jobs an engine knows as tasks. `SDM.*` jobs are VDSM's
/// host jobs, which its task manager never lists, so they stay out here too.
pub fn all_statuses(jobs: &Jobs) -> TaskStatusMap {
    jobs.infos(&Default::default())
        .into_values()
        .filter(|info| TASK_VERBS.iter().any(|(d, _)| *d == info.description))
        .map(|info| (info.id.clone(), status_of(&info)))
        .collect()
}

/// `Task.getStatus`.
pub fn get_status(jobs: &Jobs, id: &Uuid) -> Result<TaskStatus, AgentError> {
    Ok(status_of(&known(id, jobs.get(id))?.info()))
}

/// `Task.getInfo`.
pub fn get_info(jobs: &Jobs, id: &Uuid) -> Result<TaskInfo, AgentError> {
    let job = known(id, jobs.get(id))?;
    Ok(TaskInfo {
        id: id.clone(),
        verb: verb_of(job.description()),
    })
}

/// `Task.clear`: a finished job is forgotten; a running one is TaskStateError.
pub fn clear(jobs: &Jobs, id: &Uuid) -> Result<bool, AgentError> {
    match jobs.delete(id) {
        Ok(()) => Ok(true),
        Err(JobsError::NotDone(_)) => Err(ApiError::new(
            ErrorCode::TaskStateError,
            format!("can't clean task {id}: it has not finished"),
        )
        .into()),
        Err(e) => known(id, Err(e)),
    }
}

/// `Task.stop`: aborts an active job; a finished one is left as it is (as VDSM ignores it).
pub fn stop(jobs: &Jobs, id: &Uuid) -> Result<bool, AgentError> {
    match jobs.abort(id) {
        Ok(()) | Err(JobsError::NotActive(_)) => Ok(true),
        Err(e) => known(id, Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_seen_as_tasks() {
        let jobs = Jobs::new(1, None);
        let done = Uuid::new_v4();
        jobs.record_done(&done, "create_volume").unwrap();
        let s = get_status(&jobs, &done).unwrap();
        assert_eq!(
            (s.task_state, s.task_result, s.code),
            (TaskState::Finished, TaskResult::Success, 0)
        );
        assert_eq!(get_info(&jobs, &done).unwrap().verb, "createVolume");
        jobs.record_done(&Uuid::new_v4(), "copy_data").unwrap();
        let all = all_statuses(&jobs);
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            vec![&done],
            "only task-like jobs"
        );
        assert_eq!(all[&done].task_result, TaskResult::Success);
        let other = Uuid::new_v4();
        let e = ApiError::from(get_status(&jobs, &other).unwrap_err());
        assert_eq!(e.code, ErrorCode::UnknownTask);

        let pending = Uuid::new_v4();
        let job = jobs.register(&pending, "move_image").unwrap();
        let s = status_of(&job.info());
        assert_eq!(
            (s.task_state, s.task_result),
            (TaskState::Running, TaskResult::None)
        );
        let e = ApiError::from(clear(&jobs, &pending).unwrap_err());
        assert_eq!(e.code, ErrorCode::TaskStateError);
        assert!(stop(&jobs, &pending).unwrap());
        let s = get_status(&jobs, &pending).unwrap();
        assert_eq!(
            (s.task_state, s.task_result, s.code),
            (TaskState::Finished, TaskResult::CleanSuccess, 443)
        );
        assert!(
            stop(&jobs, &pending).unwrap(),
            "stopping a finished task is fine"
        );
        assert!(clear(&jobs, &pending).unwrap());
        assert_eq!(
            ApiError::from(clear(&jobs, &pending).unwrap_err()).code,
            ErrorCode::UnknownTask
        );
    }
}
