//! Building requests: every per-field case of every method, from the schema and the hostile
//! values.

use serde_json::json;

use super::api::{Api, Field, Ty};
use super::case::{Case, Expect, Kind, Targets};
use super::envelope::envelope_cases;
use super::oracle::expect_for;
use super::request::{request_text, set_path, with_raw, RAW_MARK};
use super::values::{hostile_values, nested_array, HV};

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
