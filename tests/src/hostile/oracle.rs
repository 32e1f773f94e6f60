//! The oracle: what the agent must answer for a request, decided by the same `sdm_proto`
//! parameter types the agent decodes with, and the invariants its guarding value types keep.

use serde_json::Value;

use super::api::Api;
use super::case::Expect;

macro_rules! de {
    ($t:ty, $text:expr) => {
        serde_json::from_str::<$t>($text)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
}

/// What VDSM's rule for `Host.getJobs` (an id that is not a canonical UUID matches no job)
/// makes of its parameter text, as the agent applies it before decoding.
enum Relaxed {
    /// Nothing to change.
    Same,
    /// Every id given was malformed: nothing can match, the answer is `{}`.
    Nothing,
    /// The text without the malformed ids.
    Params(String),
}

fn relax_job_ids(params: &str) -> Relaxed {
    let Ok(Value::Object(mut p)) = serde_json::from_str::<Value>(params) else {
        return Relaxed::Same;
    };
    let Some(Value::Array(ids)) = p.get_mut("job_ids") else {
        return Relaxed::Same;
    };
    let before = ids.len();
    ids.retain(|v| v.as_str().is_some_and(sdm_proto::is_canonical_uuid));
    match (before, ids.len()) {
        (b, a) if a == b => Relaxed::Same,
        (_, 0) => Relaxed::Nothing,
        _ => Relaxed::Params(Value::Object(p).to_string()),
    }
}

/// Decodes the parameter text of `method` as the agent does for named parameters (an object):
/// Ok when it decodes. Methods without parameters never decode anything.
pub fn decode(method: &str, params: &str) -> Result<(), String> {
    use sdm_proto::api::*;
    match method {
        "Host.getCapabilities" | "Host.getStats" | "StorageDomain.list" => Ok(()),
        "Host.getJobs" => match relax_job_ids(params) {
            Relaxed::Nothing => Ok(()),
            Relaxed::Same => de!(GetJobsParams, params),
            Relaxed::Params(p) => de!(GetJobsParams, &p),
        },
        "Job.abort" => de!(AbortJobParams, params),
        "Job.delete" => de!(DeleteJobParams, params),
        "Job.subscribe" => de!(SubscribeJobParams, params),
        "StorageDomain.create" => de!(CreateDomainParams, params),
        "StorageDomain.attach" => de!(AttachDomainParams, params),
        "StorageDomain.detach" => de!(DetachDomainParams, params),
        "StorageDomain.getImages" => de!(GetImagesParams, params),
        "StorageDomain.getInfo" => de!(GetDomainInfoParams, params),
        "Task.getStatus" => de!(TaskStatusParams, params),
        "Task.getInfo" => de!(TaskInfoParams, params),
        "Task.clear" => de!(ClearTaskParams, params),
        "Task.stop" => de!(StopTaskParams, params),
        "StorageDomain.check" => de!(CheckDomainParams, params),
        "StorageDomain.fix" => de!(FixDomainParams, params),
        "Image.getVolumes" => de!(GetVolumesParams, params),
        "Image.getStatus" => de!(GetImageStatusParams, params),
        "Volume.create" => de!(CreateVolumeParams, params),
        "Volume.getInfo" => de!(GetVolumeInfoParams, params),
        "Volume.checksum" => de!(ChecksumVolumeParams, params),
        "SDM.copy_data" => de!(CopyDataParams, params),
        "SDM.update_volume" => de!(UpdateVolumeParams, params),
        "Image.move" => de!(MoveImageParams, params),
        "Image.delete" => de!(DeleteImageParams, params),
        "SDM.merge" => de!(MergeParams, params),
        "SDM.amend_volume" => de!(AmendVolumeParams, params),
        "SDM.sparsify_volume" => de!(SparsifyVolumeParams, params),
        "SDM.add_bitmap" => de!(AddBitmapParams, params),
        "SDM.remove_bitmap" => de!(RemoveBitmapParams, params),
        "SDM.clear_bitmaps" => de!(ClearBitmapsParams, params),
        other => panic!("hostile.rs has no decoder for {other}: add its parameter type"),
    }
}

macro_rules! roundtrip {
    ($t:ty, $text:expr) => {{
        match serde_json::from_str::<$t>($text) {
            Err(_) => Ok(false),
            Ok(p) => {
                let v = serde_json::to_value(&p).map_err(|e| format!("encode: {e}"))?;
                let again: $t = serde_json::from_value(v.clone())
                    .map_err(|e| format!("{v} does not decode again: {e}"))?;
                let v2 = serde_json::to_value(&again).map_err(|e| format!("encode: {e}"))?;
                if v2 != v {
                    return Err(format!("decode/encode not stable: {v} then {v2}"));
                }
                Ok(true)
            }
        }
    }};
}

/// Decodes the named parameters of `method`, encodes what decoded and decodes that again:
/// Ok(true) when it decoded and the round trip is stable, Ok(false) when it did not decode.
pub fn roundtrip(method: &str, params: &str) -> Result<bool, String> {
    use sdm_proto::api::*;
    match method {
        "Host.getJobs" => roundtrip!(GetJobsParams, params),
        "Job.abort" => roundtrip!(AbortJobParams, params),
        "Job.delete" => roundtrip!(DeleteJobParams, params),
        "Job.subscribe" => roundtrip!(SubscribeJobParams, params),
        "StorageDomain.create" => roundtrip!(CreateDomainParams, params),
        "StorageDomain.attach" => roundtrip!(AttachDomainParams, params),
        "StorageDomain.detach" => roundtrip!(DetachDomainParams, params),
        "StorageDomain.getImages" => roundtrip!(GetImagesParams, params),
        "StorageDomain.getInfo" => roundtrip!(GetDomainInfoParams, params),
        "Task.getStatus" => roundtrip!(TaskStatusParams, params),
        "Task.getInfo" => roundtrip!(TaskInfoParams, params),
        "Task.clear" => roundtrip!(ClearTaskParams, params),
        "Task.stop" => roundtrip!(StopTaskParams, params),
        "StorageDomain.check" => roundtrip!(CheckDomainParams, params),
        "StorageDomain.fix" => roundtrip!(FixDomainParams, params),
        "Image.getVolumes" => roundtrip!(GetVolumesParams, params),
        "Image.getStatus" => roundtrip!(GetImageStatusParams, params),
        "Volume.create" => roundtrip!(CreateVolumeParams, params),
        "Volume.getInfo" => roundtrip!(GetVolumeInfoParams, params),
        "Volume.checksum" => roundtrip!(ChecksumVolumeParams, params),
        "SDM.copy_data" => roundtrip!(CopyDataParams, params),
        "SDM.update_volume" => roundtrip!(UpdateVolumeParams, params),
        "Image.move" => roundtrip!(MoveImageParams, params),
        "Image.delete" => roundtrip!(DeleteImageParams, params),
        "SDM.merge" => roundtrip!(MergeParams, params),
        "SDM.amend_volume" => roundtrip!(AmendVolumeParams, params),
        "SDM.sparsify_volume" => roundtrip!(SparsifyVolumeParams, params),
        "SDM.add_bitmap" => roundtrip!(AddBitmapParams, params),
        "SDM.remove_bitmap" => roundtrip!(RemoveBitmapParams, params),
        "SDM.clear_bitmaps" => roundtrip!(ClearBitmapsParams, params),
        _ => Ok(false),
    }
}

/// Checks what the guarding value types accept in `v` and every value inside it: a UUID is
/// canonical (safe as a path component), a size fits in i64, a capacity is positive, a
/// generation is 0-999, a description has no control characters and at most 4096 bytes.
pub fn value_invariants(v: &Value) -> Result<(), String> {
    use sdm_proto::*;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if let Ok(u) = serde_json::from_value::<Uuid>(v.clone()) {
            if !is_canonical_uuid(u.as_str()) || u.as_str().contains(['/', '.', '\0']) {
                return Err(format!("{v} accepted as the UUID {u:?}"));
            }
        }
        if let Ok(s) = serde_json::from_value::<Size>(v.clone()) {
            if s.0 > MAX_SIZE {
                return Err(format!("{v} accepted as the size {s:?}"));
            }
        }
        if let Ok(c) = serde_json::from_value::<Capacity>(v.clone()) {
            if c.get() == 0 || c.get() > MAX_SIZE {
                return Err(format!("{v} accepted as the capacity {c:?}"));
            }
        }
        if let Ok(g) = serde_json::from_value::<Generation>(v.clone()) {
            if g.0 > MAX_GENERATION {
                return Err(format!("{v} accepted as the generation {g:?}"));
            }
        }
        if let Ok(d) = serde_json::from_value::<Description>(v.clone()) {
            if d.as_str().chars().any(char::is_control) || d.as_str().len() > MAX_DESCRIPTION_BYTES
            {
                return Err(format!("{v} accepted as a description"));
            }
        }
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    Ok(())
}

/// What `method` must answer for parameters given as `params` (raw JSON text, None: absent).
pub fn expect_for(api: &Api, method: &str, params: Option<&str>) -> Expect {
    let fields = api.params(method);
    if fields.is_empty() {
        return Expect::Ok;
    }
    let any_required = fields.iter().any(|f| f.required);
    // Parameters that are all optional may be left out entirely (JSON-RPC 2.0 §4.2; the
    // contract's `Host.getJobs(job_type?, job_ids?)`: empty filter = all jobs).
    if !any_required && matches!(params.map(str::trim), None | Some("null" | "[]" | "{}")) {
        return Expect::Ok;
    }
    let t = params.map(str::trim_start).unwrap_or("");
    if t.starts_with('{') {
        return match decode(method, t) {
            Ok(()) => Expect::Answer,
            Err(_) => Expect::Invalid,
        };
    }
    // Not an object: the server decodes by position.
    match params.map(str::trim) {
        None | Some("null") | Some("[]") if any_required => Expect::Invalid,
        _ => Expect::Answer,
    }
}
