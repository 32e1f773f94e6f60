//! Self-consistency of `tests/fixtures/vdsm-shapes.json`, the data file of VDSM's verb shapes
//! that issue 16's drift test compares sdm's method table against. Here only the file itself is
//! checked (every type it names is defined or primitive, every verb is complete, the results
//! Bridge.py unwraps are the ones the wire depends on), so a typo cannot make that test vacuous.
//! It belongs with the drift test in sdm-tests once that exists.

use std::collections::BTreeSet;

use serde_json::Value;

const PRIMITIVES: &[&str] = &[
    "UUID",
    "string",
    "boolean",
    "int",
    "uint",
    "ulong",
    "float",
    "decimal-string",
    "true",
    "any",
];

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/vdsm-shapes.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Collects every type name `t` refers to.
fn names(t: &Value, out: &mut BTreeSet<String>) {
    match t {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Object(o) if o.contains_key("list") => names(&o["list"], out),
        Value::Object(o) if o.contains_key("map") => {
            names(&o["map"]["key"], out);
            names(&o["map"]["value"], out);
        }
        other => panic!("not a type: {other}"),
    }
}

fn check_fields(owner: &str, fields: &Value, used: &mut BTreeSet<String>) {
    let fields = fields
        .as_array()
        .unwrap_or_else(|| panic!("{owner}: fields"));
    let mut seen = BTreeSet::new();
    for f in fields {
        let name = f["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{owner}: field name"));
        assert!(seen.insert(name), "{owner}: {name} twice");
        assert!(f["required"].is_boolean(), "{owner}.{name}: required");
        if f.get("default").is_some() {
            assert_eq!(
                f["required"], false,
                "{owner}.{name}: a default makes it optional"
            );
        }
        names(&f["type"], used);
    }
}

#[test]
fn every_type_resolves_and_every_verb_is_complete() {
    let fx = fixture();
    let types = fx["types"].as_object().unwrap();
    let mut used = BTreeSet::new();
    for (verb, v) in fx["verbs"].as_object().unwrap() {
        assert!(verb.contains('.'), "{verb}");
        let sdm = v["sdm"].as_str().unwrap();
        assert!(
            ["served", "not_served", "name_collision"].contains(&sdm),
            "{verb}: sdm {sdm}"
        );
        assert!(v["added"].is_string(), "{verb}: added");
        check_fields(verb, &v["params"], &mut used);
        let result = &v["result"];
        assert!(
            result["ret"].is_null() || result["ret"].is_string(),
            "{verb}: ret"
        );
        if result["ret"].is_null() {
            assert_eq!(result["type"], "true", "{verb}: no unwrapping answers true");
        }
        names(&result["type"], &mut used);
    }
    for (name, t) in types {
        match t["kind"].as_str().unwrap() {
            "object" => check_fields(name, &t["fields"], &mut used),
            "union" => {
                check_fields(name, &t["fields"], &mut used);
                for variant in t["variants"].as_object().unwrap().values() {
                    names(variant, &mut used);
                }
            }
            "map" => {
                names(&t["key"], &mut used);
                names(&t["value"], &mut used);
            }
            "enum" => assert!(!t["values"].as_array().unwrap().is_empty(), "{name}"),
            "opaque" => {}
            other => panic!("{name}: kind {other}"),
        }
    }
    for n in &used {
        assert!(
            PRIMITIVES.contains(&n.as_str()) || types.contains_key(n),
            "type {n} is used but not defined"
        );
    }
    for n in types.keys() {
        assert!(used.contains(n), "type {n} is defined but never used");
    }
}

#[test]
fn the_shapes_issue_16_is_about() {
    let fx = fixture();
    let verb = |n: &str| fx["verbs"][n].clone();
    // Bridge.py unwraps `ret: uuid`: the wire carries a bare UUID string.
    for v in ["Image.move", "Image.delete", "Volume.create"] {
        assert_eq!(
            verb(v)["result"],
            serde_json::json!({"ret": "uuid", "type": "UUID"}),
            "{v}"
        );
    }
    assert_eq!(verb("Host.getJobs")["result"]["type"], "HostJobInfoMap");
    assert_eq!(verb("Image.getVolumes")["result"]["ret"], "uuidlist");
    for (name, v) in fx["verbs"].as_object().unwrap() {
        if name.starts_with("SDM.") {
            assert_eq!(v["result"]["type"], "true", "{name}");
        }
    }
    let params: Vec<&str> = fx["verbs"]["Volume.getInfo"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        ["volumeID", "storagepoolID", "storagedomainID", "imageID"]
    );
}
