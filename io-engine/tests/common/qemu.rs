//! qemu-img / qemu-io as oracles for the converter tests: build images, compare, check, map.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sdm_io::{ImageFormat, Layer};

fn run(prog: &str, args: &[&str], cwd: Option<&Path>) -> std::process::Output {
    let mut c = Command::new(prog);
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output()
        .unwrap_or_else(|e| panic!("running {prog} {args:?}: {e}"))
}

/// Runs qemu-img; panics with its stderr on failure; returns stdout.
pub fn qemu_img(args: &[&str]) -> String {
    let out = run("qemu-img", args, None);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-io commands on an image (its chain opened read-write on the top).
pub fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c]);
    }
    let p = img.display().to_string();
    args.push(&p);
    let out = run("qemu-io", &args, img.parent());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("failed"),
        "qemu-io {args:?}: {text}"
    );
}

/// `qemu-img create` of a qcow2 with options (`-o`), optionally backed by `backing` (a name
/// next to it) of format `bfmt`.
pub fn create_qcow2(p: &Path, size: u64, opts: &str, backing: Option<(&str, &str)>) {
    let path = p.display().to_string();
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    if let Some((b, f)) = backing {
        args.extend(["-b", b, "-F", f]);
    }
    args.extend([path.as_str(), size.as_str()]);
    let out = run("qemu-img", &args, p.parent());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img compare` of two images opened with their backing chains; `strict` also
/// requires equal allocation.
pub fn assert_same(a: &Path, af: ImageFormat, b: &Path, bf: ImageFormat) {
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    let out = run(
        "qemu-img",
        &["compare", "-f", af.as_str(), "-F", bf.as_str(), &a_s, &b_s],
        None,
    );
    assert!(
        out.status.success(),
        "qemu-img compare {a_s} {b_s}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check` reports nothing wrong (no corruption, no leaks).
pub fn assert_check_clean(p: &Path) {
    let s = p.display().to_string();
    let out = run("qemu-img", &["check", "-f", "qcow2", &s], p.parent());
    assert!(
        out.status.success(),
        "qemu-img check {s}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QMap {
    pub start: u64,
    pub length: u64,
    pub depth: u64,
    pub data: bool,
    pub zero: bool,
}

pub fn qemu_map(p: &Path, fmt: ImageFormat) -> Vec<QMap> {
    let s = p.display().to_string();
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-f", fmt.as_str(), &s],
        p.parent(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("map json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| QMap {
            start: e["start"].as_u64().unwrap(),
            length: e["length"].as_u64().unwrap(),
            depth: e["depth"].as_u64().unwrap(),
            data: e["data"].as_bool().unwrap(),
            zero: e["zero"].as_bool().unwrap(),
        })
        .collect()
}

/// Guest bytes that `qemu-img map` shows as data (depth 0 only when `top_only`).
pub fn data_bytes(map: &[QMap], top_only: bool) -> u64 {
    map.iter()
        .filter(|e| e.data && (!top_only || e.depth == 0))
        .map(|e| e.length)
        .sum()
}

/// The virtual size and a few header facts from `qemu-img info`.
pub fn info(p: &Path, fmt: ImageFormat) -> serde_json::Value {
    let s = p.display().to_string();
    let out = qemu_img(&["info", "--output=json", "-U", "-f", fmt.as_str(), &s]);
    serde_json::from_str(&out).expect("info json")
}

pub fn qcow2(p: PathBuf) -> Layer {
    Layer {
        path: p,
        format: ImageFormat::Qcow2,
    }
}

pub fn raw(p: PathBuf) -> Layer {
    Layer {
        path: p,
        format: ImageFormat::Raw,
    }
}
