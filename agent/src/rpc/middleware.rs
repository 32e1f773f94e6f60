//! [`ParamErrors`]: undecodable parameters answered with the contract's code, over-long error
//! messages cut.

use std::future::Future;

use jsonrpsee::core::middleware::{Batch, BatchEntry, Notification, RpcServiceT};
use jsonrpsee::core::server::{BatchResponseBuilder, MethodResponse};
use jsonrpsee::types::error::INVALID_PARAMS_CODE;
use jsonrpsee::types::{ErrorObjectOwned, Request};
use sdm_proto::ApiError;

use crate::conn::RpcInner;

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

impl<S: RpcInner> RpcServiceT for ParamErrors<S> {
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
        async move { batch_by_call(&this, batch, this.max_response).await }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}

/// Answers a batch by sending each of its calls through `svc.call` (and notifications through
/// `svc.notification`), so that a middleware's per-call work applies inside batches too; the
/// answers are gathered up to `max_response` bytes.
pub(crate) async fn batch_by_call<S>(
    svc: &S,
    batch: Batch<'_>,
    max_response: usize,
) -> MethodResponse
where
    S: RpcServiceT<
        MethodResponse = MethodResponse,
        BatchResponse = MethodResponse,
        NotificationResponse = MethodResponse,
    >,
{
    let mut out = BatchResponseBuilder::new_with_limit(max_response);
    let mut got_notification = false;
    for entry in batch.into_iter() {
        let rp = match entry {
            Ok(BatchEntry::Call(req)) => svc.call(req).await,
            Ok(BatchEntry::Notification(n)) => {
                got_notification = true;
                svc.notification(n).await;
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

/// Layer of [`ParamErrors`]; the value is the largest batch answer, in bytes.
#[derive(Clone, Copy)]
pub struct ParamErrorsLayer(pub usize);

impl<S> tower::Layer<S> for ParamErrorsLayer {
    type Service = ParamErrors<S>;
    fn layer(&self, inner: S) -> ParamErrors<S> {
        ParamErrors {
            inner,
            max_response: self.0,
        }
    }
}
