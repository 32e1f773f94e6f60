//! The listener: binds, accepts, registers each connection (`crate::conn`), wraps it (TLS,
//! then `Guarded`), tells HTTP from STOMP by the first bytes (`sdm_stomp::detect`) and serves
//! it with the connection's own middleware: jsonrpsee for HTTP and WebSocket, `crate::stomp`
//! for STOMP. Anything else, and a peer silent for [`DETECT_TIMEOUT`], is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sdm_stomp::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use jsonrpsee::core::middleware::RpcServiceBuilder;
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, BatchRequestConfig, Methods, PingConfig, Server,
    ServerConfig, ServerHandle,
};
use sdm_proto::SdmApiServer;

use super::api::Rpc;
use super::calls::{CountCallsLayer, Transport};
use super::middleware::ParamErrorsLayer;
use super::scrape::ScrapeLayer;
use super::vdsm::VdsmNamesLayer;
use crate::metrics::{ConnectionGauge, Dialect};
use crate::service::Agent;
use crate::stomp::Stomp;

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
    crate::metrics::io_backend(match agent.engine.backend() {
        sdm_io::BackendKind::IoUring => "io_uring",
        _ => "sync",
    });
    let jobs = agent.jobs.clone();
    let max_response = s.max_response_body_bytes as usize;
    let stomp_cfg = s.clone();
    let methods: Methods = Rpc::new(agent).into_rpc().into();
    let stomp = Stomp::new(&stomp_cfg, &jobs);
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
                    tower::ServiceBuilder::new()
                        .layer(ScrapeLayer)
                        .layer(crate::conn::UpgradeGateLayer::new(&reg)),
                )
                .set_rpc_middleware(
                    RpcServiceBuilder::new()
                        .layer(crate::conn::CallGateLayer::new(&reg))
                        .layer(CountCallsLayer {
                            transport: Transport::Http(reg.state.clone()),
                            max_response,
                        })
                        .layer(param_errors)
                        .layer(VdsmNamesLayer),
                )
                .build(methods.clone(), stop.clone());
            let stomp = stomp.prepare(&reg, |id| {
                super::direct::stomp_service(&methods, &reg, id as usize, max_response)
            });
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
                                    let s = stop.clone();
                                    serve_detected(stream, stomp, stop, move |io| {
                                        serve_with_graceful_shutdown(io, svc, s.shutdown())
                                    })
                                    .await
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
                            let s = stop.clone();
                            serve_detected(sock, stomp, stop, move |io| {
                                serve_with_graceful_shutdown(io, svc, s.shutdown())
                            })
                            .await
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

/// How long a client has to send enough bytes to tell its protocol (VDSM waits as long).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads until the first bytes tell the protocol, then serves the connection in it: `http`
/// gets the stream with those bytes put back.
async fn serve_detected<S, F, Fut>(
    mut stream: crate::conn::Guarded<S>,
    stomp: crate::stomp::Pending<super::direct::StompRpc>,
    stop: jsonrpsee::server::StopHandle,
    http: F,
) -> Result<(), jsonrpsee::core::BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(crate::conn::Rewind<crate::conn::Guarded<S>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), jsonrpsee::core::BoxError>>,
{
    let mut prefix = BytesMut::with_capacity(1024);
    let verdict = tokio::time::timeout(DETECT_TIMEOUT, async {
        loop {
            match sdm_stomp::detect(&prefix) {
                Protocol::NeedMore => {}
                p => return Ok(p),
            }
            if stream.read_buf(&mut prefix).await? == 0 {
                return Ok::<_, std::io::Error>(Protocol::Neither);
            }
        }
    })
    .await;
    match verdict {
        Ok(Ok(Protocol::Http)) => {
            let stream = crate::conn::Rewind::new(
                prefix,
                stream.with_gauge(ConnectionGauge::new(Dialect::Http)),
            );
            http(stream).await
        }
        Ok(Ok(Protocol::Stomp)) => {
            tokio::select! {
                _ = stomp.serve(stream, prefix) => {}
                _ = stop.shutdown() => {}
            }
            Ok(())
        }
        Ok(Ok(_)) => {
            tracing::debug!("closing a connection that speaks neither HTTP nor STOMP");
            Ok(())
        }
        Ok(Err(e)) => Err(Box::new(e)),
        Err(_) => {
            tracing::debug!("closing a connection silent for {DETECT_TIMEOUT:?}");
            Ok(())
        }
    }
}
