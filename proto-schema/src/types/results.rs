//! Results: jobs, host, domain and volume information.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// The result a finished job may carry (`Volume.checksum`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    /// Lowercase hex digest.
    pub checksum: String,
    /// "sha256".
    pub algorithm: ChecksumAlgorithm,
}

/// A host job as `Host.getJobs` and `Job.subscribe` report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobInfo {
    /// The job id the caller chose.
    pub id: Uuid,
    /// State.
    pub status: JobStatus,
    /// What the job does (its verb, e.g. "copy_data").
    pub description: String,
    /// Always "storage".
    pub job_type: String,
    /// Percent done, 0–100, a float; omitted until the job has started its work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Why the job failed or was aborted; omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::JobError>,
    /// Logical bytes processed so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Logical bytes the job will process.
    #[serde(default)]
    pub bytes_total: u64,
    /// Current rate, bytes per second.
    #[serde(default)]
    pub rate_bps: u64,
    /// Estimated seconds left; omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// True once `Job.abort` was accepted and the job is winding down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborting: bool,
    /// Result of a finished job that has one (`Volume.checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// sdm extension: where each volume copy of the job started, once it has decided (kept
    /// from an earlier attempt's checkpoint, or a full copy and why). Omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyStart>,
}

/// Where one volume copy of a job started (`JobInfo::copies`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CopyStart {
    /// The destination volume.
    pub vol_id: Uuid,
    /// k of the job's k/n volume copies (1 for `SDM.copy_data`).
    pub stage: u32,
    /// n of the job's k/n volume copies.
    pub stages: u32,
    /// Bytes of the destination kept from an earlier attempt; 0 for a full copy.
    pub resumed_from: u64,
    /// Bytes the copy covers in all.
    pub bytes_total: u64,
    /// Why the copy starts from 0 (no checkpoint, or why it was not trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_copy_reason: Option<String>,
}

/// `Host.getCapabilities` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    /// Agent version.
    pub version: String,
    /// This host's id in lockspaces (1–2000).
    pub host_id: u64,
    /// True when the data path runs on io_uring (false: the synchronous fallback).
    pub io_uring: bool,
    /// Why io_uring is not used, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_fallback_reason: Option<String>,
    /// Lease backends this agent can use ("local", "sanlock").
    pub lease_backends: Vec<String>,
    /// How this host makes block-domain LVs usable: "device-mapper" or "loop-mapped" (an LV's
    /// extents as a loop device over its PV, where the host has no device-mapper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_activation: Option<String>,
    /// Attached storage domains.
    pub domains: Vec<Uuid>,
    /// Logical CPUs (VDSM's field, a decimal string).
    #[serde(
        rename = "cpuThreads",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_threads: Option<String>,
    /// Online logical CPUs, e.g. "0,1,2,3" (VDSM's field).
    #[serde(
        rename = "onlineCpus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub online_cpus: Option<String>,
    /// Memory installed, MiB (VDSM's field, a decimal string).
    #[serde(rename = "memSize", default, skip_serializing_if = "Option::is_none")]
    pub mem_size: Option<String>,
    /// The running kernel's command line (VDSM's field).
    #[serde(
        rename = "kernelArgs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kernel_args: Option<String>,
    /// Storage domain format versions this agent serves (VDSM's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_versions: Option<Vec<u32>>,
}

/// `Host.getStats` result: what a scheduler needs to pick a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostStats {
    /// Jobs running now.
    pub jobs_running: u64,
    /// Jobs registered and waiting to run.
    pub jobs_pending: u64,
    /// Data-path read rate over the last seconds, bytes per second.
    pub read_bps: u64,
    /// Data-path write rate over the last seconds, bytes per second.
    pub write_bps: u64,
    /// Jobs the agent runs at once before queueing.
    pub max_running_jobs: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Resident memory of the agent, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors of the agent.
    pub open_fds: u64,
    /// Load average over one minute (VDSM's field, a decimal string).
    #[serde(rename = "cpuLoad", default, skip_serializing_if = "Option::is_none")]
    pub cpu_load: Option<String>,
    /// Memory available, MiB (VDSM's field).
    #[serde(rename = "memFree", default, skip_serializing_if = "Option::is_none")]
    pub mem_free: Option<u64>,
    /// Memory in use, percent (VDSM's field, a decimal string).
    #[serde(rename = "memUsed", default, skip_serializing_if = "Option::is_none")]
    pub mem_used: Option<String>,
    /// Swap space, MiB (VDSM's field).
    #[serde(rename = "swapTotal", default, skip_serializing_if = "Option::is_none")]
    pub swap_total: Option<u64>,
    /// Free swap space, MiB (VDSM's field).
    #[serde(rename = "swapFree", default, skip_serializing_if = "Option::is_none")]
    pub swap_free: Option<u64>,
    /// Seconds since the agent started (VDSM's field, a decimal string).
    #[serde(
        rename = "elapsedTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub elapsed_time: Option<String>,
    /// When the host booted, seconds since the epoch (VDSM's field, a decimal string).
    #[serde(rename = "bootTime", default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<String>,
}

/// `StorageDomain.list` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DomainInfo {
    /// Domain id.
    pub sd_id: Uuid,
    /// The domain directory, `.../<sd_id>` (block: `/dev/<sd_id>`, its VG).
    pub path: String,
    /// "file" or "block".
    pub kind: String,
    /// Domain description.
    pub description: String,
    /// Size of the file system holding the domain (block: of the VG).
    pub capacity: Size,
    /// Free space on it.
    pub free: Size,
    /// Lease backend used for its volumes ("local" or "sanlock").
    pub lease_backend: String,
    /// Domain format version (5).
    pub version: u32,
}

/// `StorageDomain.attach` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttachResult {
    /// The attached domain.
    pub sd_id: Uuid,
}

/// `StorageDomain.fix` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRef {
    /// The job that carries the work.
    pub uuid: Uuid,
}

/// Lease state of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseInfo {
    /// The lease file.
    pub path: String,
    /// Offset of the lease in it.
    pub offset: u64,
    /// Host ids holding it; empty when free.
    pub owners: Vec<u64>,
    /// Lease version (sanlock lver); null when not known.
    pub version: Option<u64>,
}

/// `Volume.getInfo` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeInfo {
    /// Volume id.
    pub uuid: Uuid,
    /// Image id.
    pub image: Uuid,
    /// Domain id.
    pub domain: Uuid,
    /// RAW or COW.
    pub format: VolumeFormat,
    /// SPARSE or PREALLOCATED.
    #[serde(rename = "type")]
    pub allocation: Preallocation,
    /// LEAF, INTERNAL or SHARED.
    pub voltype: VolumeRole,
    /// Virtual size in bytes.
    pub capacity: Size,
    /// File size in bytes.
    pub apparentsize: Size,
    /// Allocated bytes.
    pub truesize: Size,
    /// Parent volume, or the BLANK UUID.
    pub parent: Uuid,
    /// Description.
    pub description: String,
    /// Disk type (DATA, ...).
    pub disktype: String,
    /// Creation time, seconds since the epoch (a decimal string, as VDSM sends it).
    pub ctime: Timestamp,
    /// Always "0" (VDSM still sends this deprecated field).
    #[serde(default)]
    pub mtime: Timestamp,
    /// Always "" (VDSM still sends this deprecated field).
    #[serde(default)]
    pub pool: String,
    /// Always empty (VDSM never fills it).
    #[serde(default)]
    pub children: Vec<Uuid>,
    /// LEGAL, ILLEGAL or FAKE.
    pub legality: Legality,
    /// Generation 0–999.
    pub generation: u16,
    /// Chain order as given at creation (VDSM's SEQ); no write changes it.
    pub sequence: u64,
    /// OK, or ILLEGAL when the legality is ILLEGAL, or INVALID.
    pub status: String,
    /// Volume lease.
    pub lease: LeaseInfo,
}

/// What `Volume.getInfo` sends for a volume whose metadata cannot be read, as VDSM does:
/// status INVALID, sizes "0", no other field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvalidVolumeInfo {
    /// "0".
    pub apparentsize: Size,
    /// "0".
    pub truesize: Size,
    /// "INVALID".
    pub status: String,
    /// Always empty.
    pub children: Vec<Uuid>,
}

impl InvalidVolumeInfo {
    /// The answer for an unreadable volume.
    pub fn new() -> InvalidVolumeInfo {
        InvalidVolumeInfo {
            apparentsize: Size(0),
            truesize: Size(0),
            status: "INVALID".into(),
            children: Vec::new(),
        }
    }
}

impl Default for InvalidVolumeInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// `Volume.getInfo` result on the wire: the volume's info, or VDSM's INVALID answer when its
/// metadata cannot be read. sdm's typed client decodes only the first (the second is then a
/// decoding error).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum VolumeInfoReply {
    /// The volume's info.
    Info(Box<VolumeInfo>),
    /// The metadata cannot be read.
    Invalid(InvalidVolumeInfo),
}

/// `StorageDomain.getInfo` result: the domain as VDSM describes it, from its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StorageDomainInfo {
    /// Domain id.
    pub uuid: Uuid,
    /// Storage type (`LOCALFS`, `POSIXFS`, `NFS`, ..., or `FCP`/`ISCSI` for block domains).
    #[serde(rename = "type")]
    pub storage_type: String,
    /// `Data`.
    pub class: String,
    /// The domain's name (its description).
    pub name: String,
    /// `Regular` or `Master`.
    pub role: String,
    /// Storage pools the metadata names (sdm has none of its own: usually empty).
    pub pool: Vec<String>,
    /// Format version, a decimal string ("5").
    pub version: String,
    /// Sector size, bytes.
    pub block_size: u64,
    /// Lease alignment, bytes.
    pub alignment: u64,
    /// File domains: the directory that holds the domain directory.
    #[serde(
        rename = "remotePath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub remote_path: Option<String>,
    /// Block domains: the volume group's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vguuid: Option<String>,
    /// Block domains: the device holding the metadata volume.
    #[serde(
        rename = "metadataDevice",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata_device: Option<String>,
    /// Block domains: the device holding the volume group's metadata.
    #[serde(
        rename = "vgMetadataDevice",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vg_metadata_device: Option<String>,
    /// sdm's kind of domain ("file" or "block").
    #[serde(default)]
    pub kind: String,
}

/// `Task.getStatus` result: a job seen as one of VDSM's SPM tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStatus {
    /// The job's id.
    #[serde(rename = "taskID")]
    pub task_id: Uuid,
    /// running (also pending), aborting or finished.
    #[serde(rename = "taskState")]
    pub task_state: TaskState,
    /// "" until finished; success, or cleanSuccess for a failed or stopped job.
    #[serde(rename = "taskResult")]
    pub task_result: TaskResult,
    /// 0, or the job's error code.
    pub code: i32,
    /// What the task is doing, or the job's error message.
    pub message: String,
}

/// `Task.getInfo` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskInfo {
    /// The job's id.
    pub id: Uuid,
    /// The VDSM verb the job carries out (`moveImage`, `deleteImage`, `createVolume`), or the
    /// job's description.
    pub verb: String,
}

/// A `StorageDomain.check` finding; send it back unchanged to `StorageDomain.fix`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Fix {
    /// clean, mend or optimize.
    #[serde(rename = "type")]
    pub fix_type: FixType,
    /// What was found, for a person.
    pub description: String,
    /// Opaque data the agent needs to act; do not change it.
    pub data: serde_json::Value,
}

/// Result map of `Host.getJobs`.
pub type JobMap = BTreeMap<Uuid, JobInfo>;

/// Result map of `Host.getAllTasksStatuses`: the status of every job that was answered as a
/// task id, by that id.
pub type TaskStatusMap = BTreeMap<Uuid, TaskStatus>;

/// `Image.getStatus` result (sdm extension): what the image's domain alone says about it, so
/// any host can answer for a copy another host ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageStatus {
    /// Domain.
    pub sd_id: Uuid,
    /// Image.
    pub img_id: Uuid,
    /// Every volume of the image, by id.
    pub volumes: Vec<VolumeStatus>,
}

/// One volume in [`ImageStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeStatus {
    /// Volume id.
    pub vol_id: Uuid,
    /// LEGAL, ILLEGAL or FAKE.
    pub legality: Legality,
    /// Generation 0–999.
    pub generation: u16,
    /// The copy into this volume that left a checkpoint (an unfinished or failed copy);
    /// omitted when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyStatus>,
    /// Why a checkpoint found next to the volume cannot be read (torn, corrupt); omitted
    /// otherwise. A copy into the volume then starts from the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_error: Option<String>,
}

/// A copy as its last checkpoint describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CopyStatus {
    /// Host id of the agent that wrote the checkpoint.
    pub host_id: u64,
    /// The copy's job id.
    pub job_id: Uuid,
    /// k of `stage`/`stages` (the k-th volume copy of an `Image.move`; 1 of 1 for `SDM.copy_data`).
    pub stage: u32,
    /// Volume copies in the operation.
    pub stages: u32,
    /// Percent of the copy that is durable on the destination, 0–100.
    pub percent: u8,
    /// Bytes durable on the destination.
    pub bytes_durable: u64,
    /// Bytes the copy writes in all.
    pub bytes_total: u64,
    /// The source it copies from.
    pub source: Endpoint,
    /// The job's error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Seconds since the checkpoint was written.
    pub age_s: u64,
    /// Whether a copy into the destination as it is now would resume from it (the
    /// destination is ILLEGAL with the generation the copy started with); false for a
    /// leftover of a copy that finished or was fenced.
    pub resumable: bool,
}
