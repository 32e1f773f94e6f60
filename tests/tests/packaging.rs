//! Cheap checks of the packaging that need no build of the package: the systemd unit
//! (`packaging/sdm-agent.service`) and the cargo-deb metadata in `agent/Cargo.toml`.
//! `.ci/deb` builds the real `.deb` and runs `systemd-analyze` on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sdm_agent::config::{Config, Overrides};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One `Key=Value` line of a unit, with the comments of its paragraph (the lines since the
/// last blank line).
#[derive(Debug)]
struct Entry {
    value: String,
    line: usize,
    comments: Vec<String>,
}

/// A unit file: section -> key -> every assignment of that key, in order.
type Unit = BTreeMap<String, BTreeMap<String, Vec<Entry>>>;

/// Parses systemd's INI dialect strictly: sections, `Key=Value`, `#`/`;` comments, blank lines.
/// Anything else (including a line continuation) is an error.
fn parse_unit(text: &str) -> Result<Unit, String> {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut comments: Vec<String> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            comments.clear();
            continue;
        }
        if line.starts_with('#') || line.starts_with(';') {
            comments.push(line.to_string());
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!(
                "line {n}: continuation lines are not used in this unit"
            ));
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or(format!("line {n}: bad section header"))?;
            if unit.contains_key(name) {
                return Err(format!("line {n}: section [{name}] repeated"));
            }
            unit.insert(name.to_string(), BTreeMap::new());
            section = Some(name.to_string());
            comments.clear();
            continue;
        }
        let sec = section
            .as_ref()
            .ok_or(format!("line {n}: assignment before any section"))?;
        let (k, v) = line
            .split_once('=')
            .ok_or(format!("line {n}: not Key=Value: {line}"))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("line {n}: bad key {k:?}"));
        }
        unit.get_mut(sec)
            .expect("section exists")
            .entry(k.to_string())
            .or_default()
            .push(Entry {
                value: v.trim().to_string(),
                line: n,
                comments: comments.clone(),
            });
    }
    Ok(unit)
}

fn unit() -> Unit {
    parse_unit(&read("packaging/sdm-agent.service"))
        .unwrap_or_else(|e| panic!("sdm-agent.service: {e}"))
}

/// The single value of `key` in `[Service]`.
fn service<'a>(u: &'a Unit, key: &str) -> &'a Entry {
    let all = u["Service"]
        .get(key)
        .unwrap_or_else(|| panic!("[Service] has no {key}="));
    assert_eq!(all.len(), 1, "[Service] {key}= is set {} times", all.len());
    &all[0]
}

/// The common hardening set; the unit must have each key with this value, or say why not in
/// a "Deviation:" comment of the paragraph the key is in.
const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictRealtime", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("UMask", "0077"),
];

/// Settings that open something up; each must sit in a commented "Deviation:" paragraph.
const HOLES: &[&str] = &[
    "DeviceAllow",
    "DevicePolicy",
    "ReadWritePaths",
    "AmbientCapabilities",
    "SupplementaryGroups",
];

fn is_deviation(e: &Entry) -> bool {
    e.comments.iter().any(|c| {
        c.trim_start_matches(['#', ';', ' '])
            .starts_with("Deviation:")
    })
}

#[test]
fn unit_parses_and_is_a_notify_service() {
    let u = unit();
    for s in ["Unit", "Service", "Install"] {
        assert!(u.contains_key(s), "no [{s}] section");
    }
    assert_eq!(
        u.len(),
        3,
        "unexpected sections: {:?}",
        u.keys().collect::<Vec<_>>()
    );
    assert_eq!(service(&u, "Type").value, "notify");
    assert_eq!(
        service(&u, "ExecStart").value,
        "/usr/bin/sdm-agent --config /etc/sdm/agent.toml"
    );
    assert_eq!(service(&u, "StateDirectory").value, "sdm");
    assert_eq!(service(&u, "ConfigurationDirectory").value, "sdm");
    assert_eq!(service(&u, "RuntimeDirectory").value, "sdm");
    assert!(!service(&u, "WatchdogSec").value.is_empty());
    // Exit status 78 is the agent's "configuration refused" (agent/src/main.rs).
    assert_eq!(service(&u, "RestartPreventExitStatus").value, "78");
    assert!(
        !u["Service"].contains_key("User") && !u["Service"].contains_key("DynamicUser"),
        "the agent runs as root (block devices, sanlock, vdsm-owned volumes)"
    );
    let wanted = &u["Install"]["WantedBy"];
    assert_eq!(wanted[0].value, "multi-user.target");
}

#[test]
fn unit_has_the_hardening_set_and_every_deviation_is_commented() {
    let u = unit();
    let svc = &u["Service"];
    for (key, want) in HARDENING {
        let entries = svc
            .get(*key)
            .unwrap_or_else(|| panic!("hardening key {key}= missing"));
        // Repeated keys (SystemCallFilter) add up; the first assignment is the base one.
        let first = &entries[0];
        if first.value != *want {
            assert!(
                is_deviation(first),
                "line {}: {key}={} differs from the common {key}={want} without a \"# Deviation:\" comment",
                first.line,
                first.value
            );
        }
    }
    for key in HOLES {
        for e in svc.get(*key).into_iter().flatten() {
            assert!(
                is_deviation(e),
                "line {}: {key}={} is not in a \"# Deviation:\" paragraph",
                e.line,
                e.value
            );
        }
    }
    // Every deviation comment has a setting under it, and says why (more than a label).
    for entries in svc.values() {
        for e in entries.iter().filter(|e| is_deviation(e)) {
            let text: String = e.comments.join(" ");
            assert!(
                text.len() > 40,
                "line {}: deviation comment too short to say why: {text}",
                e.line
            );
        }
    }
    // The capability bounding set is explained too.
    let caps = service(&u, "CapabilityBoundingSet");
    for cap in caps.value.split_whitespace() {
        assert!(
            caps.comments.iter().any(|c| c.contains(cap)),
            "{cap} is not explained above CapabilityBoundingSet="
        );
    }
}

/// A minimal reader for the parts of agent/Cargo.toml's `[package.metadata.deb]` this test
/// needs (the tests crate has no TOML parser): the section's lines, and `assets` as triples.
struct DebMetadata {
    lines: Vec<String>,
    assets: Vec<Vec<String>>,
}

fn deb_metadata() -> DebMetadata {
    let text = read("agent/Cargo.toml");
    let mut in_section = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[[") && t.ends_with(']') && !t.contains('"') {
            in_section = t == "[package.metadata.deb]";
            continue;
        }
        if in_section {
            lines.push(line.to_string());
        }
    }
    assert!(
        !lines.is_empty(),
        "agent/Cargo.toml has no [package.metadata.deb] section"
    );
    // `assets = [ [..], [..] ]`: collect the strings of each inner array, skipping comments.
    let body = lines.join("\n");
    let start = body
        .find("assets = [")
        .expect("assets in [package.metadata.deb]")
        + "assets = ".len();
    let mut assets = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut depth = 0;
    let mut chars = body[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 1 {
                    assets.push(std::mem::take(&mut current));
                }
                if depth == 0 {
                    break;
                }
            }
            '"' => {
                let s: String = chars.by_ref().take_while(|&c| c != '"').collect();
                current.push(s);
            }
            _ => {}
        }
    }
    DebMetadata { lines, assets }
}

impl DebMetadata {
    fn value(&self, key: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(key)
                    .and_then(|r| r.trim_start().strip_prefix('='))
            })
            .unwrap_or_else(|| panic!("[package.metadata.deb] has no {key}"))
            .trim()
            .to_string()
    }
}

/// Files matching `pattern` (relative to `dir`), where only the last component may contain `*`.
fn glob(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = dir.join(pattern);
    let name = full.file_name().unwrap().to_string_lossy().into_owned();
    let parent = full.parent().unwrap().to_path_buf();
    if !name.contains('*') {
        return if full.exists() { vec![full] } else { vec![] };
    }
    let (pre, post) = name.split_once('*').unwrap();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn deb_assets_exist_in_the_repo() {
    let meta = deb_metadata();
    let agent_dir = repo().join("agent");
    assert!(meta.assets.len() >= 4, "assets: {:?}", meta.assets);
    let mut dests = Vec::new();
    for a in &meta.assets {
        assert_eq!(a.len(), 3, "asset is not [source, dest, mode]: {a:?}");
        let (src, dest, mode) = (&a[0], &a[1], &a[2]);
        assert!(
            u32::from_str_radix(mode, 8).is_ok(),
            "mode {mode:?} of {src}"
        );
        assert!(
            !dest.starts_with('/'),
            "{dest}: cargo-deb destinations are relative"
        );
        if let Some(bin) = src.strip_prefix("target/release/") {
            // Built by .ci/deb; check that some crate of the workspace has this binary.
            let candidates = [
                repo().join("agent/src/main.rs"),
                repo().join(format!("agent/src/bin/{bin}.rs")),
                repo().join(format!("engine-client/{bin}/src/main.rs")),
            ];
            let ok = (bin == "sdm-agent" && candidates[0].exists())
                || candidates[1..].iter().any(|p| p.exists());
            assert!(ok, "no binary {bin} in the workspace");
            assert_eq!(mode, "755", "{bin} must be executable");
        } else {
            assert!(
                !glob(&agent_dir, src).is_empty(),
                "asset {src} matches no file (relative to agent/)"
            );
        }
        dests.push(dest.clone());
    }
    for want in ["usr/bin/", "etc/sdm/agent.toml", "usr/share/doc/sdm-agent/"] {
        assert!(
            dests.iter().any(|d| d == want),
            "no asset installs to {want}: {dests:?}"
        );
    }
    // The operator docs this package ships.
    for doc in [
        "install.md",
        "configuration.md",
        "operations.md",
        "logging.md",
        "api.md",
    ] {
        assert!(repo().join("docs").join(doc).exists(), "docs/{doc} missing");
    }
}

#[test]
fn deb_installs_the_unit_without_starting_it() {
    let meta = deb_metadata();
    let depends = meta.value("depends");
    for d in ["$auto", "sanlock", "qemu-utils"] {
        assert!(depends.contains(d), "depends lacks {d}: {depends}");
    }
    let units = meta.value("systemd-units");
    for flag in [
        "enable = false",
        "start = false",
        "restart-after-upgrade = false",
    ] {
        assert!(
            units.contains(flag),
            "systemd-units lacks `{flag}`: {units}"
        );
    }
    // cargo-deb finds the unit as <package>.service in the maintainer-scripts directory.
    let dir = meta.value("maintainer-scripts");
    let dir = repo().join("agent").join(dir.trim_matches('"'));
    assert!(
        dir.join("sdm-agent.service").is_file(),
        "{} has no sdm-agent.service",
        dir.display()
    );
    let postinst = std::fs::read_to_string(dir.join("postinst")).expect("packaging/postinst");
    assert!(
        postinst.contains("#DEBHELPER#"),
        "postinst lacks the #DEBHELPER# marker"
    );
    assert!(!postinst.contains("systemctl start") && !postinst.contains("systemctl restart"));
}

#[test]
fn packaged_config_matches_the_unit() {
    let meta = deb_metadata();
    let cfg_asset = meta
        .assets
        .iter()
        .find(|a| a[1] == "etc/sdm/agent.toml")
        .expect("agent.toml asset");
    let src = repo().join("agent").join(&cfg_asset[0]);
    let cfg = Config::load(Some(&src), &Overrides::default()).expect("packaged agent.toml loads");
    // The unit's StateDirectory=sdm is /var/lib/sdm; only that is writable besides domains.
    assert_eq!(cfg.state_dir, Path::new("/var/lib/sdm"));
    assert!(
        cfg.listen.ip().is_loopback(),
        "the packaged config must not listen on the network"
    );
    assert!(
        !cfg.create_default_domains && cfg.domains.is_empty(),
        "the package attaches no domains by itself"
    );
    // ExecStart= reads the file the package installs.
    let u = unit();
    assert!(service(&u, "ExecStart")
        .value
        .ends_with(&format!("--config /{}", cfg_asset[1])));
}

#[test]
fn configuration_doc_example_parses() {
    // The complete example in docs/configuration.md uses only keys the agent knows.
    let doc = read("docs/configuration.md");
    let tail = doc
        .split("## A complete example")
        .nth(1)
        .expect("example section");
    let block = tail
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("toml block");
    let cfg =
        Config::parse(block, Path::new("docs/configuration.md")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.host_id, 7);
    assert_eq!(cfg.domains.len(), 2);
}
