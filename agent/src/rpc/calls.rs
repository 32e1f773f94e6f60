//! [`CountCalls`]: counts every call and every error answer by method, code and transport
//! (`crate::metrics`), after [`super::ParamErrors`] has given the error its final code.

use std::future::Future;
use std::sync::Arc;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::core::server::MethodResponse;
use jsonrpsee::types::Request;

use super::middleware::batch_by_call;
use crate::conn::{ConnState, RpcInner};
use crate::metrics;

/// Which transport a connection's calls count under.
#[derive(Clone)]
pub enum Transport {
    /// An HTTP connection: "http", or "websocket" once upgraded.
    Http(Arc<ConnState>),
    /// A STOMP connection.
    Stomp,
}

impl Transport {
    fn label(&self) -> &'static str {
        match self {
            Transport::Http(s) if s.is_websocket() => "websocket",
            Transport::Http(_) => "http",
            Transport::Stomp => "stomp",
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct CountCalls<S> {
    inner: S,
    transport: Transport,
    max_response: usize,
}

/// Layer of [`CountCalls`]: the connection's transport and the largest batch answer (bytes).
#[derive(Clone)]
pub struct CountCallsLayer {
    /// The connection's transport.
    pub transport: Transport,
    /// Largest batch answer, bytes.
    pub max_response: usize,
}

impl<S> tower::Layer<S> for CountCallsLayer {
    type Service = CountCalls<S>;
    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls {
            inner,
            transport: self.transport.clone(),
            max_response: self.max_response,
        }
    }
}

impl<S: RpcInner> RpcServiceT for CountCalls<S> {
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let method = metrics::method_label(request.method_name());
        let transport = self.transport.label();
        let call = self.inner.call(request);
        async move {
            let rp = call.await;
            metrics::rpc_call(method, transport, rp.as_error_code());
            rp
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Each call of the batch passes `call` above (and from there the inner middleware).
        let this = self.clone();
        async move { batch_by_call(&this, batch, this.max_response).await }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}
