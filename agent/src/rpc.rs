//! The JSON-RPC server: the `SdmApiServer` implementation (a thin layer over [`Agent`] and
//! [`crate::ops`]), the parameter-error middleware, and the listener with its limits.
//!
//! Requests pass: socket → jsonrpsee (HTTP or WebSocket, size/connection/batch limits) →
//! [`ParamErrors`] middleware → generated parameter decoding (`sdm_proto` types validate here)
//! → a method below → a blocking thread running the [`Agent`] verb or registering a job.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::middleware::{
    Batch, BatchEntry, Notification, RpcServiceBuilder, RpcServiceT,
};
use jsonrpsee::core::server::{BatchResponseBuilder, MethodResponse};
use jsonrpsee::core::{async_trait, SubscriptionResult};
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, BatchRequestConfig, Methods,
    PendingSubscriptionSink, PingConfig, Server, ServerConfig, ServerHandle,
};
use jsonrpsee::types::error::INVALID_PARAMS_CODE;
use jsonrpsee::types::{ErrorObjectOwned, Request};
use sdm_proto::api::{
    AttachDomainParams, ChecksumVolumeParams, CopyDataParams, CreateDomainParams,
    CreateVolumeParams, DeleteImageParams, FixDomainParams, MoveImageParams, UpdateVolumeParams,
};
use sdm_proto::*;

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
        path: String,
        description: Option<Description>,
    ) -> RpcResult<bool> {
        let a = self.agent.clone();
        let p = CreateDomainParams {
            sd_id,
            path,
            description,
        };
        blocking(move || {
            let attached = a.create_domain(&p)?;
            ops::gc::after_attach(&a, &attached);
            Ok(true)
        })
        .await
    }

    async fn attach_domain(&self, path: String) -> RpcResult<AttachResult> {
        let a = self.agent.clone();
        let p = AttachDomainParams { path };
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
    ) -> RpcResult<bool> {
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
        };
        blocking(move || {
            a.create_volume(&p)?;
            Ok(true)
        })
        .await
    }

    async fn get_volume_info(
        &self,
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
    ) -> RpcResult<VolumeInfo> {
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
    ) -> RpcResult<bool> {
        let p = CopyDataParams {
            job_id,
            source,
            destination,
            copy_bitmaps,
            verify,
            bandwidth_limit,
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
    ) -> RpcResult<TaskRef> {
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
    ) -> RpcResult<TaskRef> {
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

/// Middleware that reports undecodable parameters (missing, mistyped, non-canonical UUIDs,
/// out-of-range values) as InvalidParameterException (1000) instead of JSON-RPC's -32602, so
/// engines see the contract's code, with the decoder's explanation as the message.
#[derive(Clone)]
pub struct ParamErrors<S> {
    inner: S,
    max_response: usize,
}

/// Longest error message sent back: hostile requests can be megabytes, and decoders quote them.
const MAX_ERROR_MESSAGE: usize = 1024;

fn cut(mut s: String) -> String {
    if s.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn invalid_params(id: jsonrpsee::types::Id<'static>, detail: &str) -> MethodResponse {
    MethodResponse::error(
        id,
        ErrorObjectOwned::from(ApiError::invalid(cut(format!(
            "invalid parameters: {detail}"
        )))),
    )
}

/// Turns -32602 into InvalidParameterException, and cuts over-long error messages.
fn rewrite(id: jsonrpsee::types::Id<'static>, rp: MethodResponse) -> MethodResponse {
    let Some(code) = rp.as_error_code() else {
        return rp;
    };
    if code != INVALID_PARAMS_CODE && rp.as_json().get().len() <= MAX_ERROR_MESSAGE + 256 {
        return rp;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(rp.as_json().get()) else {
        return rp;
    };
    let Some(e) = v.get("error") else { return rp };
    if code == INVALID_PARAMS_CODE {
        let detail = match e.get("data").and_then(|d| d.as_str()) {
            Some(d) => d.to_string(),
            None => e
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("invalid parameters")
                .to_string(),
        };
        return invalid_params(id, &detail);
    }
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let data = e.get("data").cloned();
    MethodResponse::error(
        id,
        jsonrpsee::types::ErrorObject::owned(code, cut(message), data),
    )
}

/// Requests without parameters (absent, `null`, `[]`) are decoded as an empty object, so that
/// verbs whose parameters are all optional work without any, and others report the missing
/// field by name.
fn normalize_params(mut request: Request<'_>) -> Request<'_> {
    let empty = match &request.params {
        None => true,
        Some(p) => matches!(p.get().trim(), "null" | "[]"),
    };
    if empty {
        if let Ok(raw) = serde_json::value::RawValue::from_string("{}".into()) {
            request.params = Some(std::borrow::Cow::Owned(raw));
        }
    }
    request
}

/// Subscriptions answer through their own channel, past the rewrite above: their parameters
/// are checked here first.
fn check_subscription_params(request: &Request<'_>) -> Result<(), String> {
    if request.method_name() != "Job.subscribe" {
        return Ok(());
    }
    let raw = request.params.as_ref().map(|p| p.get()).unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    let v = match v {
        serde_json::Value::Array(mut a) if a.len() == 1 => {
            serde_json::json!({"job_id": a.remove(0)})
        }
        other => other,
    };
    serde_json::from_value::<sdm_proto::api::SubscribeJobParams>(v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl<S> RpcServiceT for ParamErrors<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let inner = self.inner.clone();
        let id = request.id().into_owned();
        let request = normalize_params(request);
        let early = check_subscription_params(&request).err();
        async move {
            if let Some(detail) = early {
                return invalid_params(id, &detail);
            }
            rewrite(id, inner.call(request).await)
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Each call of a batch goes through `call` above so the rewrite applies inside batches too.
        let this = self.clone();
        async move {
            let mut out = BatchResponseBuilder::new_with_limit(this.max_response);
            let mut got_notification = false;
            for entry in batch.into_iter() {
                let rp = match entry {
                    Ok(BatchEntry::Call(req)) => this.call(req).await,
                    Ok(BatchEntry::Notification(n)) => {
                        got_notification = true;
                        this.inner.notification(n).await;
                        continue;
                    }
                    Err(err) => {
                        let (err, id) = err.into_parts();
                        MethodResponse::error(id, err)
                    }
                };
                if let Err(too_big) = out.append(rp) {
                    return too_big;
                }
            }
            if out.is_empty() && got_notification {
                MethodResponse::notification()
            } else {
                MethodResponse::from_batch(out.finish())
            }
        }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}

/// Layer of [`ParamErrors`].
#[derive(Clone, Copy)]
pub struct ParamErrorsLayer(usize);

impl<S> tower::Layer<S> for ParamErrorsLayer {
    type Service = ParamErrors<S>;
    fn layer(&self, inner: S) -> ParamErrors<S> {
        ParamErrors {
            inner,
            max_response: self.0,
        }
    }
}

/// Binds the listener and starts serving: plain HTTP/WebSocket on loopback, mutual TLS when
/// `[tls]` is configured (the configuration refuses a non-loopback address without it).
/// Returns the bound address (port 0 picks a free one) and the handle that stops the server.
pub async fn serve(agent: Arc<Agent>) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let s = &agent.cfg.server;
    let max_connections = s.max_connections;
    let param_errors = ParamErrorsLayer(s.max_response_body_bytes as usize);
    let config = ServerConfig::builder()
        .max_request_body_size(s.max_request_body_bytes)
        .max_response_body_size(s.max_response_body_bytes)
        .max_connections(s.max_connections)
        .max_subscriptions_per_connection(s.max_subscriptions_per_connection)
        .set_batch_request_config(BatchRequestConfig::Limit(s.max_batch_len))
        // Idle WebSocket connections are pinged and dropped when they stop answering.
        // Few buffered answers per connection: a client that does not read is slowed down early.
        .set_message_buffer_capacity(64)
        .enable_ws_ping(
            PingConfig::new()
                .ping_interval(Duration::from_secs(30))
                .inactive_limit(Duration::from_secs(90)),
        )
        .build();
    let tls = match &agent.cfg.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(t)
                .map_err(|e| std::io::Error::other(crate::error::chain_message(&e)))?,
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(agent.cfg.listen).await?;
    let addr = listener.local_addr()?;
    let builder = Server::builder().set_config(config).to_service_builder();
    let methods: Methods = Rpc::new(agent).into_rpc().into();
    let (stop, handle) = stop_channel();
    let conns = crate::conn::Connections::new(max_connections as usize);
    tokio::spawn(async move {
        loop {
            let sock = tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.clone().shutdown() => break,
            };
            let Some(reg) = conns.register() else {
                // Full of active connections: refuse the newcomer rather than run out of fds.
                tracing::debug!(
                    open = conns.len(),
                    "connection refused: too many open connections"
                );
                drop(sock);
                continue;
            };
            let peer = sock.peer_addr().ok();
            // The connection's own middleware sees its calls (see conn.rs).
            let svc = builder
                .clone()
                .set_http_middleware(
                    tower::ServiceBuilder::new().layer(crate::conn::UpgradeGateLayer::new(&reg)),
                )
                .set_rpc_middleware(
                    RpcServiceBuilder::new()
                        .layer(crate::conn::CallGateLayer::new(&reg))
                        .layer(param_errors),
                )
                .build(methods.clone(), stop.clone());
            let stop = stop.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let kill = reg.state.clone();
                let serve = async move {
                    // Guarded goes inside TLS: it follows the requests and answers in the clear.
                    match tls {
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock))
                                .await
                            {
                                Ok(Ok(stream)) => {
                                    let stream = crate::conn::Guarded::new(stream, reg);
                                    serve_with_graceful_shutdown(stream, svc, stop.shutdown()).await
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(?peer, error = %e, "TLS handshake refused");
                                    Ok(())
                                }
                                Err(_) => {
                                    tracing::info!(?peer, "TLS handshake timed out");
                                    Ok(())
                                }
                            }
                        }
                        None => {
                            let sock = crate::conn::Guarded::new(sock, reg);
                            serve_with_graceful_shutdown(sock, svc, stop.shutdown()).await
                        }
                    }
                };
                let res = tokio::select! {
                    r = serve => r,
                    _ = kill.kill.notified() => {
                        tracing::debug!(?peer, "closed a quiet connection to make room");
                        Ok(())
                    }
                };
                if let Err(e) = res {
                    tracing::debug!(?peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
    Ok((addr, handle))
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
