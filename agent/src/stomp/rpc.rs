//! A SEND's body as JSON-RPC: one request or a batch, run through the connection's service
//! (the same method table and middleware as HTTP), every answer routed on its own by its
//! request id.
//!
//! VDSM answers one response as a bare object, even for a one-element batch (vdsm-client
//! always sends one), and fails to deliver the array it builds for larger batches. sdm sends
//! every response of a batch as its own MESSAGE, a bare object each, routed by its id like a
//! single request's: a client that reads VDSM's single replies reads these too.

use bytes::Bytes;
use jsonrpsee::core::middleware::Notification;
use jsonrpsee::core::server::MethodResponse;
use jsonrpsee::types::{ErrorCode, ErrorObject, Id, InvalidRequest, Request};
use serde_json::value::RawValue;

use super::router::Broker;
use crate::conn::RpcInner;

/// What one body produced: `(id, response)` pairs, `id` being the request id's JSON text
/// (None for errors that have no id).
type Answers = Vec<(Option<String>, Bytes)>;

fn id_key(id: &Id<'_>) -> Option<String> {
    match id {
        Id::Null => None,
        id => serde_json::to_string(id).ok(),
    }
}

fn error(id: Id<'static>, code: ErrorCode) -> (Option<String>, Bytes) {
    let key = id_key(&id);
    let rp = MethodResponse::error(id, ErrorObject::from(code));
    (key, Bytes::copy_from_slice(rp.as_json().get().as_bytes()))
}

fn answer(key: Option<String>, rp: MethodResponse) -> Option<(Option<String>, Bytes)> {
    // Notifications get no answer.
    if rp.is_notification() {
        return None;
    }
    Some((key, Bytes::copy_from_slice(rp.as_json().get().as_bytes())))
}

/// Ids of the requests in `body`, as the broker keys them (to record their `reply-to`
/// before any of them can be answered).
pub fn request_ids(body: &[u8]) -> Vec<Option<String>> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        id: Option<Id<'a>>,
    }
    let key = |raw: &RawValue| {
        serde_json::from_str::<IdOnly<'_>>(raw.get())
            .ok()
            .and_then(|r| r.id.as_ref().and_then(id_key))
    };
    match serde_json::from_slice::<&RawValue>(body) {
        Ok(raw) if raw.get().trim_start().starts_with('[') => {
            serde_json::from_str::<Vec<&RawValue>>(raw.get())
                .map(|items| items.into_iter().map(key).collect())
                .unwrap_or_default()
        }
        Ok(raw) => vec![key(raw)],
        Err(_) => Vec::new(),
    }
}

/// Runs the JSON-RPC text `body` through `svc` and returns every answer.
pub async fn run<S: RpcInner>(svc: &S, body: &[u8], max_batch: usize) -> Answers {
    let Ok(raw) = serde_json::from_slice::<&RawValue>(body) else {
        return vec![error(Id::Null, ErrorCode::ParseError)];
    };
    let text = raw.get();
    if !text.trim_start().starts_with('[') {
        return one(svc, text).await.into_iter().collect();
    }
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) else {
        return vec![error(Id::Null, ErrorCode::ParseError)];
    };
    if items.is_empty() {
        return vec![error(Id::Null, ErrorCode::InvalidRequest)];
    }
    if items.len() > max_batch {
        let rp = MethodResponse::error(
            Id::Null,
            jsonrpsee::types::error::reject_too_big_batch_request(max_batch),
        );
        return vec![(None, Bytes::copy_from_slice(rp.as_json().get().as_bytes()))];
    }
    let mut out = Vec::with_capacity(items.len());
    // In order, one after the other, as HTTP batches run.
    for item in items {
        out.extend(one(svc, item.get()).await);
    }
    out
}

async fn one<S: RpcInner>(svc: &S, text: &str) -> Option<(Option<String>, Bytes)> {
    if let Ok(req) = serde_json::from_str::<Request<'_>>(text) {
        let key = id_key(&req.id);
        return answer(key, svc.call(req).await);
    }
    if let Ok(n) = serde_json::from_str::<Notification<'_>>(text) {
        svc.notification(n).await;
        return None;
    }
    let id = serde_json::from_str::<InvalidRequest<'_>>(text)
        .map(|r| r.id.into_owned())
        .unwrap_or(Id::Null);
    Some(error(id, ErrorCode::InvalidRequest))
}

/// Delivers `answers` through the broker.
pub fn deliver(broker: &Broker, answers: Answers) {
    for (id, body) in answers {
        broker.reply(id.as_deref(), body);
    }
}
