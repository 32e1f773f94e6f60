//! The method table as a service for transports jsonrpsee does not serve itself (STOMP):
//! [`Direct`] calls the registered methods, and [`stomp_service`] puts the same middleware in
//! front of it as every HTTP and WebSocket connection gets, so a verb has one implementation
//! and one behaviour (parameter names, parameter errors, counting) whatever carries it.

use std::future::Future;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::core::server::{MethodCallback, MethodResponse, Methods};
use jsonrpsee::types::{ErrorCode, ErrorObject, Request};
use jsonrpsee::ConnectionId;
use tower::Layer;

use super::calls::{CountCalls, CountCallsLayer, Transport};
use super::middleware::{batch_by_call, ParamErrors, ParamErrorsLayer};
use super::vdsm::{VdsmNames, VdsmNamesLayer};
use crate::conn::{CallGate, CallGateLayer, Registration};

/// Calls the methods of a [`Methods`] table; subscriptions are refused (they need a
/// WebSocket; STOMP clients subscribe to `jms.queue.events` instead).
#[derive(Clone)]
pub struct Direct {
    methods: Methods,
    conn_id: ConnectionId,
    max_response: usize,
}

impl RpcServiceT for Direct {
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, req: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let (conn_id, max) = (self.conn_id, self.max_response);
        let Request {
            id,
            method,
            params,
            extensions,
            ..
        } = req;
        let id = id.into_owned();
        let callback = self
            .methods
            .method_with_name(&method)
            .map(|(_, m)| m.clone());
        async move {
            let params = jsonrpsee::types::Params::new(params.as_ref().map(|p| p.get()));
            match callback {
                None => MethodResponse::error(id, ErrorObject::from(ErrorCode::MethodNotFound)),
                Some(MethodCallback::Async(cb)) => {
                    cb(id, params.into_owned(), conn_id, max, extensions).await
                }
                Some(MethodCallback::Sync(cb)) => cb(id, params, max, extensions),
                Some(MethodCallback::Subscription(_) | MethodCallback::Unsubscription(_)) => {
                    MethodResponse::error(
                        id,
                        ErrorObject::owned(
                            ErrorCode::MethodNotFound.code(),
                            format!(
                                "{method} needs a WebSocket; over STOMP, subscribe to {} for job events",
                                sdm_stomp::EVENTS_QUEUE
                            ),
                            None::<()>,
                        ),
                    )
                }
            }
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let this = self.clone();
        async move { batch_by_call(&this, batch, this.max_response).await }
    }

    fn notification<'a>(
        &self,
        _n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        // As jsonrpsee's own service: a notification is not run and gets no answer.
        std::future::ready(MethodResponse::notification())
    }
}

/// The service one STOMP connection's calls go through: the connection's call gate, call
/// counting, parameter errors and VDSM's names, as on HTTP, in front of the method table.
pub type StompRpc = CallGate<CountCalls<ParamErrors<VdsmNames<Direct>>>>;

/// Builds [`StompRpc`] for a registered connection.
pub fn stomp_service(
    methods: &Methods,
    reg: &Registration,
    conn_id: usize,
    max_response: usize,
) -> StompRpc {
    let direct = Direct {
        methods: methods.clone(),
        conn_id: ConnectionId(conn_id),
        max_response,
    };
    let inner = VdsmNamesLayer.layer(direct);
    let inner = ParamErrorsLayer(max_response).layer(inner);
    let inner = CountCallsLayer {
        transport: Transport::Stomp,
        max_response,
    }
    .layer(inner);
    CallGateLayer::new(reg).layer(inner)
}
