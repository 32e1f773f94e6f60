//! Hostile input for the agent: a generator of malformed and adversarial JSON-RPC requests, and
//! the instruments the hostile-input suite (`tests/tests/hostile/`) checks the agent with.
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
//!
//! Rooms, all re-exported here so that every `sdm_tests::hostile::…` path stays: the generator
//! (`case`, `api`, `values`, `request`, `generate`, `envelope`, `mutate`), the oracle (`oracle`,
//! `answer`) and the instruments (`wire`, `procfs`, `fsstate`, `watch`).

mod answer;
mod api;
mod case;
mod envelope;
mod fsstate;
mod generate;
mod mutate;
mod oracle;
mod procfs;
mod request;
pub mod stomp;
mod values;
mod watch;
mod wire;

pub use answer::*;
pub use api::*;
pub use case::*;
pub use envelope::*;
pub use fsstate::*;
pub use generate::*;
pub use mutate::*;
pub use oracle::*;
pub use procfs::*;
pub use request::*;
pub use values::*;
pub use watch::*;
pub use wire::*;

use std::path::Path;
use std::time::Duration;

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
