//! `GET /metrics` on the HTTP side: the Prometheus (OpenMetrics) text of `crate::metrics`,
//! answered in front of jsonrpsee without touching the method table or any job or storage
//! lock. Every other request passes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};

/// See the module documentation.
#[derive(Clone)]
pub struct Scrape<S> {
    inner: S,
}

/// Layer of [`Scrape`].
#[derive(Clone, Copy, Default)]
pub struct ScrapeLayer;

impl<S> tower::Layer<S> for ScrapeLayer {
    type Service = Scrape<S>;
    fn layer(&self, inner: S) -> Scrape<S> {
        Scrape { inner }
    }
}

impl<S, B> tower::Service<HttpRequest<B>> for Scrape<S>
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
        if req.uri().path() != "/metrics" {
            return Box::pin(self.inner.call(req));
        }
        let mut rp = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
            let mut rp = HttpResponse::new(HttpBody::from(crate::metrics::encode()));
            rp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            rp
        } else {
            let mut rp = HttpResponse::new(HttpBody::from("use GET /metrics\n"));
            *rp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            rp
        };
        rp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Box::pin(async move { Ok(rp) })
    }
}
