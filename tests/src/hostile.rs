//! Hostile input for the agent: a generator of malformed and adversarial JSON-RPC requests, and
//! the instruments the hostile-input suite (`tests/tests/hostile.rs`) checks the agent with.
//!
//! The generator is driven by the wire API itself: method names come from
//! `sdm_proto::methods()` and `proto-schema/schema.json`, parameters and their types from the
//! schema. For every field of every method (and every field of the objects they take) it makes
//! wrong JSON types, missing and extra fields, overflowing numbers, non-canonical and traversal
//! IDs, control characters, huge strings, arrays and objects, and deep nesting. What the agent
//! must answer is decided by an oracle, the same `sdm_proto` parameter types the agent decodes
//! with: a request whose parameters do not decode must get InvalidParameterException (1000);
//! one that decodes must get a result or an error with a code of the contract's table.
//!
//! The STOMP mode ([`stomp`]) makes byte streams that break VDSM's STOMP dialect, and random
//! mutations of a valid engine session.
//!
//! Instruments: a minimal WebSocket client (hand-made frames, so that broken ones can be sent),
//! raw HTTP, process figures from `/proc` (RSS, high-water mark, fds, files open for writing),
//! a file-system state with inode, size, times and content hash, and an inotify watch that sees
//! any file opened for writing, created, renamed or deleted.

pub mod stomp;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, RngCore, SeedableRng};
use serde_json::{json, Map, Value};

/// The machine-readable API (methods, parameter types, error table).
pub const SCHEMA: &str = include_str!("../../proto-schema/schema.json");

/// Placeholder string replaced by raw JSON text after serialization (for text no `Value` can
/// hold cheaply: 100 000 levels of nesting, duplicate keys, lone surrogates).
const RAW_MARK: &str = "\u{1}RAW\u{1}";

// ---------------------------------------------------------------------------------------------
// Cases

/// What a case attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A value of the wrong JSON type.
    WrongType,
    /// A required or optional field left out.
    Missing,
    /// An unknown field next to the known ones.
    Extra,
    /// The same field twice.
    Duplicate,
    /// Strings, arrays and objects of hundreds of kilobytes.
    Huge,
    /// Arrays and objects nested up to 100 000 levels.
    Nested,
    /// Integers and numeric strings beyond u16, u64, i64 and f64 ranges.
    Overflow,
    /// Non-canonical UUIDs.
    BadId,
    /// Path traversal and absolute paths aimed at the sentinel directory.
    Traversal,
    /// Control characters (and line separators) in strings.
    Control,
    /// Parameters that are not an object (absent, null, array, scalar).
    Shape,
    /// The JSON-RPC envelope itself (version, id, method).
    Envelope,
    /// Batch requests.
    Batch,
    /// Bodies that are not JSON or not UTF-8.
    Garbage,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 14] = [
        Kind::WrongType,
        Kind::Missing,
        Kind::Extra,
        Kind::Duplicate,
        Kind::Huge,
        Kind::Nested,
        Kind::Overflow,
        Kind::BadId,
        Kind::Traversal,
        Kind::Control,
        Kind::Shape,
        Kind::Envelope,
        Kind::Batch,
        Kind::Garbage,
    ];
}

/// What the agent must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The parameters do not decode: InvalidParameterException (1000).
    Invalid,
    /// They decode: a result, or an error whose code is in the contract's table.
    Answer,
    /// A success (methods without parameters ignore whatever they are sent).
    Ok,
    /// A JSON-RPC error with this code.
    Code(i64),
    /// Any JSON-RPC error with an integer code.
    AnyError,
    /// A batch answer: an array of `n` answers, each a result or a coded error.
    BatchOf(usize),
    /// A notification: no answer, or an error.
    NoAnswer,
    /// Any JSON-RPC answer: a result or an error with an integer code.
    Any,
}

/// One request.
#[derive(Clone, Debug)]
pub struct Case {
    /// What it attacks.
    pub kind: Kind,
    /// The method (empty for envelope-level cases).
    pub method: String,
    /// Human label: method, field and value.
    pub label: String,
    /// The whole JSON-RPC body.
    pub body: Vec<u8>,
    /// What the agent must answer.
    pub expect: Expect,
    /// Part of the quick form (the normal `cargo test` run).
    pub quick: bool,
}

/// Paths and ids the generator aims at.
#[derive(Clone, Debug)]
pub struct Targets {
    /// A directory outside every domain that traversal payloads point at.
    pub sentinel: PathBuf,
    /// The directory domains are created in (`<state>/domains`).
    pub domain_root: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// The API as the schema describes it

/// A field type, resolved from the schema.
#[derive(Clone, Debug)]
pub enum Ty {
    /// A named definition (`$defs/<name>`).
    Named(String),
    /// A plain JSON string.
    Str,
    /// An array of the inner type.
    Array(Box<Ty>),
    /// Anything (opaque JSON).
    Any,
    /// A plain JSON integer (VDSM's integer parameters).
    Int,
    /// A plain JSON boolean.
    Bool,
}

/// A parameter or object field.
#[derive(Clone, Debug)]
pub struct Field {
    /// Wire name.
    pub name: String,
    /// Type.
    pub ty: Ty,
    /// Required (not `Option`).
    pub required: bool,
}

/// The wire API as `proto-schema/schema.json` describes it.
pub struct Api {
    schema: Value,
}

impl Default for Api {
    fn default() -> Self {
        Self::load()
    }
}

impl Api {
    /// Parses the schema and checks it against `sdm_proto::methods()`.
    pub fn load() -> Api {
        let schema: Value = serde_json::from_str(SCHEMA).expect("schema.json parses");
        let api = Api { schema };
        let names = api.methods();
        for m in sdm_proto::methods() {
            assert!(
                names.iter().any(|n| n == m.name),
                "{} is in sdm_proto::methods() but not in schema.json",
                m.name
            );
        }
        api
    }

    /// Every method name (including subscriptions).
    pub fn methods(&self) -> Vec<String> {
        self.schema["methods"]
            .as_object()
            .expect("methods")
            .keys()
            .cloned()
            .collect()
    }

    /// The error table: code → name.
    pub fn error_codes(&self) -> BTreeMap<i64, String> {
        self.schema["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| {
                (
                    e["code"].as_i64().expect("code"),
                    e["name"].as_str().expect("name").to_string(),
                )
            })
            .collect()
    }

    fn def(&self, name: &str) -> &Value {
        let d = &self.schema["$defs"][name];
        assert!(!d.is_null(), "schema.json has no $defs/{name}");
        d
    }

    /// The parameters of `method`.
    pub fn params(&self, method: &str) -> Vec<Field> {
        let r = self.schema["methods"][method]["params"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{method}: params are not a $ref"));
        self.object_fields(def_name(r))
    }

    /// The fields of the object definition `name` (empty for scalars).
    pub fn object_fields(&self, name: &str) -> Vec<Field> {
        let d = self.def(name);
        let required: BTreeSet<&str> = d["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(props) = d["properties"].as_object() else {
            return Vec::new();
        };
        props
            .iter()
            .map(|(k, v)| Field {
                name: k.clone(),
                ty: resolve(v),
                required: required.contains(k.as_str()),
            })
            .collect()
    }

    /// True if `ty` is an object type with fields of its own.
    pub fn is_object(&self, ty: &Ty) -> bool {
        matches!(ty, Ty::Named(n) if !self.object_fields(n).is_empty())
    }

    /// A valid, harmless value of `ty` for field `field`: ids are fresh (unknown to the agent),
    /// paths do not exist, so a request built of these gets a "does not exist" error at most.
    pub fn valid(&self, field: &str, ty: &Ty) -> Value {
        match (field, ty) {
            ("path", _) => json!(format!("/nonexistent-sdm-hostile/{}", fresh_uuid())),
            ("job_type", _) => json!("storage"),
            (_, Ty::Str) => json!("x"),
            (_, Ty::Any) => json!({}),
            (_, Ty::Int) => json!(0),
            (_, Ty::Bool) => json!(false),
            (_, Ty::Array(inner)) => json!([self.valid(field, inner)]),
            (_, Ty::Named(n)) => {
                let fields = self.object_fields(n);
                if fields.is_empty() {
                    self.valid_scalar(n, self.def(n))
                } else {
                    let mut m = Map::new();
                    for f in fields.iter().filter(|f| f.required) {
                        m.insert(f.name.clone(), self.valid(&f.name, &f.ty));
                    }
                    Value::Object(m)
                }
            }
        }
    }

    fn valid_scalar(&self, name: &str, s: &Value) -> Value {
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return e[0].clone();
        }
        if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
            return self.valid_scalar(name, &alts[0]);
        }
        match s.get("type").and_then(Value::as_str) {
            Some("boolean") => json!(false),
            Some("integer") => json!(s.get("minimum").and_then(Value::as_u64).unwrap_or(0)),
            Some("string") => match s.get("pattern").and_then(Value::as_str) {
                Some(p) if p.contains("[0-9a-f]{8}") => json!(fresh_uuid()),
                Some(p) if p.contains("[0-9]") => json!("1"),
                Some(p) if p.contains("true") => json!("true"),
                Some(p) => panic!("hostile.rs: teach valid_scalar the pattern {p} of {name}"),
                None => json!("hostile suite"),
            },
            other => panic!("hostile.rs: teach valid_scalar the type {other:?} of {name}"),
        }
    }

    /// A valid parameter object of `method` (required fields only).
    pub fn baseline(&self, method: &str) -> Value {
        let mut m = Map::new();
        for f in self.params(method).iter().filter(|f| f.required) {
            m.insert(f.name.clone(), self.valid(&f.name, &f.ty));
        }
        Value::Object(m)
    }
}

fn def_name(r: &str) -> &str {
    r.strip_prefix("#/$defs/")
        .unwrap_or_else(|| panic!("unexpected $ref {r}"))
}

fn resolve(v: &Value) -> Ty {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return Ty::Named(def_name(r).to_string());
    }
    if let Some(alts) = v.get("anyOf").and_then(Value::as_array) {
        let inner: Vec<&Value> = alts
            .iter()
            .filter(|a| a.get("type") != Some(&json!("null")))
            .collect();
        assert_eq!(inner.len(), 1, "anyOf other than Option: {v}");
        return resolve(inner[0]);
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.contains(&"array") {
        return Ty::Array(Box::new(resolve(&v["items"])));
    }
    if types.contains(&"string") {
        return Ty::Str;
    }
    if types.contains(&"integer") {
        return Ty::Int;
    }
    if types.contains(&"boolean") {
        return Ty::Bool;
    }
    if types.is_empty() {
        return Ty::Any;
    }
    panic!("hostile.rs: teach resolve the schema {v}")
}

/// A fresh random canonical UUID.
pub fn fresh_uuid() -> String {
    sdm_proto::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------------------------
// The oracle: the agent's own parameter types

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

/// A deterministic generator: the same seed gives the same mutations, so a failing run can be
/// repeated with `SDM_FUZZ_SEED`.
pub struct Rng(StdRng);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

/// Mutates `input` once: flips, inserts a JSON token, deletes or duplicates a range, or splices
/// in part of `other`.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\\",
        "\\u0000",
        "\\ud800",
        "null",
        "true",
        "-",
        "0",
        "1e999",
        "18446744073709551616",
        "-9223372036854775809",
        "999",
        "1000",
        " ",
        "\n",
        "\"../..\"",
        "\"00000000-0000-0000-0000-000000000000\"",
        "\u{1}",
        "\u{2028}",
        "\u{ff}",
    ];
    let mut v = input.to_vec();
    let at = |rng: &mut Rng, v: &Vec<u8>| {
        if v.is_empty() {
            0
        } else {
            rng.below(v.len() + 1)
        }
    };
    match rng.below(6) {
        0 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = at(rng, &v);
            let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
            v.splice(i..i, t.iter().copied());
        }
        2 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = rng.below((v.len() - i).min(64) + 1);
            v.drain(i..i + n);
        }
        3 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = rng.below((v.len() - i).min(64) + 1);
            let part: Vec<u8> = v[i..i + n].to_vec();
            let j = at(rng, &v);
            v.splice(j..j, part);
        }
        4 if !other.is_empty() => {
            let i = rng.below(other.len());
            let n = rng.below((other.len() - i).min(256) + 1);
            let j = at(rng, &v);
            v.splice(j..j, other[i..i + n].iter().copied());
        }
        _ => {
            let i = at(rng, &v);
            let b = rng.next_u64() as u8;
            v.insert(i, b);
        }
    }
    v
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

// ---------------------------------------------------------------------------------------------
// Hostile values

/// A hostile value: either a JSON value or raw JSON text.
#[derive(Clone, Debug)]
pub enum HV {
    /// A value.
    V(Value),
    /// Raw JSON text (valid JSON unless the case says otherwise).
    Raw(String),
}

fn nested_array(depth: usize) -> String {
    let mut s = String::with_capacity(depth * 2);
    s.extend(std::iter::repeat_n('[', depth));
    s.extend(std::iter::repeat_n(']', depth));
    s
}

fn nested_object(depth: usize) -> String {
    let mut s = String::with_capacity(depth * 7 + 1);
    for _ in 0..depth {
        s.push_str("{\"a\":");
    }
    s.push('1');
    s.extend(std::iter::repeat_n('}', depth));
    s
}

/// Every hostile value the generator puts into a field, by kind.
pub fn hostile_values(t: &Targets) -> Vec<(Kind, String, HV)> {
    let u = fresh_uuid();
    let sentinel = t.sentinel.display().to_string();
    let rel_sentinel = sentinel.trim_start_matches('/').to_string();
    let root = t.domain_root.display().to_string();
    let mut v: Vec<(Kind, String, HV)> = Vec::new();
    let mut add = |k: Kind, label: &str, hv: HV| v.push((k, label.to_string(), hv));
    use Kind::*;
    use HV::{Raw, V};

    for (label, val) in [
        ("null", json!(null)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("0", json!(0)),
        ("-1", json!(-1)),
        ("1.5", json!(1.5)),
        ("-0.0", json!(-0.0)),
        ("\"x\"", json!("x")),
        ("empty string", json!("")),
        ("space", json!(" ")),
        ("[]", json!([])),
        ("[null]", json!([null])),
        ("{}", json!({})),
        ("{\"a\":1}", json!({"a": 1})),
        ("array of ids", json!([u.clone(), u.clone()])),
    ] {
        add(WrongType, label, V(val));
    }

    for (label, val) in [
        ("i64::MAX", json!(i64::MAX)),
        ("2^63", json!(1u64 << 63)),
        ("u64::MAX", json!(u64::MAX)),
        ("i64::MIN", json!(i64::MIN)),
        ("999", json!(999)),
        ("1000", json!(1000)),
        ("65535", json!(65535)),
        ("65536", json!(65536)),
        ("2^32", json!(1u64 << 32)),
        ("1e19", json!(1e19)),
        ("1e308", json!(1e308)),
        ("\"9223372036854775807\"", json!("9223372036854775807")),
        ("\"9223372036854775808\"", json!("9223372036854775808")),
        ("\"18446744073709551616\"", json!("18446744073709551616")),
        ("\"-1\"", json!("-1")),
        ("\"+1\"", json!("+1")),
        ("\" 1 \"", json!(" 1 ")),
        ("\"0x10\"", json!("0x10")),
        ("\"1e3\"", json!("1e3")),
        ("20 digits", json!("00000000000000000001")),
        ("21 digits", json!("000000000000000000001")),
        ("arabic digits", json!("\u{661}\u{662}\u{663}")),
        ("\"NaN\"", json!("NaN")),
        ("\"Infinity\"", json!("Infinity")),
    ] {
        add(Overflow, label, V(val));
    }
    add(Overflow, "2^64 literal", Raw("18446744073709551616".into()));
    add(Overflow, "1e400 literal", Raw("1e400".into()));
    add(
        Overflow,
        "-2^64 literal",
        Raw("-18446744073709551616".into()),
    );
    add(Overflow, "100-digit literal", Raw("9".repeat(100)));

    let upper = u.to_uppercase();
    for (label, val) in [
        ("uppercase uuid", upper.clone()),
        ("braced uuid", format!("{{{u}}}")),
        ("uuid without dashes", u.replace('-', "")),
        ("uuid + newline", format!("{u}\n")),
        ("uuid + /..", format!("{u}/..")),
        ("space + uuid", format!(" {u}")),
        ("urn uuid", format!("urn:uuid:{u}")),
        (
            "fullwidth digits",
            u.chars()
                .map(|c| match c {
                    '0'..='9' => char::from_u32(0xFF10 + (c as u32 - '0' as u32)).unwrap(),
                    c => c,
                })
                .collect(),
        ),
        ("uuid with g", format!("{}g", &u[..35])),
        ("_remove_me_ uuid", format!("_remove_me_{u}")),
        ("uuid.meta", format!("{u}.meta")),
        ("uuid.lease", format!("{u}.lease")),
        (
            "36 chars of traversal",
            "../../../../../../../../../../tmp/xx".into(),
        ),
        ("BLANK uuid", "00000000-0000-0000-0000-000000000000".into()),
        ("all-f uuid", "ffffffff-ffff-ffff-ffff-ffffffffffff".into()),
    ] {
        add(BadId, label, V(json!(val)));
    }

    for (label, val) in [
        ("..", "..".to_string()),
        (".", ".".into()),
        ("/", "/".into()),
        ("a/b", "a/b".into()),
        (
            "relative traversal to sentinel",
            format!("../../../../../../../../{rel_sentinel}"),
        ),
        ("sentinel dir", sentinel.clone()),
        ("sentinel victim", format!("{sentinel}/victim")),
        ("root/../sentinel", format!("{root}/../../sentinel")),
        ("root/evil-link", format!("{root}/evil-link")),
        ("percent-encoded", "%2e%2e%2f%2e%2e%2fetc".into()),
        ("backslashes", "..\\..\\..\\etc".into()),
        ("proc root", format!("/proc/self/root{sentinel}")),
        ("file url", format!("file://{sentinel}")),
        ("NUL", "\u{0}".into()),
        ("sentinel NUL .meta", format!("{sentinel}/victim\u{0}.meta")),
        ("/dev/zero", "/dev/zero".into()),
        ("relative name", "sdm-hostile-relative".into()),
    ] {
        add(Traversal, label, V(json!(val)));
    }

    for c in (0u32..0x20).chain([0x7f, 0x85, 0x2028, 0x2029, 0x202e, 0xfeff]) {
        let ch = char::from_u32(c).unwrap();
        add(
            Control,
            &format!("U+{c:04X} inside"),
            V(json!(format!("a{ch}b"))),
        );
    }
    add(
        Control,
        "metadata line injection",
        V(json!("x\nLEGALITY=LEGAL\nGEN=999\nEOF")),
    );
    add(Control, "lone surrogate", Raw("\"a\\ud800b\"".into()));
    add(Control, "escaped NUL run", V(json!("\u{0}".repeat(1000))));

    add(Huge, "900 kB string", V(json!("a".repeat(900_000))));
    add(
        Huge,
        "100k control chars",
        V(json!("\u{1}".repeat(100_000))),
    );
    add(
        Huge,
        "200k-element array",
        Raw(format!("[{}0]", "0,".repeat(199_999))),
    );
    add(
        Huge,
        "20k uuids",
        V(Value::Array((0..20_000).map(|_| json!(u)).collect())),
    );
    add(
        Huge,
        "30k-key object",
        V(Value::Object(
            (0..30_000).map(|i| (format!("k{i}"), json!(i))).collect(),
        )),
    );
    add(Huge, "4097-byte text", V(json!("d".repeat(4097))));

    add(Nested, "64 arrays", Raw(nested_array(64)));
    add(Nested, "127 arrays", Raw(nested_array(127)));
    add(Nested, "129 arrays", Raw(nested_array(129)));
    add(Nested, "10k objects", Raw(nested_object(10_000)));
    add(Nested, "100k arrays", Raw(nested_array(100_000)));
    v
}

// ---------------------------------------------------------------------------------------------
// Building requests

/// `body` (made by [`request_text`] with id 1) with another id.
pub fn with_id(body: &[u8], id: u64) -> Vec<u8> {
    let t = String::from_utf8_lossy(body);
    assert!(
        t.starts_with("{\"jsonrpc\":\"2.0\",\"id\":1,"),
        "not a generated request"
    );
    t.replacen("\"id\":1,", &format!("\"id\":{id},"), 1)
        .into_bytes()
}

/// A JSON-RPC request body with `params` (raw text; None: no params member).
pub fn request_text(method: &str, params: Option<&str>, id: u64) -> String {
    let m = serde_json::to_string(method).unwrap();
    match params {
        Some(p) => format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":{m},\"params\":{p}}}"),
        None => format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":{m}}}"),
    }
}

/// Serializes `v`, replacing the one [`RAW_MARK`] string in it by `raw`.
fn with_raw(v: &Value, raw: Option<&str>) -> String {
    let text = serde_json::to_string(v).unwrap();
    match raw {
        Some(r) => {
            let mark = serde_json::to_string(RAW_MARK).unwrap();
            assert!(text.contains(&mark));
            text.replacen(&mark, r, 1)
        }
        None => text,
    }
}

/// Sets `path` (one or two levels) in `params` to `value` (None: removes it).
fn set_path(params: &mut Value, path: &[&str], value: Option<Value>) {
    let (last, parents) = path.split_last().unwrap();
    let mut obj = params;
    for p in parents {
        obj = obj.get_mut(*p).expect("parent present");
    }
    let m = obj.as_object_mut().expect("object");
    match value {
        Some(v) => {
            m.insert(last.to_string(), v);
        }
        None => {
            m.remove(*last);
        }
    }
}

/// Every generated case (full form); `quick` marks the subset of the quick form.
pub fn generate(api: &Api, t: &Targets) -> Vec<Case> {
    let mut out = Vec::new();
    let values = hostile_values(t);
    let mut field_no = 0usize;
    for method in api.methods() {
        let fields = api.params(&method);
        // Field paths: every parameter, and every field of the objects parameters are.
        let mut paths: Vec<(Vec<String>, Field)> = Vec::new();
        for f in &fields {
            paths.push((vec![f.name.clone()], f.clone()));
            if let Ty::Named(n) = &f.ty {
                for sub in api.object_fields(n) {
                    paths.push((vec![f.name.clone(), sub.name.clone()], sub));
                }
            }
        }
        for (path, field) in &paths {
            field_no += 1;
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let label_path = path.join(".");
            // Start from a valid request that has every parent object of the field.
            let mut base = api.baseline(&method);
            if p.len() == 2 && base.get(p[0]).is_none() {
                let parent = fields.iter().find(|f| f.name == p[0]).unwrap();
                base[p[0]] = api.valid(&parent.name, &parent.ty);
            }
            let mut push = |kind: Kind, what: &str, params: String, quick: bool| {
                let expect = if method == "Job.subscribe" || what == "lone surrogate" {
                    // Over HTTP a subscription is refused whatever its parameters; a lone
                    // surrogate may fail the whole request (parse error) or its parameters.
                    Expect::AnyError
                } else {
                    expect_for(api, &method, Some(&params))
                };
                out.push(Case {
                    kind,
                    method: method.clone(),
                    label: format!("{method} {label_path}: {what}"),
                    body: request_text(&method, Some(&params), 1).into_bytes(),
                    expect,
                    quick,
                });
            };
            // Missing.
            let mut m = base.clone();
            set_path(&mut m, &p, None);
            push(Kind::Missing, "missing", with_raw(&m, None), true);
            // A valid value of an optional field (so that every field is seen valid once).
            if !field.required {
                let mut m = base.clone();
                set_path(&mut m, &p, Some(api.valid(&field.name, &field.ty)));
                push(Kind::Missing, "present and valid", with_raw(&m, None), true);
            }
            // Extra fields next to this one.
            for (i, (name, val)) in [
                ("zz_extra", HV::V(json!(1))),
                ("legal", HV::V(json!("true"))),
                ("", HV::V(json!(null))),
                ("__proto__", HV::V(json!({"polluted": true}))),
                ("nested junk", HV::Raw(nested_array(100_000))),
                ("k".repeat(100_000).as_str(), HV::V(json!(0))),
            ]
            .into_iter()
            .enumerate()
            {
                if p.len() == 1 && i > 1 {
                    // Top-level extras beyond two are covered by the nested ones.
                    continue;
                }
                let mut m = base.clone();
                let mut ep = p.clone();
                ep.pop();
                ep.push(name);
                let raw = match &val {
                    HV::V(v) => {
                        set_path(&mut m, &ep, Some(v.clone()));
                        None
                    }
                    HV::Raw(r) => {
                        set_path(&mut m, &ep, Some(json!(RAW_MARK)));
                        Some(r.as_str())
                    }
                };
                let short: String = name.chars().take(16).collect();
                push(
                    Kind::Extra,
                    &format!("extra {short:?}"),
                    with_raw(&m, raw),
                    i == field_no % 6,
                );
            }
            // Duplicate key: valid first, hostile second (raw text).
            let mut m = base.clone();
            set_path(&mut m, &p, Some(json!(RAW_MARK)));
            let key = serde_json::to_string(p[p.len() - 1]).unwrap();
            let dup = format!("1,{key}:\"dup\"");
            push(
                Kind::Duplicate,
                "duplicate key",
                with_raw(&m, Some(&dup)),
                field_no.is_multiple_of(3),
            );
            // Hostile values.
            for (vi, (kind, what, hv)) in values.iter().enumerate() {
                let mut m = base.clone();
                let raw = match hv {
                    HV::V(v) => {
                        set_path(&mut m, &p, Some(v.clone()));
                        None
                    }
                    HV::Raw(r) => {
                        set_path(&mut m, &p, Some(json!(RAW_MARK)));
                        Some(r.as_str())
                    }
                };
                let quick = (vi + field_no * 7).is_multiple_of(23);
                push(*kind, what, with_raw(&m, raw), quick);
            }
        }
        // Shapes of the params member itself.
        for (what, params) in [
            ("absent", None),
            ("null", Some("null")),
            ("[]", Some("[]")),
            ("[1,2,3]", Some("[1,2,3]")),
            ("string", Some("\"params\"")),
            ("number", Some("42")),
            ("true", Some("true")),
            ("{}", Some("{}")),
        ] {
            let expect = if method == "Job.subscribe" {
                Expect::AnyError
            } else {
                expect_for(api, &method, params)
            };
            out.push(Case {
                kind: Kind::Shape,
                method: method.clone(),
                label: format!("{method} params {what}"),
                body: request_text(&method, params, 1).into_bytes(),
                expect,
                quick: true,
            });
        }
        // The valid baseline.
        let base = with_raw(&api.baseline(&method), None);
        let expect = if method == "Job.subscribe" {
            Expect::AnyError
        } else {
            expect_for(api, &method, Some(&base))
        };
        out.push(Case {
            kind: Kind::Shape,
            method: method.clone(),
            label: format!("{method} valid baseline"),
            body: request_text(&method, Some(&base), 1).into_bytes(),
            expect,
            quick: true,
        });
    }
    out.extend(envelope_cases(api));
    out
}

/// Cases of the JSON-RPC envelope, batches and bodies that are not JSON.
pub fn envelope_cases(api: &Api) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |kind: Kind, label: &str, body: Vec<u8>, expect: Expect| {
        out.push(Case {
            kind,
            method: String::new(),
            label: label.to_string(),
            body,
            expect,
            quick: true,
        })
    };
    use Kind::*;
    let caps = "\"method\":\"Host.getCapabilities\"";
    let e = |s: &str| s.as_bytes().to_vec();
    add(
        Envelope,
        "jsonrpc 1.0",
        e(&format!("{{\"jsonrpc\":\"1.0\",\"id\":1,{caps}}}")),
        Expect::AnyError,
    );
    add(
        Envelope,
        "no jsonrpc member",
        e(&format!("{{\"id\":1,{caps}}}")),
        Expect::AnyError,
    );
    add(
        Envelope,
        "jsonrpc as number",
        e(&format!("{{\"jsonrpc\":2.0,\"id\":1,{caps}}}")),
        Expect::AnyError,
    );
    add(
        Envelope,
        "id object",
        e(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{{\"a\":1}},{caps}}}"
        )),
        Expect::NoAnswer,
    );
    add(
        Envelope,
        "id array",
        e(&format!("{{\"jsonrpc\":\"2.0\",\"id\":[1],{caps}}}")),
        Expect::NoAnswer,
    );
    add(
        Envelope,
        "id float",
        e(&format!("{{\"jsonrpc\":\"2.0\",\"id\":1.5,{caps}}}")),
        Expect::NoAnswer,
    );
    add(
        Envelope,
        "id 300 kB string",
        e(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":\"{}\",{caps}}}",
            "i".repeat(300_000)
        )),
        Expect::Ok,
    );
    add(
        Envelope,
        "id null",
        e(&format!("{{\"jsonrpc\":\"2.0\",\"id\":null,{caps}}}")),
        Expect::Ok,
    );
    add(
        Envelope,
        "id u64::MAX",
        e(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":18446744073709551615,{caps}}}"
        )),
        Expect::Ok,
    );
    add(
        Envelope,
        "id 2^64",
        e(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":18446744073709551616,{caps}}}"
        )),
        Expect::NoAnswer,
    );
    add(
        Envelope,
        "method number",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":7}"),
        Expect::AnyError,
    );
    add(
        Envelope,
        "method missing",
        e("{\"jsonrpc\":\"2.0\",\"id\":1}"),
        Expect::AnyError,
    );
    add(
        Envelope,
        "method empty",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\"}"),
        Expect::Code(-32601),
    );
    add(
        Envelope,
        "method 900 kB",
        e(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{}\"}}",
            "m".repeat(900_000)
        )),
        Expect::Code(-32601),
    );
    add(
        Envelope,
        "method traversal",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"../../Host.getStats\"}"),
        Expect::Code(-32601),
    );
    add(
        Envelope,
        "method lowercase",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"host.getcapabilities\"}"),
        Expect::Code(-32601),
    );
    add(
        Envelope,
        "method with NUL",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Host.getStats\\u0000\"}"),
        Expect::Code(-32601),
    );
    add(
        Envelope,
        "rpc.discover",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc.discover\"}"),
        Expect::AnyError,
    );
    add(
        Envelope,
        "Job.unsubscribe of nothing",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Job.unsubscribe\",\"params\":[\"x\"]}"),
        Expect::Any,
    );
    add(Envelope, "duplicate method member", e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Host.getStats\",\"method\":\"StorageDomain.detach\"}"), Expect::AnyError);
    // Notifications: no id, so no answer.
    for m in ["Host.getCapabilities", "SDM.copy_data", "Image.delete"] {
        let params = if m == "Host.getCapabilities" {
            "{}".to_string()
        } else {
            with_raw(&api.baseline(m), None)
        };
        add(
            Envelope,
            &format!("notification {m}"),
            e(&format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"{m}\",\"params\":{params}}}"
            )),
            Expect::NoAnswer,
        );
    }

    let one = |id: usize| format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},{caps}}}");
    let batch = |n: usize| format!("[{}]", (0..n).map(one).collect::<Vec<_>>().join(","));
    add(Batch, "empty batch", e("[]"), Expect::AnyError);
    add(Batch, "batch of 1", e(&batch(1)), Expect::BatchOf(1));
    add(
        Batch,
        "batch of 16 (the limit)",
        e(&batch(16)),
        Expect::BatchOf(16),
    );
    add(Batch, "batch of 17", e(&batch(17)), Expect::AnyError);
    add(Batch, "batch of 5000", e(&batch(5000)), Expect::AnyError);
    add(
        Batch,
        "batch of junk entries",
        e("[1,\"x\",null,{},[]]"),
        Expect::BatchOf(5),
    );
    add(
        Batch,
        "nested batch",
        e(&format!("[[{}]]", one(1))),
        Expect::BatchOf(1),
    );
    add(
        Batch,
        "batch of notifications",
        e(&format!(
            "[{}]",
            (0..4)
                .map(|_| "{\"jsonrpc\":\"2.0\",\"method\":\"Host.getStats\"}")
                .collect::<Vec<_>>()
                .join(",")
        )),
        Expect::NoAnswer,
    );
    let bad_copy = |id: usize| {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"SDM.copy_data\",\"params\":{{\"job_id\":\"../{id}\"}}}}"
        )
    };
    add(
        Batch,
        "batch of 16 bad copies",
        e(&format!(
            "[{}]",
            (0..16).map(bad_copy).collect::<Vec<_>>().join(",")
        )),
        Expect::BatchOf(16),
    );
    add(
        Batch,
        "batch with a 10k-deep entry",
        e(&format!("[{},{}]", one(1), nested_array(10_000))),
        Expect::BatchOf(2),
    );
    add(
        Batch,
        "batch 100k deep",
        e(&nested_array(100_000)),
        Expect::AnyError,
    );

    add(Garbage, "not JSON", e("hello"), Expect::Code(-32700));
    add(
        Garbage,
        "truncated",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"),
        Expect::Code(-32700),
    );
    add(
        Garbage,
        "invalid UTF-8",
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        Expect::Code(-32700),
    );
    add(
        Garbage,
        "UTF-8 BOM",
        [&[0xef, 0xbb, 0xbf][..], one(1).as_bytes()].concat(),
        Expect::AnyError,
    );
    add(
        Garbage,
        "NaN",
        e("{\"jsonrpc\":\"2.0\",\"id\":NaN,\"method\":\"Host.getStats\"}"),
        Expect::Code(-32700),
    );
    add(
        Garbage,
        "trailing garbage",
        e(&format!("{} xyz", one(1))),
        Expect::AnyError,
    );
    add(
        Garbage,
        "two requests",
        e(&format!("{}{}", one(1), one(2))),
        Expect::AnyError,
    );
    add(Garbage, "empty body", Vec::new(), Expect::AnyError);
    add(Garbage, "only whitespace", e("   \n\t  "), Expect::AnyError);
    add(Garbage, "NUL bytes", vec![0u8; 1000], Expect::AnyError);
    add(
        Garbage,
        "lone surrogate in method",
        e("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\\ud800\"}"),
        Expect::AnyError,
    );
    add(Garbage, "JSON scalar", e("42"), Expect::AnyError);
    out
}

/// Checks an answer against what was expected; `known` is the contract's error table.
pub fn check(
    expect: &Expect,
    status: u16,
    body: &str,
    known: &BTreeMap<i64, String>,
) -> Result<(), String> {
    // jsonrpsee answers a notification (and a request whose id is not a valid id, which it
    // takes for one, without running it) with `null`.
    if *expect == Expect::NoAnswer && matches!(body.trim(), "" | "null") {
        return Ok(());
    }
    let v: Value = serde_json::from_str(body)
        .map_err(|e| format!("HTTP {status}, answer is not JSON ({e}): {}", short(body)))?;
    // Parse errors come with HTTP 400; everything else with 200.
    let parse_error = v["error"]["code"] == json!(-32700);
    if status != 200 && !(status == 400 && parse_error) {
        return Err(format!("HTTP status {status}, body {}", short(body)));
    }
    if matches!(expect, Expect::AnyError | Expect::NoAnswer) {
        if let Some(a) = v.as_array() {
            // A batch of errors (e.g. a nested array taken for a batch).
            for x in a {
                code_of(x)?;
            }
            return Ok(());
        }
    }
    if let Expect::BatchOf(n) = expect {
        let a = v
            .as_array()
            .ok_or_else(|| format!("expected a batch answer, got {}", short(body)))?;
        if a.len() != *n {
            return Err(format!(
                "batch answer has {} entries, expected {n}",
                a.len()
            ));
        }
        for x in a {
            if x.get("result").is_none() {
                code_of(x)?;
            }
        }
        return Ok(());
    }
    if v.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(format!("no jsonrpc 2.0 member: {}", short(body)));
    }
    let has_result = v.get("result").is_some();
    match expect {
        Expect::Ok if has_result => Ok(()),
        Expect::Ok => Err(format!("expected a result, got {}", short(body))),
        Expect::Invalid => {
            let c = code_of(&v)?;
            let name = v["error"]["data"]["name"].as_str().unwrap_or("");
            if c == 1000 && name == "InvalidParameterException" {
                Ok(())
            } else {
                Err(format!(
                    "expected InvalidParameterException (1000), got {}",
                    short(body)
                ))
            }
        }
        Expect::Answer if has_result => Ok(()),
        Expect::Answer => {
            let c = code_of(&v)?;
            let name = v["error"]["data"]["name"].as_str().unwrap_or("");
            match known.get(&c) {
                Some(n) if n == name => Ok(()),
                Some(n) => Err(format!("code {c} named {name:?}, the table says {n:?}")),
                None => Err(format!(
                    "code {c} is not in the contract's table: {}",
                    short(body)
                )),
            }
        }
        Expect::Code(want) => {
            let c = code_of(&v)?;
            if c == *want {
                Ok(())
            } else {
                Err(format!("expected code {want}, got {}", short(body)))
            }
        }
        Expect::AnyError | Expect::NoAnswer => code_of(&v).map(|_| ()),
        Expect::Any if has_result => Ok(()),
        Expect::Any => code_of(&v).map(|_| ()),
        Expect::BatchOf(_) => unreachable!(),
    }
}

fn code_of(v: &Value) -> Result<i64, String> {
    v.get("error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            format!(
                "expected an error with an integer code, got {}",
                short(&v.to_string())
            )
        })
}

/// The first 300 characters of `s`.
pub fn short(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        format!(
            "{}… ({} bytes)",
            s.chars().take(300).collect::<String>(),
            s.len()
        )
    }
}

/// The message of an error answer, if any.
pub fn error_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some(v.get("error")?.get("message")?.as_str()?.to_string())
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP and WebSocket

/// Sends raw bytes on a new connection and reads until the server closes (or `timeout`);
/// returns (status, body, closed cleanly). The write side stays open: the server closes a
/// connection at once when it reads an EOF, answered or not (no HTTP/1 half-close).
pub fn raw_http(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (u16, String, bool) {
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(_) => return (0, String::new(), false),
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    let mut resp = Vec::new();
    let closed = match s.read_to_end(&mut resp) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let (status, body) = crate::status_and_body(&resp);
    (status, body, closed)
}

/// A WebSocket frame as received.
#[derive(Debug)]
pub struct Frame {
    /// Opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A minimal WebSocket client that can also send broken frames.
pub struct Ws {
    /// The socket.
    pub s: TcpStream,
}

impl Ws {
    /// Connects and upgrades; Err with the server's answer if the upgrade is refused.
    pub fn connect(addr: SocketAddr) -> Result<Ws, String> {
        let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                Ok(_) => {
                    return Err(format!(
                        "closed during upgrade: {}",
                        String::from_utf8_lossy(&head)
                    ))
                }
                Err(e) => return Err(format!("upgrade: {e}")),
            }
            if head.len() > 16 * 1024 {
                return Err("upgrade answer too long".into());
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        if !text.starts_with("HTTP/1.1 101") {
            return Err(text);
        }
        Ok(Ws { s })
    }

    /// Sends one frame; `mask` false makes a frame the server must refuse.
    pub fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        mask: bool,
    ) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(if fin { 0x80 } else { 0 } | opcode);
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f)
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.send_frame(true, 1, text, true)
    }

    /// Reads one frame (answers pings); Err on timeout or close of the socket.
    pub fn recv(&mut self, timeout: Duration) -> std::io::Result<Frame> {
        self.s.set_read_timeout(Some(timeout))?;
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h)?;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.s.read_exact(&mut l)?;
                    u16::from_be_bytes(l) as u64
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.s.read_exact(&mut l)?;
                    u64::from_be_bytes(l)
                }
                n => n as u64,
            };
            if len > 64 << 20 {
                return Err(std::io::Error::other(format!("frame of {len} bytes")));
            }
            let mut payload = vec![0u8; len as usize];
            self.s.read_exact(&mut payload)?;
            if opcode == 9 {
                self.send_frame(true, 10, &payload, true)?;
                continue;
            }
            return Ok(Frame { opcode, payload });
        }
    }

    /// Sends a text message and returns the text of the next text frame (`id`: of the next
    /// answer with that id; answers are sent as calls complete, not in order).
    pub fn call(
        &mut self,
        text: &[u8],
        id: Option<u64>,
        timeout: Duration,
    ) -> Result<String, String> {
        self.send_text(text).map_err(|e| format!("send: {e}"))?;
        loop {
            let f = self.recv(timeout).map_err(|e| format!("recv: {e}"))?;
            match f.opcode {
                1 => {
                    let t = String::from_utf8_lossy(&f.payload).into_owned();
                    let got = serde_json::from_str::<Value>(&t)
                        .ok()
                        .and_then(|v| v["id"].as_u64());
                    if id.is_none() || got == id {
                        return Ok(t);
                    }
                }
                8 => {
                    return Err(format!(
                        "closed by the server: {:?}",
                        close_reason(&f.payload)
                    ))
                }
                _ => continue,
            }
        }
    }
}

/// (code, reason) of a close frame's payload.
pub fn close_reason(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (0, String::new());
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Process figures

/// Figures of a process from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Resident high-water mark, bytes.
    pub hwm: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: u64,
}

/// Reads [`ProcStats`] of `pid`.
pub fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcStats {
        rss: kb("VmRSS:") * 1024,
        hwm: kb("VmHWM:") * 1024,
        threads: kb("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// Open fds of `pid` by kind: "socket", "pipe", "anon" (eventfd, io_uring, ...), "dev" and
/// "file".
pub fn fd_kinds(pid: u32) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let t = std::fs::read_link(e.path()).unwrap_or_default();
            let t = t.to_string_lossy();
            let kind = if t.starts_with("socket:") {
                "socket"
            } else if t.starts_with("pipe:") {
                "pipe"
            } else if t.starts_with("anon_inode:") {
                "anon"
            } else if t.starts_with("/dev/") {
                "dev"
            } else {
                "file"
            };
            *out.entry(kind).or_default() += 1;
        }
    }
    out
}

/// Files `pid` has open for writing (or read-write) that are not under one of `allowed` and
/// are not sockets, pipes, anonymous inodes or `/dev/null`.
pub fn open_for_writing_outside(pid: u32, allowed: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if !t.starts_with('/') || t == "/dev/null" || t.starts_with("/dev/pts") {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        let writable = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        if writable && !allowed.iter().any(|a| target.starts_with(a)) {
            out.push(format!(
                "fd {} -> {t} (flags {flags:o})",
                e.file_name().to_string_lossy()
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// File-system state

/// What is known of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Inode.
    pub ino: u64,
    /// Mode (type and permissions).
    pub mode: u32,
    /// Size.
    pub len: u64,
    /// Modification time, ns.
    pub mtime: i64,
    /// Status change time, ns.
    pub ctime: i64,
    /// FNV-1a of the content (files up to 8 MiB; symlinks: of the target).
    pub hash: u64,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Every path under `dir` (not following links) with inode, mode, size, times and content
/// hash, except names in `skip`.
pub fn fs_state(dir: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Entry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| skip.iter().any(|s| n == *s)) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let hash = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| fnv(t.as_os_str().as_encoded_bytes()))
                    .unwrap_or(0)
            } else if m.is_file() && m.len() <= 8 << 20 {
                std::fs::read(&p).map(|b| fnv(&b)).unwrap_or(0)
            } else {
                0
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p,
                Entry {
                    ino: m.ino(),
                    mode: m.mode(),
                    len: m.len(),
                    mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    ctime: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                    hash,
                },
            );
        }
    }
    out
}

/// The differences between two states, one line each.
pub fn fs_diff(a: &BTreeMap<PathBuf, Entry>, b: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in a {
        match b.get(p) {
            None => out.push(format!("deleted {}", p.display())),
            Some(f) if f != e => out.push(format!("changed {}: {e:?} -> {f:?}", p.display())),
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.push(format!("created {}", p.display()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// inotify

/// An inotify watch over directory trees that reports every write-like event: a file closed
/// after being opened for writing, modified, created, deleted, renamed or changed in its
/// attributes.
pub struct Watch {
    fd: i32,
    dirs: BTreeMap<i32, PathBuf>,
}

const WATCH_MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MOVE_SELF;

impl Watch {
    /// Watches `roots` and every directory below them (as they are now).
    pub fn new(roots: &[PathBuf]) -> Watch {
        // SAFETY: inotify_init1 has no memory preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let mut w = Watch {
            fd,
            dirs: BTreeMap::new(),
        };
        for r in roots {
            let mut stack = vec![r.clone()];
            while let Some(d) = stack.pop() {
                w.add(&d);
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
        }
        w
    }

    fn add(&mut self, dir: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let mut c = dir.as_os_str().as_bytes().to_vec();
        c.push(0);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr().cast(), WATCH_MASK) };
        if wd >= 0 {
            self.dirs.insert(wd, dir.to_path_buf());
        }
    }

    /// The events since the last call: (path, event names).
    pub fn events(&mut self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + head <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name_bytes = &buf[off + head..off + head + ev.len as usize];
                let name = String::from_utf8_lossy(name_bytes)
                    .trim_end_matches('\0')
                    .to_string();
                let dir = self.dirs.get(&ev.wd).cloned().unwrap_or_default();
                let path = if name.is_empty() {
                    dir
                } else {
                    dir.join(&name)
                };
                out.push((path, mask_names(ev.mask)));
                off += head + ev.len as usize;
            }
        }
        out
    }
}

fn mask_names(m: u32) -> String {
    let names = [
        (libc::IN_CLOSE_WRITE, "CLOSE_WRITE"),
        (libc::IN_MODIFY, "MODIFY"),
        (libc::IN_ATTRIB, "ATTRIB"),
        (libc::IN_CREATE, "CREATE"),
        (libc::IN_DELETE, "DELETE"),
        (libc::IN_DELETE_SELF, "DELETE_SELF"),
        (libc::IN_MOVED_FROM, "MOVED_FROM"),
        (libc::IN_MOVED_TO, "MOVED_TO"),
        (libc::IN_MOVE_SELF, "MOVE_SELF"),
        (libc::IN_IGNORED, "IGNORED"),
        (libc::IN_ISDIR, "ISDIR"),
    ];
    names
        .iter()
        .filter(|(b, _)| m & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: closing the inotify fd this value owns.
        unsafe {
            libc::close(self.fd);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small things

/// Percentile (0-100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// True when the full forms run (`SDM_FULL=1`).
pub fn full() -> bool {
    std::env::var("SDM_FULL").is_ok_and(|v| v == "1")
}

/// Writes a fuzzing corpus under `dir`: `request/` gets every case body up to `max_len`
/// bytes, `values/` every hostile value and every valid value up to that size.
pub fn dump_corpus(
    cases: &[Case],
    values: &[(Kind, String, HV)],
    dir: &Path,
    max_len: usize,
) -> usize {
    let mut n = 0;
    let mut put = |sub: &str, bytes: &[u8]| {
        if bytes.len() <= max_len {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).expect("corpus dir");
            std::fs::write(d.join(format!("{:016x}", fnv(bytes))), bytes).expect("corpus file");
            n += 1;
        }
    };
    for c in cases {
        put("request", &c.body);
    }
    for (_, _, v) in values {
        match v {
            HV::V(v) => put("values", serde_json::to_string(v).unwrap().as_bytes()),
            HV::Raw(r) => put("values", r.as_bytes()),
        }
    }
    n
}
