//! [`Rpc`]: the `SdmApiServer` verbs, each building its `sdm_proto::api` parameter struct and
//! handing it to a verb of [`Agent`] or `ops` (on a blocking thread where it does file IO).

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::{async_trait, SubscriptionResult};
use jsonrpsee::server::PendingSubscriptionSink;
use jsonrpsee::types::ErrorObjectOwned;
use sdm_proto::api::{
    AddBitmapParams, AmendVolumeParams, ClearBitmapsParams, MergeParams, RemoveBitmapParams,
    SparsifyVolumeParams,
};
use sdm_proto::api::{
    AttachDomainParams, ChecksumVolumeParams, CopyDataParams, CreateDomainParams,
    CreateVolumeParams, DeleteImageParams, FixDomainParams, MoveImageParams, UpdateVolumeParams,
};
use sdm_proto::*;

use super::tasks;
use crate::error::AgentError;
use crate::jobs::JobFilter;
use crate::ops;
use crate::service::Agent;

/// The RPC front of the agent.
pub struct Rpc {
    agent: Arc<Agent>,
}

impl Rpc {
    /// Wraps an agent.
    pub fn new(agent: Arc<Agent>) -> Rpc {
        Rpc { agent }
    }
}

/// Runs a verb on a blocking thread (file IO, locks) and converts its error.
async fn blocking<T, F>(f: F) -> RpcResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, AgentError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ErrorObjectOwned::from),
        Err(e) => {
            Err(ApiError::new(ErrorCode::GeneralException, format!("internal error: {e}")).into())
        }
    }
}

/// `StorageDomain.create` in VDSM's form: what sdm can do (a Data domain in a local
/// directory, format 5, 512-byte sectors) is accepted, the rest refused before anything
/// happens.
fn check_vdsm_domain(p: &CreateDomainParams) -> Result<(), ErrorObjectOwned> {
    let unsupported = |what: String| -> ErrorObjectOwned {
        ApiError::new(ErrorCode::UnsupportedOperation, what).into()
    };
    // The storage type must name the kind of domain being made: VDSM records it as the
    // domain's TYPE, and an engine reading a block domain back as LOCALFS would be misled.
    let block = p.kind == Some(DomainKindName::Block);
    match p.domain_type {
        Some(t) if block && t != 3 => {
            return Err(unsupported(format!(
                "domainType {t}: sdm formats block domains as ISCSI (3), the TYPE their metadata records"
            )));
        }
        Some(t) if !block && ![4, 6].contains(&t) => {
            return Err(unsupported(format!(
                "domainType {t}: sdm formats file domains in a local directory (4 LOCALFS, 6 POSIXFS); mount remote storage first"
            )));
        }
        _ => {}
    }
    if let Some(c) = p.domain_class.filter(|c| *c != 1) {
        return Err(unsupported(format!(
            "domainClass {c}: sdm formats Data domains (1)"
        )));
    }
    if let Some(v) = p.version.filter(|v| *v != 5) {
        return Err(unsupported(format!("version {v}: sdm formats version 5")));
    }
    if let Some(b) = p.block_size.filter(|b| ![0, 512].contains(b)) {
        return Err(unsupported(format!(
            "blockSize {b}: sdm formats 512-byte sectors"
        )));
    }
    if let Some(m) = p.max_hosts.filter(|m| !(1..=2000).contains(m)) {
        return Err(ApiError::invalid(format!("maxHosts {m} is outside 1-2000")).into());
    }
    Ok(())
}

// The wire verbs take their parameters by name, as many as the contract gives them.
#[allow(clippy::too_many_arguments)]
#[async_trait]
impl SdmApiServer for Rpc {
    async fn get_capabilities(&self) -> RpcResult<Capabilities> {
        let a = self.agent.clone();
        blocking(move || Ok(a.capabilities())).await
    }

    async fn get_stats(&self) -> RpcResult<HostStats> {
        let a = self.agent.clone();
        blocking(move || Ok(a.stats())).await
    }

    async fn get_jobs(
        &self,
        job_type: Option<String>,
        job_ids: Option<Vec<Uuid>>,
    ) -> RpcResult<JobMap> {
        Ok(self.agent.jobs.infos(&JobFilter { job_type, job_ids }))
    }

    async fn abort_job(&self, job_id: Uuid) -> RpcResult<bool> {
        self.agent.jobs.abort(&job_id).map_err(AgentError::from)?;
        Ok(true)
    }

    async fn delete_job(&self, job_id: Uuid) -> RpcResult<bool> {
        self.agent.jobs.delete(&job_id).map_err(AgentError::from)?;
        Ok(true)
    }

    async fn create_domain(
        &self,
        sd_id: Uuid,
        path: Option<String>,
        description: Option<Description>,
        lease_backend: Option<LeaseBackendName>,
        force: Option<Flag>,
        kind: Option<DomainKindName>,
        devices: Option<Vec<String>>,
        domain_type: Option<u32>,
        domain_class: Option<u32>,
        version: Option<u32>,
        block_size: Option<u64>,
        max_hosts: Option<u64>,
    ) -> RpcResult<bool> {
        let a = self.agent.clone();
        let p = CreateDomainParams {
            sd_id,
            path,
            description,
            lease_backend,
            force,
            kind,
            devices,
            domain_type,
            domain_class,
            version,
            block_size,
            max_hosts,
        };
        check_vdsm_domain(&p)?;
        blocking(move || {
            let attached = a.create_domain(&p)?;
            ops::gc::after_attach(&a, &attached);
            Ok(true)
        })
        .await
    }

    async fn attach_domain(
        &self,
        path: String,
        lease_backend: Option<LeaseBackendName>,
        force: Option<Flag>,
        sd_id: Option<Uuid>,
        kind: Option<DomainKindName>,
    ) -> RpcResult<AttachResult> {
        let a = self.agent.clone();
        let p = AttachDomainParams {
            path,
            lease_backend,
            force,
            sd_id,
            kind,
        };
        blocking(move || {
            let attached = a.attach_domain(&p)?;
            ops::gc::after_attach(&a, &attached);
            Ok(AttachResult {
                sd_id: attached.sd_id,
            })
        })
        .await
    }

    async fn detach_domain(&self, sd_id: Uuid) -> RpcResult<bool> {
        let a = self.agent.clone();
        blocking(move || a.detach_domain(&sd_id).map(|_| true)).await
    }

    async fn list_domains(&self) -> RpcResult<Vec<DomainInfo>> {
        let a = self.agent.clone();
        blocking(move || Ok(a.list_domains())).await
    }

    async fn get_domain_info(&self, sd_id: Uuid) -> RpcResult<StorageDomainInfo> {
        let a = self.agent.clone();
        blocking(move || a.domain_info(&sd_id)).await
    }

    async fn get_images(&self, sd_id: Uuid) -> RpcResult<Vec<Uuid>> {
        let a = self.agent.clone();
        blocking(move || a.get_images(&sd_id)).await
    }

    async fn check_domain(&self, sd_id: Uuid) -> RpcResult<Vec<Fix>> {
        let a = self.agent.clone();
        blocking(move || ops::check::check(&a, &sd_id)).await
    }

    async fn fix_domain(&self, sd_id: Uuid, fix: Fix, job_id: Option<Uuid>) -> RpcResult<TaskRef> {
        let a = self.agent.clone();
        let p = FixDomainParams { sd_id, fix, job_id };
        blocking(move || ops::check::fix(&a, p)).await
    }

    async fn get_volumes(&self, sd_id: Uuid, img_id: Uuid) -> RpcResult<Vec<Uuid>> {
        let a = self.agent.clone();
        blocking(move || a.get_volumes(&sd_id, &img_id)).await
    }

    async fn get_image_status(&self, sd_id: Uuid, img_id: Uuid) -> RpcResult<ImageStatus> {
        let a = self.agent.clone();
        blocking(move || ops::image_status::get(&a, &sd_id, &img_id)).await
    }

    async fn create_volume(
        &self,
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
        capacity: Capacity,
        format: VolumeFormat,
        preallocate: Preallocation,
        parent_vol_id: Option<Uuid>,
        description: Option<Description>,
        sequence: Option<Sequence>,
        parent_img_id: Option<Uuid>,
        disk_type: Option<DiskType>,
        initial_size: Option<Size>,
        legal: Option<Flag>,
        add_bitmaps: Option<Flag>,
        bitmap: Option<Uuid>,
    ) -> RpcResult<Uuid> {
        let a = self.agent.clone();
        let p = CreateVolumeParams {
            sd_id,
            img_id,
            vol_id,
            capacity,
            format,
            preallocate,
            parent_vol_id,
            description,
            sequence,
            parent_img_id,
            disk_type,
            initial_size,
            legal,
            add_bitmaps,
            bitmap,
        };
        blocking(move || a.create_volume(&p)).await
    }

    async fn get_volume_info(
        &self,
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
    ) -> RpcResult<VolumeInfoReply> {
        let a = self.agent.clone();
        blocking(move || a.volume_info(&sd_id, &img_id, &vol_id)).await
    }

    async fn checksum_volume(
        &self,
        job_id: Uuid,
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
        algorithm: Option<ChecksumAlgorithm>,
    ) -> RpcResult<bool> {
        let p = ChecksumVolumeParams {
            job_id,
            sd_id,
            img_id,
            vol_id,
            algorithm,
        };
        ops::checksum::schedule(&self.agent, p)?;
        Ok(true)
    }

    async fn copy_data(
        &self,
        job_id: Uuid,
        source: Endpoint,
        destination: Endpoint,
        copy_bitmaps: Option<Flag>,
        verify: Option<Flag>,
        bandwidth_limit: Option<Size>,
        resume: Option<Flag>,
    ) -> RpcResult<bool> {
        let p = CopyDataParams {
            job_id,
            source,
            destination,
            copy_bitmaps,
            verify,
            bandwidth_limit,
            resume,
        };
        ops::copy_data::schedule(&self.agent, p)?;
        Ok(true)
    }

    async fn update_volume(
        &self,
        job_id: Uuid,
        vol_info: VolumeRef,
        vol_attr: VolumeAttributes,
    ) -> RpcResult<bool> {
        let p = UpdateVolumeParams {
            job_id,
            vol_info,
            vol_attr,
        };
        ops::update_volume::schedule(&self.agent, p)?;
        Ok(true)
    }

    async fn merge(
        &self,
        job_id: Uuid,
        subchain_info: SubchainInfo,
        merge_bitmaps: Option<Flag>,
    ) -> RpcResult<bool> {
        let p = MergeParams {
            job_id,
            subchain_info,
            merge_bitmaps,
        };
        ops::merge::schedule(&self.agent, p)?;
        Ok(true)
    }

    async fn amend_volume(
        &self,
        job_id: Uuid,
        vol_info: VolumeRef,
        qcow2_attr: Qcow2Attributes,
    ) -> RpcResult<bool> {
        let p = AmendVolumeParams {
            job_id,
            vol_info,
            qcow2_attr,
        };
        ops::amend::schedule(&self.agent, p)?;
        Ok(true)
    }

    async fn sparsify_volume(&self, job_id: Uuid, vol_info: VolumeRef) -> RpcResult<bool> {
        let p = SparsifyVolumeParams { job_id, vol_info };
        ops::sparsify::schedule(&self.agent, p)?;
        Ok(true)
    }

    async fn add_bitmap(
        &self,
        job_id: Uuid,
        vol_info: VolumeRef,
        bitmap: BitmapName,
    ) -> RpcResult<bool> {
        let p = AddBitmapParams {
            job_id,
            vol_info,
            bitmap,
        };
        ops::bitmaps::schedule_add(&self.agent, p)?;
        Ok(true)
    }

    async fn remove_bitmap(
        &self,
        job_id: Uuid,
        vol_info: VolumeRef,
        bitmap: BitmapName,
    ) -> RpcResult<bool> {
        let p = RemoveBitmapParams {
            job_id,
            vol_info,
            bitmap,
        };
        ops::bitmaps::schedule_remove(&self.agent, p)?;
        Ok(true)
    }

    async fn clear_bitmaps(&self, job_id: Uuid, vol_info: VolumeRef) -> RpcResult<bool> {
        let p = ClearBitmapsParams { job_id, vol_info };
        ops::bitmaps::schedule_clear(&self.agent, p)?;
        Ok(true)
    }

    async fn move_image(
        &self,
        image_id: Uuid,
        src_sd_id: Uuid,
        dst_sd_id: Uuid,
        operation: ImageOperation,
        post_zero: Option<Flag>,
        force: Option<Flag>,
        discard: Option<Flag>,
        job_id: Option<Uuid>,
    ) -> RpcResult<Uuid> {
        let a = self.agent.clone();
        let p = MoveImageParams {
            image_id,
            src_sd_id,
            dst_sd_id,
            operation,
            post_zero,
            force,
            discard,
            job_id,
        };
        blocking(move || ops::image::move_image(&a, p)).await
    }

    async fn delete_image(
        &self,
        image_id: Uuid,
        sd_id: Uuid,
        post_zero: Option<Flag>,
        force: Option<Flag>,
        discard: Option<Flag>,
        job_id: Option<Uuid>,
    ) -> RpcResult<Uuid> {
        let a = self.agent.clone();
        let p = DeleteImageParams {
            image_id,
            sd_id,
            post_zero,
            force,
            discard,
            job_id,
        };
        blocking(move || ops::image::delete(&a, p)).await
    }

    async fn get_task_status(&self, task_id: Uuid) -> RpcResult<TaskStatus> {
        Ok(tasks::get_status(&self.agent.jobs, &task_id)?)
    }

    async fn get_all_tasks_statuses(&self) -> RpcResult<TaskStatusMap> {
        Ok(tasks::all_statuses(&self.agent.jobs))
    }

    async fn get_task_info(&self, task_id: Uuid) -> RpcResult<TaskInfo> {
        Ok(tasks::get_info(&self.agent.jobs, &task_id)?)
    }

    async fn clear_task(&self, task_id: Uuid) -> RpcResult<bool> {
        Ok(tasks::clear(&self.agent.jobs, &task_id)?)
    }

    async fn stop_task(&self, task_id: Uuid) -> RpcResult<bool> {
        Ok(tasks::stop(&self.agent.jobs, &task_id)?)
    }

    async fn subscribe_job(
        &self,
        pending: PendingSubscriptionSink,
        job_id: Uuid,
    ) -> SubscriptionResult {
        let job = match self.agent.jobs.get(&job_id) {
            Ok(j) => j,
            Err(e) => {
                pending
                    .reject(ErrorObjectOwned::from(AgentError::from(e)))
                    .await;
                return Ok(());
            }
        };
        let sink = pending.accept().await?;
        let mut changes = job.watch();
        let mut last: Option<JobInfo> = None;
        loop {
            let info = job.info();
            if last.as_ref() != Some(&info) {
                let raw = serde_json::value::to_raw_value(&info)?;
                if sink.send(raw).await.is_err() {
                    return Ok(());
                }
                let terminal = !info.status.is_active();
                last = Some(info);
                if terminal {
                    return Ok(());
                }
            }
            // State changes wake us at once; progress is sampled a few times a second.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = sink.closed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: Option<DomainKindName>, domain_type: Option<u32>) -> CreateDomainParams {
        CreateDomainParams {
            sd_id: Uuid::blank(),
            path: None,
            description: None,
            lease_backend: None,
            force: None,
            kind,
            devices: None,
            domain_type,
            domain_class: None,
            version: None,
            block_size: None,
            max_hosts: None,
        }
    }

    #[test]
    fn the_storage_type_must_name_the_kind_of_domain() {
        let code = |r: Result<(), ErrorObjectOwned>| r.err().map(|e| e.code());
        let unsupported = Some(ErrorCode::UnsupportedOperation.code());
        for t in [None, Some(4), Some(6)] {
            assert_eq!(code(check_vdsm_domain(&params(None, t))), None);
            assert_eq!(
                code(check_vdsm_domain(&params(Some(DomainKindName::File), t))),
                None
            );
        }
        assert_eq!(code(check_vdsm_domain(&params(None, Some(3)))), unsupported);
        let block = Some(DomainKindName::Block);
        assert_eq!(code(check_vdsm_domain(&params(block, None))), None);
        assert_eq!(code(check_vdsm_domain(&params(block, Some(3)))), None);
        for t in [1, 2, 4, 6, 7] {
            assert_eq!(
                code(check_vdsm_domain(&params(block, Some(t)))),
                unsupported,
                "{t}"
            );
        }
    }
}
