//! The per-connection middleware: [`CallGate`] (RPC: marks calls, counts unanswerable
//! messages) and [`UpgradeGate`] (HTTP: a WebSocket upgrade only as the first request).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::core::server::MethodResponse;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use jsonrpsee::types::Request;

use super::table::{Busy, ConnState, Registration};

/// The service an RPC middleware of the agent wraps: jsonrpsee's, answering calls, batches and
/// notifications alike with a `MethodResponse` (a shorthand for those bounds).
pub trait RpcInner:
    RpcServiceT<
        MethodResponse = MethodResponse,
        BatchResponse = MethodResponse,
        NotificationResponse = MethodResponse,
    > + Send
    + Sync
    + Clone
    + 'static
{
}

impl<S> RpcInner for S where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static
{
}

/// A middleware of one connection: the service it wraps and the connection's state. `K` says
/// which gate it is ([`Calls`] or [`Upgrades`]).
#[derive(Clone)]
pub struct Gate<S, K> {
    inner: S,
    state: Arc<ConnState>,
    kind: PhantomData<K>,
}

/// The layer that puts a [`Gate`] of kind `K` in front of a service, for one connection.
#[derive(Clone)]
pub struct GateLayer<K>(Arc<ConnState>, PhantomData<K>);

impl<K> GateLayer<K> {
    /// The layer for a registered connection.
    pub fn new(reg: &Registration) -> GateLayer<K> {
        GateLayer(reg.state.clone(), PhantomData)
    }
}

impl<S, K: Clone> tower::Layer<S> for GateLayer<K> {
    type Service = Gate<S, K>;
    fn layer(&self, inner: S) -> Gate<S, K> {
        Gate {
            inner,
            state: self.0.clone(),
            kind: PhantomData,
        }
    }
}

/// RPC middleware of one connection: marks it served at its first call, and counts the
/// WebSocket messages that will get no answer (notifications) so that [`super::Guarded`]'s
/// count of unanswered requests stays exact.
#[derive(Clone, Copy, Debug)]
pub struct Calls;

/// See [`Calls`].
pub type CallGate<S> = Gate<S, Calls>;
/// Layer of [`CallGate`].
pub type CallGateLayer = GateLayer<Calls>;

/// HTTP middleware of one connection: a WebSocket upgrade is accepted only as the first
/// request of a connection, where [`super::Guarded`] knows the exact byte at which frames
/// start; a later one is answered 400 and the connection closed.
#[derive(Clone, Copy, Debug)]
pub struct Upgrades;

/// See [`Upgrades`].
pub type UpgradeGate<S> = Gate<S, Upgrades>;
/// Layer of [`UpgradeGate`].
pub type UpgradeGateLayer = GateLayer<Upgrades>;

impl<S> Gate<S, Calls> {
    fn unanswerable(&self) {
        self.state.unanswerable.fetch_add(1, Ordering::AcqRel);
        self.state.wake_reader();
    }
}

impl<S: RpcInner> RpcServiceT for Gate<S, Calls> {
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let busy = Busy::new(&self.state);
        let call = self.inner.call(request);
        async move {
            let rp = call.await;
            drop(busy);
            rp
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let busy = Busy::new(&self.state);
        let this = self.clone();
        async move {
            let rp = this.inner.batch(batch).await;
            drop(busy);
            // A batch of notifications only is answered with nothing at all.
            if !rp.is_batch() && !rp.is_method_call() {
                this.unanswerable();
            }
            rp
        }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.state.served.store(true, Ordering::Relaxed);
        self.unanswerable();
        self.inner.notification(n)
    }
}

fn asks_for_websocket<B>(req: &HttpRequest<B>) -> bool {
    req.headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(9)
                .any(|w| w == b"websocket")
        })
}

impl<S, B> tower::Service<HttpRequest<B>> for Gate<S, Upgrades>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        let first = self.state.requests.fetch_add(1, Ordering::Relaxed) == 0;
        if !first && asks_for_websocket(&req) {
            let mut rp = HttpResponse::new(HttpBody::from(
                "a WebSocket upgrade must be the first request of a connection\n",
            ));
            *rp.status_mut() = http::StatusCode::BAD_REQUEST;
            rp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return Box::pin(async move { Ok(rp) });
        }
        Box::pin(self.inner.call(req))
    }
}
