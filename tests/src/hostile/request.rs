//! The text of requests: JSON-RPC bodies, re-numbered ids, and raw JSON text spliced into a
//! serialized value where no `Value` can hold it cheaply.

use serde_json::Value;

/// Placeholder string replaced by raw JSON text after serialization (for text no `Value` can
/// hold cheaply: 100 000 levels of nesting, duplicate keys, lone surrogates).
pub(super) const RAW_MARK: &str = "\u{1}RAW\u{1}";

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
pub(super) fn with_raw(v: &Value, raw: Option<&str>) -> String {
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
pub(super) fn set_path(params: &mut Value, path: &[&str], value: Option<Value>) {
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
