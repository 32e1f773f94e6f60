//! [`VdsmNames`]: VDSM's parameter names and filters, made sdm's before the generated decoding.
//!
//! The method table (`sdm_proto::api`) lists VDSM's name of a parameter as an alias
//! (`Volume.getInfo`'s `storagedomainID` for `sd_id`); jsonrpsee's generated decoding knows only
//! one name per parameter, so this middleware renames aliases first. When a request carries a
//! parameter under both names, sdm's name wins and the alias is dropped. It is the same for
//! every transport: HTTP, WebSocket and STOMP calls all pass here.
//!
//! It also gives `Host.getJobs` VDSM's filter rule: an id in `job_ids` that is not a canonical
//! UUID matches no job, instead of failing the whole call.

use std::borrow::Cow;
use std::future::Future;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::core::server::MethodResponse;
use jsonrpsee::types::Request;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::conn::RpcInner;

/// See the module documentation.
#[derive(Clone)]
pub struct VdsmNames<S> {
    inner: S,
}

/// Layer of [`VdsmNames`].
#[derive(Clone, Copy, Default)]
pub struct VdsmNamesLayer;

impl<S> tower::Layer<S> for VdsmNamesLayer {
    type Service = VdsmNames<S>;
    fn layer(&self, inner: S) -> VdsmNames<S> {
        VdsmNames { inner }
    }
}

/// What the rewrite decided for one request.
enum Rewritten {
    /// Pass on these parameters (None: unchanged).
    Params(Option<Box<RawValue>>),
    /// Answer this result at once.
    Answer(Value),
}

/// Renames aliases in `params` (a JSON object) for `method`; false when there was none.
fn rename(method: &str, params: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (alias, name) in sdm_proto::api::param_aliases(method) {
        let Some(v) = params.remove(alias) else {
            continue;
        };
        changed = true;
        // sdm's own name wins over VDSM's.
        params.entry(name.to_string()).or_insert(v);
    }
    changed
}

/// `Host.getJobs`: ids that are not canonical UUIDs match nothing. When every given id is
/// such, nothing can match: the answer is `{}`.
fn relax_job_ids(params: &mut Map<String, Value>) -> Option<Rewritten> {
    let Some(Value::Array(ids)) = params.get_mut("job_ids") else {
        return None;
    };
    let before = ids.len();
    ids.retain(|v| v.as_str().is_some_and(sdm_proto::is_canonical_uuid));
    if ids.len() == before {
        return None;
    }
    if ids.is_empty() {
        return Some(Rewritten::Answer(Value::Object(Map::new())));
    }
    None
}

fn rewrite(request: &Request<'_>) -> Rewritten {
    let method = request.method_name();
    let getjobs = method == "Host.getJobs";
    let Some(raw) = request.params.as_ref() else {
        return Rewritten::Params(None);
    };
    // Cheap test first: most calls carry no alias and are not Host.getJobs.
    let text = raw.get();
    let mentions_alias =
        sdm_proto::api::param_aliases(method).any(|(a, _)| text.contains(&format!("\"{a}\"")));
    if !mentions_alias && !getjobs {
        return Rewritten::Params(None);
    }
    let Ok(Value::Object(mut params)) = serde_json::from_str::<Value>(text) else {
        // Not an object: the generated decoding reports it.
        return Rewritten::Params(None);
    };
    let mut changed = rename(method, &mut params);
    if getjobs {
        let count = |p: &Map<String, Value>| p.get("job_ids").map(|v| v.to_string());
        let before = count(&params);
        if let Some(answer) = relax_job_ids(&mut params) {
            return answer;
        }
        changed |= count(&params) != before;
    }
    if !changed {
        return Rewritten::Params(None);
    }
    match serde_json::value::to_raw_value(&Value::Object(params)) {
        Ok(raw) => Rewritten::Params(Some(raw)),
        Err(_) => Rewritten::Params(None),
    }
}

impl<S: RpcInner> RpcServiceT for VdsmNames<S> {
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(
        &self,
        mut request: Request<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        let inner = self.inner.clone();
        let decided = rewrite(&request);
        async move {
            match decided {
                Rewritten::Answer(v) => {
                    let id = request.id().into_owned();
                    MethodResponse::response(id, jsonrpsee::ResponsePayload::success(v), usize::MAX)
                }
                Rewritten::Params(p) => {
                    if let Some(p) = p {
                        request.params = Some(Cow::Owned(p));
                    }
                    inner.call(request).await
                }
            }
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // ParamErrors (outside) sends each call of a batch through `call`.
        self.inner.batch(batch)
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(method: &str, params: Value) -> Result<Value, Value> {
        let text = params.to_string();
        let raw = RawValue::from_string(text).unwrap();
        let req = Request::borrowed(method, Some(&raw), jsonrpsee::types::Id::Number(1));
        match rewrite(&req) {
            Rewritten::Answer(v) => Err(v),
            Rewritten::Params(None) => Ok(params),
            Rewritten::Params(Some(p)) => Ok(serde_json::from_str(p.get()).unwrap()),
        }
    }

    #[test]
    fn vdsm_names_become_sdm_names_and_sdm_names_win() {
        let got = run(
            "Volume.getInfo",
            json!({"storagepoolID": "p", "storagedomainID": "a", "imageID": "b", "volumeID": "c"}),
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"storagepoolID": "p", "sd_id": "a", "img_id": "b", "vol_id": "c"})
        );
        let mixed = run(
            "Volume.getInfo",
            json!({"sd_id": "mine", "storagedomainID": "theirs"}),
        )
        .unwrap();
        assert_eq!(mixed, json!({"sd_id": "mine"}));
        let untouched = json!({"job_id": "x", "source": {}});
        assert_eq!(run("SDM.copy_data", untouched.clone()).unwrap(), untouched);
    }

    #[test]
    fn malformed_job_ids_match_nothing() {
        let good = "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60";
        assert_eq!(
            run("Host.getJobs", json!({"job_ids": ["NOT-A-UUID", 7]})),
            Err(json!({}))
        );
        assert_eq!(
            run("Host.getJobs", json!({"job_ids": ["X", good]})).unwrap(),
            json!({"job_ids": [good]})
        );
        assert_eq!(
            run("Host.getJobs", json!({"job_ids": []})).unwrap(),
            json!({"job_ids": []})
        );
    }
}
