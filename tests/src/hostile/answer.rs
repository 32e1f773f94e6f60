//! Checking an agent's answer against what the oracle expected, and reading error answers.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::case::Expect;

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
