//! The listener: binds, accepts, registers each connection (`crate::conn`), wraps it (TLS,
//! then `Guarded`) and serves it with the connection's own middleware.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::middleware::RpcServiceBuilder;
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, BatchRequestConfig, Methods, PingConfig, Server,
    ServerConfig, ServerHandle,
};
use sdm_proto::SdmApiServer;

use super::api::Rpc;
use super::middleware::ParamErrorsLayer;
use crate::service::Agent;

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
