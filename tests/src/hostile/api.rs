//! The wire API as `proto-schema/schema.json` describes it: methods, their parameters and the
//! types of their fields, which is what the generator mutates.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// The machine-readable API (methods, parameter types, error table).
pub const SCHEMA: &str = include_str!("../../../proto-schema/schema.json");

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
