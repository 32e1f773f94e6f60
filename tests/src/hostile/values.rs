//! The hostile values the generator puts into a field: wrong types, overflowing numbers,
//! non-canonical and traversal ids, control characters, huge and deeply nested values.

use serde_json::{json, Value};

use super::api::fresh_uuid;
use super::case::{Kind, Targets};

/// A hostile value: either a JSON value or raw JSON text.
#[derive(Clone, Debug)]
pub enum HV {
    /// A value.
    V(Value),
    /// Raw JSON text (valid JSON unless the case says otherwise).
    Raw(String),
}

pub(super) fn nested_array(depth: usize) -> String {
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
