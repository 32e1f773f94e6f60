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
}

macro_rules! sdm_api {
    ($(
        $(#[doc = $doc:literal])*
        $wire:literal => fn $fn_name:ident / $params:ident (
            $( $(#[doc = $adoc:literal])* $arg:ident $(as $rename:literal)? : $ty:ty ),* $(,)?
        ) -> $ret:ty;
    )*) => {
        /// The sdm agent API. `SdmApiServer` is implemented by the agent; `SdmApiClient` is
        /// implemented for every jsonrpsee client (HTTP and WebSocket). Parameters are sent by
        /// name.
        #[rpc(server, client)]
        pub trait SdmApi {
            $(
                $(#[doc = $doc])*
                #[method(name = $wire, param_kind = map)]
                async fn $fn_name(&self, $( $(#[argument(rename = $rename)])? $arg: $ty ),*) -> RpcResult<$ret>;
            )*

            /// Streams a job's info on every change; the last item is terminal (done, failed or
            /// aborted). WebSocket only.
            #[subscription(name = "Job.subscribe" => "Job.event", unsubscribe = "Job.unsubscribe", item = JobInfo, param_kind = map)]
            async fn subscribe_job(&self, job_id: Uuid) -> SubscriptionResult;
        }

        $(
            #[doc = concat!("Named parameters of `", $wire, "`.")]
            #[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
            pub struct $params {
                $(
                    $(#[doc = $adoc])*
                    $( #[serde(rename = $rename)] )?
                    pub $arg: $ty,
                )*
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
                },)*
            ]
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
    /// Jobs by type and id (filters are AND-ed; no filter = all jobs).
    "Host.getJobs" => fn get_jobs / GetJobsParams(
        /// Only jobs of this type ("storage").
        job_type: Option<String>,
        /// Only these jobs.
        job_ids: Option<Vec<Uuid>>,
    ) -> JobMap;
    /// Aborts a pending or running job (NoSuchJob 66, JobNotActive 84).
    "Job.abort" => fn abort_job / AbortJobParams(job_id: Uuid) -> bool;
    /// Deletes a finished job (NoSuchJob 66, JobNotDone 68).
    "Job.delete" => fn delete_job / DeleteJobParams(job_id: Uuid) -> bool;

    /// Formats a new file domain at `path/<sd_id>` and attaches it.
    "StorageDomain.create" => fn create_domain / CreateDomainParams(
        sd_id: Uuid,
        /// Directory that will hold the domain directory.
        path: String,
        description: Option<Description>,
    ) -> bool;
    /// Attaches the existing domain whose directory (`.../<sd_id>`) is `path`.
    "StorageDomain.attach" => fn attach_domain / AttachDomainParams(
        /// The domain directory.
        path: String,
    ) -> AttachResult;
    /// Detaches a domain (refused while jobs use it).
    "StorageDomain.detach" => fn detach_domain / DetachDomainParams(sd_id: Uuid) -> bool;
    /// Attached domains.
    "StorageDomain.list" => fn list_domains / ListDomainsParams() -> Vec<DomainInfo>;
    /// Images of a domain (without `_remove_me_` leftovers).
    "StorageDomain.getImages" => fn get_images / GetImagesParams(sd_id: Uuid) -> Vec<Uuid>;
    /// Findings about leftovers and inconsistencies in a domain.
    "StorageDomain.check" => fn check_domain / CheckDomainParams(sd_id: Uuid) -> Vec<Fix>;
    /// Runs one finding's fix as a job.
    "StorageDomain.fix" => fn fix_domain / FixDomainParams(
        sd_id: Uuid,
        /// A Fix exactly as `StorageDomain.check` returned it.
        fix: Fix,
        job_id: Option<Uuid>,
    ) -> TaskRef;

    /// Volumes of an image.
    "Image.getVolumes" => fn get_volumes / GetVolumesParams(sd_id: Uuid, img_id: Uuid) -> Vec<Uuid>;
    /// sdm extension: each volume's legality and generation and, for a volume a copy left a
    /// checkpoint on, that copy's host, job, stage, percent durable, last error and age, read
    /// from storage alone (any host can answer for a host that is gone).
    "Image.getStatus" => fn get_image_status / GetImageStatusParams(sd_id: Uuid, img_id: Uuid) -> ImageStatus;
    /// Creates a volume (COW with a parent uses the parent as backing file).
    "Volume.create" => fn create_volume / CreateVolumeParams(
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
        capacity: Capacity,
        format: VolumeFormat,
        preallocate: Preallocation,
        parent_vol_id: Option<Uuid>,
        description: Option<Description>,
        /// Chain order (VDSM's SEQ: a newer volume has a higher number; default 0). Kept as
        /// given: no later write, copy or move changes it.
        sequence: Option<Sequence>,
    ) -> bool;
    /// Volume metadata, sizes and lease state.
    "Volume.getInfo" => fn get_volume_info / GetVolumeInfoParams(sd_id: Uuid, img_id: Uuid, vol_id: Uuid) -> VolumeInfo;
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

    /// Copies every volume of an image to another domain (operation 1/"copy" only).
    "Image.move" => fn move_image / MoveImageParams(
        image_id as "imageID": Uuid,
        src_sd_id as "storagedomainID": Uuid,
        dst_sd_id as "dstSdUUID": Uuid,
        operation: ImageOperation,
        post_zero as "postZero": Option<Flag>,
        force: Option<Flag>,
        discard: Option<Flag>,
        job_id: Option<Uuid>,
    ) -> TaskRef;
    /// Deletes an image: renamed `_remove_me_` at once, then (optionally wiped and) removed by a job.
    "Image.delete" => fn delete_image / DeleteImageParams(
        image_id as "imageID": Uuid,
        sd_id as "storagedomainID": Uuid,
        post_zero as "postZero": Option<Flag>,
        force: Option<Flag>,
        discard: Option<Flag>,
        job_id: Option<Uuid>,
    ) -> TaskRef;
}
