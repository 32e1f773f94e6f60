//! The JSON-RPC API: one table of methods from which the jsonrpsee server and client traits,
//! the per-method parameter structs (for JSON Schema) and the method catalogue are all
//! generated, so the three can never disagree.

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::proc_macros::rpc;
use jsonrpsee::types::ErrorObjectOwned;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::*;

/// Result type of every server method.
pub type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// One method of the catalogue, for documentation and schema generation.
pub struct MethodDoc {
    /// Wire name, e.g. `SDM.copy_data`.
    pub name: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// JSON Schema of its named parameters.
    pub params: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// JSON Schema of its result.
    pub result: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Other names a parameter is accepted under (VDSM's), as `(alias, parameter)`, per
    /// parameter.
    pub aliases: &'static [&'static [(&'static str, &'static str)]],
    /// Parameters the agent accepts that sdm's typed client ([`SdmApiClient`]) does not send.
    pub server_only: &'static [&'static str],
}

/// The wire name of a parameter: its rename if it has one, else its Rust name.
macro_rules! wire_name {
    ($arg:ident) => {
        stringify!($arg)
    };
    ($arg:ident, $rename:literal) => {
        $rename
    };
}

/// `(alias, wire name)` for each alias of one parameter.
macro_rules! alias_pairs {
    ([$($alias:literal),*] $arg:ident) => {
        &[$(($alias, stringify!($arg))),*]
    };
    ([$($alias:literal),*] $arg:ident, $rename:literal) => {
        &[$(($alias, $rename)),*]
    };
}

/// The result type sdm's typed client decodes: the method's own, unless the table names a
/// narrower one (`-> Wire | client Narrow`).
macro_rules! client_ret {
    ($ret:ty) => {
        $ret
    };
    ($ret:ty, $client:ty) => {
        $client
    };
}

/// The method table. Per parameter: `name [as "wire name"] [| "alias"]*: Type` (an alias is
/// VDSM's name of the same parameter; when a request carries both, sdm's name wins). After the
/// parameters, `+ server (...)` lists optional parameters the agent accepts (VDSM's) that the
/// typed client does not send, so that adding them never changes the client's signature.
macro_rules! sdm_api {
    ($(
        $(#[doc = $doc:literal])*
        $wire:literal => fn $fn_name:ident / $params:ident (
            $( $(#[doc = $adoc:literal])* $arg:ident $(as $rename:literal)? $(| $alias:literal)* : $ty:ty ),* $(,)?
        ) $( + server (
            $( $(#[doc = $sdoc:literal])* $sarg:ident $(as $srename:literal)? $(| $salias:literal)* : $sty:ty ),* $(,)?
        ) )? -> $ret:ty $(| client $cret:ty)?;
    )*) => {
        /// The sdm agent API as the agent serves it (`SdmApiServer`). Parameters are taken by
        /// name. sdm's clients use [`SdmApiClient`], generated from the same table.
        #[rpc(server)]
        pub trait SdmApi {
            $(
                $(#[doc = $doc])*
                #[method(name = $wire, param_kind = map)]
                async fn $fn_name(
                    &self,
                    $( $(#[argument(rename = $rename)])? $arg: $ty, )*
                    $($( $(#[argument(rename = $srename)])? $sarg: $sty, )*)?
                ) -> RpcResult<$ret>;
            )*

            /// Streams a job's info on every change; the last item is terminal (done, failed or
            /// aborted). WebSocket only.
            #[subscription(name = "Job.subscribe" => "Job.event", unsubscribe = "Job.unsubscribe", item = JobInfo, param_kind = map)]
            async fn subscribe_job(&self, job_id: Uuid) -> SubscriptionResult;
        }

        /// The client side of the same table (its own module so that both traits are called
        /// `SdmApi`, which names the generated `SdmApiServer` and `SdmApiClient`).
        mod client_side {
            use super::*;

            /// The sdm agent API as sdm's clients call it: every method of the table with the
            /// parameters sdm sends (named), decoding the result sdm uses. Implemented for every
            /// jsonrpsee client (HTTP and WebSocket).
            #[rpc(client)]
            pub trait SdmApi {
                $(
                    $(#[doc = $doc])*
                    #[method(name = $wire, param_kind = map)]
                    async fn $fn_name(&self, $( $(#[argument(rename = $rename)])? $arg: $ty ),*)
                        -> RpcResult<client_ret!($ret $(, $cret)?)>;
                )*

                /// Streams a job's info on every change; the last item is terminal (done, failed
                /// or aborted). WebSocket only.
                #[subscription(name = "Job.subscribe" => "Job.event", unsubscribe = "Job.unsubscribe", item = JobInfo, param_kind = map)]
                async fn subscribe_job(&self, job_id: Uuid) -> SubscriptionResult;
            }
        }
        pub use client_side::SdmApiClient;

        $(
            #[doc = concat!("Named parameters of `", $wire, "`.")]
            #[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
            pub struct $params {
                $(
                    $(#[doc = $adoc])*
                    $( #[serde(rename = $rename)] )?
                    $( #[serde(alias = $alias)] )*
                    pub $arg: $ty,
                )*
                $($(
                    $(#[doc = $sdoc])*
                    $( #[serde(rename = $srename)] )?
                    $( #[serde(alias = $salias)] )*
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    pub $sarg: $sty,
                )*)?
            }
        )*

        /// Every method, in table order.
        pub fn methods() -> Vec<MethodDoc> {
            vec![
                $(MethodDoc {
                    name: $wire,
                    doc: concat!($($doc, "\n"),*),
                    params: |g| g.subschema_for::<$params>(),
                    result: |g| g.subschema_for::<$ret>(),
                    aliases: &[
                        $( alias_pairs!([$($alias),*] $arg $(, $rename)?), )*
                        $($( alias_pairs!([$($salias),*] $sarg $(, $srename)?), )*)?
                    ],
                    server_only: &[$($( wire_name!($sarg $(, $srename)?), )*)?],
                },)*
            ]
        }

        /// The aliases of `method`'s parameters, as `(alias, parameter)`: VDSM's names, which
        /// the agent renames before decoding (sdm's name wins when a request carries both).
        pub fn param_aliases(method: &str) -> impl Iterator<Item = (&'static str, &'static str)> {
            let per_param: &'static [&'static [(&'static str, &'static str)]] = match method {
                $($wire => &[
                    $( alias_pairs!([$($alias),*] $arg $(, $rename)?), )*
                    $($( alias_pairs!([$($salias),*] $sarg $(, $srename)?), )*)?
                ],)*
                _ => &[],
            };
            per_param.iter().flat_map(|p| p.iter().copied())
        }
    };
}

/// Parameters of `Job.subscribe`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SubscribeJobParams {
    /// The job to follow.
    pub job_id: Uuid,
}

sdm_api! {
    /// Agent version, host id, data-path backend, lease backends and attached domains.
    "Host.getCapabilities" => fn get_capabilities / GetCapabilitiesParams() -> Capabilities;
    /// Load figures a scheduler uses to pick a host.
    "Host.getStats" => fn get_stats / GetStatsParams() -> HostStats;
    /// Jobs by type and id (filters are AND-ed; no filter, an empty `job_type` or an empty
    /// `job_ids` = all jobs; an id that is not a canonical UUID matches no job).
    "Host.getJobs" => fn get_jobs / GetJobsParams(
        /// Only jobs of this type ("storage"; "" = any).
        job_type: Option<String>,
        /// Only these jobs.
        job_ids: Option<Vec<Uuid>>,
    ) -> JobMap;
    /// Aborts a pending or running job (NoSuchJob 66, JobNotActive 84).
    "Job.abort" => fn abort_job / AbortJobParams(job_id: Uuid) -> bool;
    /// Deletes a finished job (NoSuchJob 66, JobNotDone 68).
    "Job.delete" => fn delete_job / DeleteJobParams(job_id: Uuid) -> bool;

    /// Formats a new domain and attaches it: a file domain at `path/<sd_id>`, or a block domain
    /// (`kind` "block") as an LVM volume group named `sd_id` on `devices`. VDSM's form is
    /// accepted for local directories: `storagedomainID`, `domainType` 4 (LOCALFS) or 6
    /// (POSIXFS), `typeArgs` (the directory), `name`, `domainClass` 1 (Data), `version` 5,
    /// `blockSize` 512.
    "StorageDomain.create" => fn create_domain / CreateDomainParams(
        sd_id | "storagedomainID": Uuid,
        /// Directory that will hold the domain directory (file domains; VDSM: `typeArgs`).
        path | "typeArgs": Option<String>,
        /// The domain's name (VDSM: `name`).
        description | "name": Option<Description>,
        /// Lease backend the domain is formatted for (default: the agent's `leases.default_backend`).
        lease_backend: Option<LeaseBackendName>,
        /// Allow `local` on a network file system (StorageDomainTypeError 372 without it).
        force: Option<Flag>,
        /// "file" (default) or "block".
        kind: Option<DomainKindName>,
        /// Block devices that become the domain's PVs (block domains; each must be allowed by the
        /// agent's `[block] devices`).
        devices: Option<Vec<String>>,
    ) + server (
        /// VDSM's storage type code: 4 (LOCALFS) or 6 (POSIXFS) for a file domain, 3 (ISCSI) with
        /// `kind` "block"; others are UnsupportedOperation.
        domain_type as "domainType": Option<u32>,
        /// VDSM's domain class code: 1 (Data) only.
        domain_class as "domainClass": Option<u32>,
        /// Domain format version: 5 only.
        version: Option<u32>,
        /// Sector size: 512 only.
        block_size as "blockSize": Option<u64>,
        /// Host slots VDSM reserves; sdm's lockspace always has 2000, which serves any value.
        max_hosts as "maxHosts": Option<u64>,
    ) -> bool;
    /// Attaches an existing domain, with the lease backend its metadata records: the file
    /// domain whose directory (`.../<sd_id>`) is `path`, or (`kind` "block") the block domain
    /// `sd_id`, found among the agent's `[block] devices`.
    "StorageDomain.attach" => fn attach_domain / AttachDomainParams(
        /// The domain directory; for a block domain `/dev/<sd_id>`, as `StorageDomain.list`
        /// shows it (`sd_id`, when given, wins).
        path: String,
        /// Expected lease backend: refused (StorageDomainTypeError 372, nothing changed) when
        /// the domain was formatted for the other one.
        lease_backend: Option<LeaseBackendName>,
        /// Allow a `local` domain on a network file system (StorageDomainTypeError 372 without it).
        force: Option<Flag>,
        /// The domain (block domains).
        sd_id: Option<Uuid>,
        /// "file" (default) or "block".
        kind: Option<DomainKindName>,
    ) -> AttachResult;
    /// Detaches a domain (refused while jobs use it).
    "StorageDomain.detach" => fn detach_domain / DetachDomainParams(sd_id | "storagedomainID": Uuid) -> bool;
    /// Attached domains.
    "StorageDomain.list" => fn list_domains / ListDomainsParams() -> Vec<DomainInfo>;
    /// A domain as VDSM describes it (type, class, name, role, version, block size, ...).
    "StorageDomain.getInfo" => fn get_domain_info / GetDomainInfoParams(sd_id | "storagedomainID": Uuid) -> StorageDomainInfo;
    /// Images of a domain (without `_remove_me_` leftovers).
    "StorageDomain.getImages" => fn get_images / GetImagesParams(sd_id | "storagedomainID": Uuid) -> Vec<Uuid>;
    /// Findings about leftovers and inconsistencies in a domain.
    "StorageDomain.check" => fn check_domain / CheckDomainParams(sd_id: Uuid) -> Vec<Fix>;
    /// Runs one finding's fix as a job.
    "StorageDomain.fix" => fn fix_domain / FixDomainParams(
        sd_id: Uuid,
        /// A Fix exactly as `StorageDomain.check` returned it.
        fix: Fix,
        job_id: Option<Uuid>,
    ) -> TaskRef;

    /// Volumes of an image (`[]` for an image the domain does not have).
    "Image.getVolumes" => fn get_volumes / GetVolumesParams(
        sd_id | "storagedomainID": Uuid,
        img_id | "imageID": Uuid,
    ) -> Vec<Uuid>;
    /// sdm extension: each volume's legality and generation and, for a volume a copy left a
    /// checkpoint on, that copy's host, job, stage, percent durable, last error and age, read
    /// from storage alone (any host can answer for a host that is gone).
    "Image.getStatus" => fn get_image_status / GetImageStatusParams(sd_id: Uuid, img_id: Uuid) -> ImageStatus;
    /// Creates a volume (COW with a parent uses the parent as backing file), at once; answers
    /// the id of a job registered as done (description `create_volume`), which `Task.*` and
    /// `Host.getJobs` report, as VDSM answers the task that creates it.
    "Volume.create" => fn create_volume / CreateVolumeParams(
        sd_id | "storagedomainID": Uuid,
        img_id | "imageID": Uuid,
        vol_id | "volumeID": Uuid,
        /// Virtual size in bytes (VDSM: `size`, a decimal string).
        capacity | "size": Capacity,
        /// RAW or COW (VDSM: `volFormat`, 5 or 4).
        format | "volFormat": VolumeFormat,
        /// SPARSE or PREALLOCATED (VDSM: 2 or 1).
        preallocate: Preallocation,
        /// Parent volume in the same image; absent or the BLANK UUID = none (VDSM: `srcVolUUID`).
        parent_vol_id | "srcVolUUID": Option<Uuid>,
        /// VDSM: `desc`.
        description | "desc": Option<Description>,
    ) + server (
        /// Chain order (VDSM's SEQ: a newer volume has a higher number; default 0, at most
        /// 2^32-1). Kept as given: no later write, copy or move changes it.
        sequence: Option<Sequence>,
        /// The parent's image (VDSM: `srcImgUUID`): absent, BLANK or the volume's own image; a
        /// parent in another image (a template) is UnsupportedOperation.
        parent_img_id | "srcImgUUID": Option<Uuid>,
        /// Disk content type (VDSM: `diskType`; default DATA).
        disk_type | "diskType": Option<DiskType>,
        /// Initial allocation of a COW volume (VDSM: `initialSize`); file volumes grow on write
        /// and ignore it.
        initial_size | "initialSize": Option<Size>,
        /// False creates the volume ILLEGAL (default true).
        legal: Option<Flag>,
        /// True (copy the parent's bitmaps) is UnsupportedOperation (VDSM: `addBitmaps`).
        add_bitmaps | "addBitmaps": Option<Flag>,
        /// A bitmap to add is UnsupportedOperation.
        bitmap: Option<Uuid>,
    ) -> Uuid;
    /// Volume metadata, sizes and lease state; status INVALID (with sizes "0") when the
    /// volume's metadata cannot be read.
    "Volume.getInfo" => fn get_volume_info / GetVolumeInfoParams(
        sd_id | "storagedomainID": Uuid,
        img_id | "imageID": Uuid,
        vol_id | "volumeID": Uuid,
    ) -> VolumeInfoReply | client VolumeInfo;
    /// SHA-256 of a volume's raw bytes, as a job; the finished job carries `result`.
    "Volume.checksum" => fn checksum_volume / ChecksumVolumeParams(
        job_id: Uuid,
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
        algorithm: Option<ChecksumAlgorithm>,
    ) -> bool;

    /// Copies a volume's data into another volume, as a job, converting to the destination's
    /// format (RAW/COW); a destination with a parent gets only what the source volume itself
    /// holds, one without a parent the source's whole chain (collapse). Capacity may grow.
    "SDM.copy_data" => fn copy_data / CopyDataParams(
        job_id: Uuid,
        source: Endpoint,
        destination: Endpoint,
        /// Copy persistent bitmaps too (COW to COW only; else UnsupportedOperation).
        copy_bitmaps: Option<Flag>,
        /// Read the destination back and compare.
        verify: Option<Flag>,
        /// Bytes per second.
        bandwidth_limit: Option<Size>,
        /// sdm extension: continue from the checkpoint an earlier attempt left on the
        /// ILLEGAL destination when it still matches the source (default true; plain copies
        /// only, never conversions). False always copies everything.
        resume: Option<Flag>,
    ) -> bool;
    /// Changes legality, description, generation or type under the volume lease, as a job.
    "SDM.update_volume" => fn update_volume / UpdateVolumeParams(
        job_id: Uuid,
        vol_info: VolumeRef,
        vol_attr: VolumeAttributes,
    ) -> bool;
    /// Cold merge, as a job: commits `top_id` into its parent `base_id` (growing the base to
    /// the top's capacity); the base is ILLEGAL while written, then LEGAL with generation+1.
    /// The chain is not changed (removing the top is the engine's next step).
    "SDM.merge" => fn merge / MergeParams(
        job_id: Uuid,
        subchain_info: SubchainInfo,
        /// Also add and merge the top's valid persistent bitmaps into a COW base.
        merge_bitmaps: Option<Flag>,
    ) -> bool;
    /// Upgrades a COW volume's qcow2 compat level (0.10 to 1.1), as a job; generation+1.
    "SDM.amend_volume" => fn amend_volume / AmendVolumeParams(
        job_id: Uuid,
        vol_info: VolumeRef,
        qcow2_attr: Qcow2Attributes,
    ) -> bool;
    /// Gives back every all-zero range of a volume (holes in RAW files, zero clusters in COW
    /// volumes) without changing what it reads, as a job; generation+1. Not a guest file
    /// system trim (virt-sparsify): see docs/qcow2.md.
    "SDM.sparsify_volume" => fn sparsify_volume / SparsifyVolumeParams(
        job_id: Uuid,
        vol_info: VolumeRef,
    ) -> bool;
    /// Adds an enabled persistent bitmap to a COW volume, as a job; generation+1.
    "SDM.add_bitmap" => fn add_bitmap / AddBitmapParams(
        job_id: Uuid,
        vol_info: VolumeRef,
        bitmap: BitmapName,
    ) -> bool;
    /// Removes a persistent bitmap from a COW volume (a missing one is not an error), as a
    /// job; generation+1.
    "SDM.remove_bitmap" => fn remove_bitmap / RemoveBitmapParams(
        job_id: Uuid,
        vol_info: VolumeRef,
        bitmap: BitmapName,
    ) -> bool;
    /// Removes every persistent bitmap of a COW volume, as a job; generation+1.
    "SDM.clear_bitmaps" => fn clear_bitmaps / ClearBitmapsParams(
        job_id: Uuid,
        vol_info: VolumeRef,
    ) -> bool;

    /// Copies every volume of an image to another domain (operation 1/"copy" only); answers
    /// the job's id.
    "Image.move" => fn move_image / MoveImageParams(
        image_id as "imageID": Uuid,
        src_sd_id as "storagedomainID": Uuid,
        dst_sd_id as "dstSdUUID": Uuid,
        operation: ImageOperation,
        post_zero as "postZero": Option<Flag>,
        force: Option<Flag>,
        discard: Option<Flag>,
        job_id: Option<Uuid>,
    ) -> Uuid;
    /// Deletes an image: renamed `_remove_me_` at once, then (optionally wiped and) removed by
    /// a job; answers the job's id.
    "Image.delete" => fn delete_image / DeleteImageParams(
        image_id as "imageID": Uuid,
        sd_id as "storagedomainID": Uuid,
        post_zero as "postZero": Option<Flag>,
        force: Option<Flag>,
        discard: Option<Flag>,
        job_id: Option<Uuid>,
    ) -> Uuid;

    /// A job seen as VDSM's SPM task (the id `Image.move`, `Image.delete` or `Volume.create`
    /// answered): state, result, code and message (UnknownTask 401).
    "Task.getStatus" => fn get_task_status / TaskStatusParams(task_id as "taskID": Uuid) -> TaskStatus;
    /// Every job answered as a task id (`Image.move`, `Image.delete`, `Volume.create`) that is
    /// still known, with its `Task.getStatus` status; other jobs are in `Host.getJobs` only.
    "Host.getAllTasksStatuses" => fn get_all_tasks_statuses / AllTasksStatusesParams() -> TaskStatusMap;
    /// A job's id and the VDSM verb it carries out (UnknownTask 401).
    "Task.getInfo" => fn get_task_info / TaskInfoParams(task_id as "taskID": Uuid) -> TaskInfo;
    /// Forgets a finished job (UnknownTask 401, TaskStateError 410 while it runs).
    "Task.clear" => fn clear_task / ClearTaskParams(task_id as "taskID": Uuid) -> bool;
    /// Aborts a pending or running job; a finished one is left alone (UnknownTask 401).
    "Task.stop" => fn stop_task / StopTaskParams(task_id as "taskID": Uuid) -> bool;
}
