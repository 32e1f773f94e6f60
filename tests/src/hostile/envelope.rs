//! Cases of the JSON-RPC envelope itself: batches, ids, versions, and bodies that are not
//! JSON at all.

use super::api::Api;
use super::case::{Case, Expect, Kind};
use super::request::with_raw;
use super::values::nested_array;

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
