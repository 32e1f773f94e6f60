//! The value types that guard the disk: whatever they accept satisfies their contract (a UUID
//! is canonical and so safe as a path component, a generation is 0-999, a size fits in i64, a
//! description has no control characters), and the objects made of them survive a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sdm_proto::*;
use serde_json::Value;

fn accepted<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(u) = accepted::<Uuid>(&v) {
        assert!(is_canonical_uuid(u.as_str()), "{u:?}");
        assert!(!u.as_str().contains(['/', '.', '\0']), "{u:?}");
    }
    if let Some(s) = accepted::<Size>(&v) {
        assert!(s.0 <= MAX_SIZE, "{s:?} from {v}");
    }
    if let Some(c) = accepted::<Capacity>(&v) {
        assert!((1..=MAX_SIZE).contains(&c.get()), "{c:?} from {v}");
    }
    if let Some(g) = accepted::<Generation>(&v) {
        assert!(g.0 <= MAX_GENERATION, "{g:?} from {v}");
    }
    if let Some(d) = accepted::<Description>(&v) {
        assert!(!d.as_str().chars().any(char::is_control), "{d:?}");
        assert!(d.as_str().len() <= MAX_DESCRIPTION_BYTES);
    }
    if let Some(f) = accepted::<Flag>(&v) {
        let ok = match &v {
            Value::Bool(b) => *b == f.0,
            Value::String(s) => s.eq_ignore_ascii_case(if f.0 { "true" } else { "false" }),
            _ => false,
        };
        assert!(ok, "{v} accepted as {f:?}");
    }
    if let Some(op) = accepted::<ImageOperation>(&v) {
        let text = match &v {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.to_ascii_lowercase(),
            _ => panic!("{v} accepted as {op:?}"),
        };
        let want = match op {
            ImageOperation::Copy => ["1", "copy"],
            ImageOperation::Move => ["2", "move"],
        };
        assert!(want.contains(&text.as_str()), "{v} accepted as {op:?}");
    }
    macro_rules! roundtrip {
        ($t:ty) => {
            if let Some(x) = accepted::<$t>(&v) {
                let enc = serde_json::to_value(&x).unwrap();
                let back: $t = serde_json::from_value(enc.clone())
                    .unwrap_or_else(|e| panic!("{enc} does not decode again: {e}"));
                assert_eq!(serde_json::to_value(&back).unwrap(), enc);
            }
        };
    }
    roundtrip!(Endpoint);
    roundtrip!(VolumeRef);
    roundtrip!(VolumeAttributes);
    roundtrip!(Fix);
});
