//! `cargo run -p sdm-agent` and `cargo test --workspace` (the README's two commands) must build
//! the crates they share with the same features; otherwise whichever runs second builds them
//! all again (see `workspace-parity` in agent/Cargo.toml). This compares what cargo resolves for
//! both, without building anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// `name version` → feature lists cargo resolved for it, from `cargo tree`.
fn resolved(workspace: &Path, args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["tree", "--locked", "--offline", "--prefix", "none"])
        .args(["--format", "{p} [{f}]"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim_end_matches(" (*)");
        let (Some(open), true) = (line.rfind(" ["), line.ends_with(']')) else {
            continue;
        };
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        map.entry(format!("{name} {version}"))
            .or_default()
            .insert(line[open + 2..line.len() - 1].to_string());
    }
    map
}

#[test]
fn a_plain_agent_build_uses_the_test_builds_features() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    // What `cargo run -p sdm-agent` builds (no dev-dependencies) and what `cargo test
    // --workspace` builds (every member, dev-dependencies included).
    let run = resolved(workspace, &["-p", "sdm-agent", "-e", "normal,build"]);
    let test = resolved(workspace, &["--workspace", "-e", "normal,build,dev"]);
    assert!(run.contains_key("sdm-agent v0.1.0"), "{run:?}");
    let differ: Vec<String> = run
        .iter()
        .filter_map(|(pkg, features)| {
            let in_test = test.get(pkg)?;
            (in_test != features)
                .then(|| format!("{pkg}: {features:?} here, {in_test:?} in the test build"))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "`cargo run -p sdm-agent` would build these with other features than `cargo test \
         --workspace`, so one of them rebuilds them; add what the test build turns on to the \
         agent's `workspace-parity` feature (agent/Cargo.toml):\n{}",
        differ.join("\n")
    );
}
