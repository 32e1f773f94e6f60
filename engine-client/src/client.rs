//! [`AgentClient`]: a typed client of one agent, with request timeouts, retries of idempotent
//! reads and idempotent job submission. Its typed API ([`AgentClient::api`]) runs over HTTP,
//! or over STOMP for a `stomp://`/`stomps://` agent ([`AgentClient::connect`]).

use std::time::Duration;

use jsonrpsee::core::client::{
    BatchResponse, ClientT, Error as RpcError, Subscription, SubscriptionClientT,
};
use jsonrpsee::core::params::BatchRequestBuilder;
use jsonrpsee::core::traits::ToRpcParams;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use sdm_proto::{ApiError, ErrorCode, JobInfo, JobStatus, SdmApiClient, Uuid};

use crate::error::Error;

/// Default agent URL.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:54321";

/// Options of a connection.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Attempts for idempotent requests when the transport fails.
    pub retries: u32,
    /// Mutual TLS (for `https://` agents): our certificate and the CA we trust.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            retries: 3,
            tls: None,
        }
    }
}

/// The transport of an agent's typed API: JSON-RPC over HTTP, or over STOMP (VDSM's).
/// Implements jsonrpsee's client traits, and so [`SdmApiClient`].
#[derive(Clone, Debug)]
pub enum Api {
    /// HTTP POST.
    Http(HttpClient),
    /// STOMP 1.2 frames on a connection of this client's own.
    Stomp(std::sync::Arc<crate::stomp::StompClient>),
}

impl ClientT for Api {
    async fn notification<Params>(&self, method: &str, params: Params) -> Result<(), RpcError>
    where
        Params: ToRpcParams + Send,
    {
        match self {
            Api::Http(c) => c.notification(method, params).await,
            Api::Stomp(c) => c.notification(method, params).await,
        }
    }

    async fn request<R, Params>(&self, method: &str, params: Params) -> Result<R, RpcError>
    where
        R: serde::de::DeserializeOwned,
        Params: ToRpcParams + Send,
    {
        match self {
            Api::Http(c) => c.request(method, params).await,
            Api::Stomp(c) => c.request(method, params).await,
        }
    }

    async fn batch_request<'a, R>(
        &self,
        batch: BatchRequestBuilder<'a>,
    ) -> Result<BatchResponse<'a, R>, RpcError>
    where
        R: serde::de::DeserializeOwned + std::fmt::Debug + 'a,
    {
        match self {
            Api::Http(c) => c.batch_request(batch).await,
            Api::Stomp(c) => c.batch_request(batch).await,
        }
    }
}

impl SubscriptionClientT for Api {
    async fn subscribe<'a, Notif, Params>(
        &self,
        subscribe_method: &'a str,
        params: Params,
        unsubscribe_method: &'a str,
    ) -> Result<Subscription<Notif>, RpcError>
    where
        Params: ToRpcParams + Send,
        Notif: serde::de::DeserializeOwned,
    {
        match self {
            Api::Http(c) => {
                c.subscribe(subscribe_method, params, unsubscribe_method)
                    .await
            }
            Api::Stomp(c) => {
                c.subscribe(subscribe_method, params, unsubscribe_method)
                    .await
            }
        }
    }

    async fn subscribe_to_method<Notif>(
        &self,
        method: &str,
    ) -> Result<Subscription<Notif>, RpcError>
    where
        Notif: serde::de::DeserializeOwned,
    {
        match self {
            Api::Http(c) => c.subscribe_to_method(method).await,
            Api::Stomp(c) => c.subscribe_to_method(method).await,
        }
    }
}

/// A client of one agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    url: String,
    http: HttpClient,
    api: Api,
    opts: ClientOptions,
}

impl AgentClient {
    /// A client of the agent at `url` (`http://host:port`; `ws://` is accepted and mapped).
    pub fn new(url: &str) -> Result<AgentClient, Error> {
        Self::with_options(url, ClientOptions::default())
    }

    /// A client with explicit options.
    pub fn with_options(url: &str, opts: ClientOptions) -> Result<AgentClient, Error> {
        let url = normalize(url)?;
        let mut b = HttpClientBuilder::default()
            .request_timeout(opts.request_timeout)
            .max_response_size(64 << 20);
        if let Some(tls) = &opts.tls {
            b = b.with_custom_cert_store((**tls).clone());
        }
        let http = b
            .build(&url)
            .map_err(|e| Error::Usage(format!("bad agent URL {url}: {e}")))?;
        Ok(AgentClient {
            url,
            api: Api::Http(http.clone()),
            http,
            opts,
        })
    }

    /// A client of the agent at `url`: `http(s)://` as [`AgentClient::with_options`], or
    /// `stomp://`/`stomps://`, whose typed API ([`AgentClient::api`]) then runs over a STOMP
    /// connection made here (the retried reads and submissions, [`AgentClient::read`] and
    /// [`AgentClient::submit`], stay on HTTP to the same port, which serves both).
    pub async fn connect(url: &str, opts: ClientOptions) -> Result<AgentClient, Error> {
        let Ok((host, port, tls)) = crate::stomp::parse_url(url) else {
            return Self::with_options(url, opts);
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let scheme = if tls { "https" } else { "http" };
        let mut c = Self::with_options(&format!("{scheme}://{host}:{port}"), opts)?;
        let stomp = crate::stomp::connect(url, c.opts.tls.clone(), c.opts.request_timeout).await?;
        c.api = Api::Stomp(std::sync::Arc::new(stomp));
        c.url = url.trim_end_matches('/').to_string();
        Ok(c)
    }

    /// True when the typed API runs over STOMP.
    pub fn is_stomp(&self) -> bool {
        matches!(self.api, Api::Stomp(_))
    }

    /// The agent's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The typed API: every verb of the contract as a method ([`SdmApiClient`]), over HTTP or
    /// STOMP.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Converts a jsonrpsee error into ours.
    pub fn error(&self, e: RpcError) -> Error {
        convert(&self.url, e)
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// A client of the same agent whose requests give up after `timeout`: health probes and
    /// job polls use a short one, so that a frozen host is noticed in seconds, while long
    /// synchronous verbs keep the default.
    pub fn with_timeout(&self, timeout: Duration) -> Result<AgentClient, Error> {
        Self::with_options(
            &self.url,
            ClientOptions {
                request_timeout: timeout,
                ..self.opts.clone()
            },
        )
    }

    /// Runs an idempotent request (a read, or a verb whose repetition is harmless), retrying
    /// when the transport fails. Agent errors are returned at once: they are answers.
    pub async fn read<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(HttpClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f(self.http.clone()).await.map_err(|e| self.error(e)) {
                Err(e) if e.is_transport() && attempt <= self.opts.retries => {
                    tracing::debug!(url = %self.url, error = %e, attempt, "request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
                }
                r => return r,
            }
        }
    }

    /// Submits a job-starting verb whose job id the caller chose, retrying on transport errors.
    ///
    /// Safe because the agent registers a job id once: if an earlier attempt reached the agent
    /// and only its answer was lost, the retry gets JobExists, which here means "submitted",
    /// and no second job is started. The caller passes a fresh job id per operation.
    pub async fn submit<F, Fut>(&self, job_id: &Uuid, f: F) -> Result<(), Error>
    where
        F: Fn(HttpClient) -> Fut,
        Fut: std::future::Future<Output = Result<bool, RpcError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f(self.http.clone()).await.map_err(|e| self.error(e)) {
                Ok(_) => return Ok(()),
                Err(Error::Api(e)) if e.code == ErrorCode::JobExists && attempt > 1 => {
                    tracing::info!(job = %job_id, "job was registered by an earlier attempt");
                    return Ok(());
                }
                Err(e) if e.is_transport() && attempt <= self.opts.retries => {
                    tracing::warn!(job = %job_id, error = %e, attempt, "submission failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The job's info, or None when the agent does not know it (finished long ago, or the
    /// agent restarted).
    pub async fn job(&self, job_id: &Uuid) -> Result<Option<JobInfo>, Error> {
        let mut map = self
            .api
            .get_jobs(None, Some(vec![job_id.clone()]))
            .await
            .via(self)?;
        Ok(map.remove(job_id))
    }

    /// A WebSocket connection to the same agent (for subscriptions).
    pub async fn websocket(&self) -> Result<WsClient, Error> {
        let ws_url = self
            .url
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let mut b = WsClientBuilder::default()
            .request_timeout(self.opts.request_timeout)
            .connection_timeout(self.opts.request_timeout);
        if let Some(tls) = &self.opts.tls {
            b = b.with_custom_cert_store((**tls).clone());
        }
        b.build(&ws_url).await.map_err(|e| convert(&self.url, e))
    }

    /// Waits for a job to end, calling `on_update` with every info seen. Uses `Job.subscribe`
    /// and falls back to polling `Host.getJobs` if subscribing is not possible.
    pub async fn wait_job(
        &self,
        job_id: &Uuid,
        mut on_update: impl FnMut(&JobInfo),
    ) -> Result<JobInfo, Error> {
        // A STOMP client follows jobs by polling over STOMP.
        let ws = match self.api {
            Api::Http(_) => self.websocket().await.ok(),
            Api::Stomp(_) => None,
        };
        if let Some(ws) = ws {
            if let Ok(mut sub) = ws.subscribe_job(job_id.clone()).await {
                while let Some(item) = sub.next().await {
                    match item {
                        Ok(info) => {
                            on_update(&info);
                            if !info.status.is_active() {
                                return Ok(info);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "subscription item failed; polling instead");
                            break;
                        }
                    }
                }
            }
        }
        loop {
            match self.job(job_id).await? {
                Some(info) => {
                    on_update(&info);
                    if !info.status.is_active() {
                        return Ok(info);
                    }
                }
                None => {
                    return Err(Error::Api(ApiError::new(
                        ErrorCode::NoSuchJob,
                        format!("job {job_id} is not known to {}", self.url),
                    )))
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Converts a jsonrpsee result into ours: `client.api().verb(..).await.via(&client)?`.
pub trait Via<T> {
    /// The result with the error converted (agent errors keep their code).
    fn via(self, client: &AgentClient) -> Result<T, Error>;
}

impl<T> Via<T> for Result<T, RpcError> {
    fn via(self, client: &AgentClient) -> Result<T, Error> {
        self.map_err(|e| client.error(e))
    }
}

/// Turns a finished job into a result: done is Ok, failed/aborted carry the job's error.
pub fn job_outcome(info: &JobInfo) -> Result<(), ApiError> {
    match info.status {
        JobStatus::Done => Ok(()),
        _ => Err(info
            .error
            .as_ref()
            .map(|e| e.to_api_error())
            .unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::GeneralException,
                    format!("job ended {}", info.status),
                )
            })),
    }
}

fn normalize(url: &str) -> Result<String, Error> {
    let u = url.trim_end_matches('/');
    let u = if let Some(rest) = u.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = u.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if u.starts_with("http://") || u.starts_with("https://") {
        u.to_string()
    } else if !u.is_empty() && !u.contains("://") {
        format!("http://{u}")
    } else {
        return Err(Error::Usage(format!(
            "bad agent URL {url:?}: use http://HOST:PORT"
        )));
    };
    Ok(u)
}

fn convert(url: &str, e: RpcError) -> Error {
    match e {
        RpcError::Call(obj) => Error::Api(ApiError::from_error_object(&obj)),
        RpcError::ParseError(p) => Error::Transport {
            url: url.into(),
            message: format!("bad response: {p}"),
        },
        other => Error::Transport {
            url: url.into(),
            message: other.to_string(),
        },
    }
}

/// Checks that an agent answers (used by health checks).
pub async fn ping(client: &AgentClient) -> Result<(), Error> {
    client
        .http
        .request::<sdm_proto::Capabilities, _>("Host.getCapabilities", jsonrpsee::rpc_params![])
        .await
        .map(|_| ())
        .map_err(|e| client.error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize("127.0.0.1:54321").unwrap(),
            "http://127.0.0.1:54321"
        );
        assert_eq!(normalize("ws://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalize("https://h:1").unwrap(), "https://h:1");
        assert!(normalize("ftp://h").is_err());
    }
}
