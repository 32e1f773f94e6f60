//! qcow2 conversions and a cold merge against VDSM's exact qemu-img command lines
//! (`lib/vdsm/storage/qemuimg.py`: `convert -p -t none -T none -f SRC_FMT -O DST_FMT`, with
//! `-o compat=1.1` when it creates a qcow2 and `-n -B PARENT` into an existing one; `commit -p
//! -t none -b BASE -f qcow2 TOP`). Every image holds 4 GiB of guest data (1 GiB with --quick);
//! each output is checked with `qemu-img compare` after its first run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Fixture;
use crate::bench::Bench;
use crate::image::{make_compressible, make_image, MIB};
use crate::tools::{s, sh, Tool};

/// Runs qemu-img (untimed set-up) in `dir`.
fn qemu_img(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .context("qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs qemu-io commands on a qcow2 (untimed set-up).
fn qemu_io(img: &Path, cmds: &[&str]) -> Result<()> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let out = c
        .arg(img)
        .current_dir(img.parent().unwrap_or(Path::new("/")))
        .output()
        .context("qemu-io")?;
    if !out.status.success() {
        bail!("qemu-io: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `qemu-img compare` of an output with its source, both read through their chains.
fn compare(src: &Path, sfmt: &str, dst: &Path, dfmt: &str) -> Vec<String> {
    ["qemu-img", "compare", "-q", "-f", sfmt, "-F", dfmt]
        .iter()
        .map(|x| x.to_string())
        .chain([s(src), s(dst)])
        .collect()
}

/// VDSM's `qemu-img convert` (in the source's directory, as VDSM runs it with a relative
/// backing file), then `sync -d` of the output like every peer.
fn vdsm_convert(src: &Path, sfmt: &str, dst: &Path, dfmt: &str, extra: &str) -> Tool {
    let dir = s(src.parent().unwrap_or(Path::new("/")));
    let cmd = format!(
        "cd {dir} && qemu-img convert -p -t none -T none -f {sfmt} -O {dfmt} {extra} {} {} && sync -d {}",
        s(src),
        s(dst),
        s(dst)
    );
    Tool::new("qemu-img convert (VDSM)", sh(&cmd), Some(dst), false)
}

/// The engine converting `layers` (`FMT:PATH`, top first) into `dst`.
fn sdm_convert(b: &Bench, to: &str, backing: Option<&str>, dst: &Path, layers: &[String]) -> Tool {
    let mut args = vec!["--to".to_string(), to.to_string()];
    if let Some(p) = backing {
        args.extend(["--backing".to_string(), p.to_string()]);
    }
    args.push(s(dst));
    args.extend(layers.iter().cloned());
    Tool::new("sdm convert", b.sdm("__convert", &args), Some(dst), true)
}

fn with_verify(mut t: Tool, v: Vec<String>) -> Tool {
    t.verify = Some(v);
    t
}

/// Runs one conversion case: sdm against VDSM's qemu-img line, both checked against `src`.
#[allow(clippy::too_many_arguments)]
fn conversion(
    b: &mut Bench,
    case: &str,
    n: u64,
    (src, sfmt): (&Path, &str),
    layers: &[String],
    (dst, dfmt): (&Path, &str),
    vdsm_extra: &str,
) -> Result<()> {
    let v = compare(src, sfmt, dst, dfmt);
    let tools = vec![
        with_verify(sdm_convert(b, dfmt, None, dst, layers), v.clone()),
        with_verify(vdsm_convert(src, sfmt, dst, dfmt, vdsm_extra), v),
    ];
    b.case(case, n, tools, None)
}

fn layer(fmt: &str, p: &Path) -> String {
    format!("{fmt}:{}", s(p))
}

pub fn raw_to_qcow2(b: &mut Bench, fx: &Fixture) -> Result<()> {
    let dst = b.dir.join("dst.qcow2");
    conversion(
        b,
        "raw -> qcow2 (disk)",
        fx.n,
        (&fx.src_full, "raw"),
        &[layer("raw", &fx.src_full)],
        (&dst, "qcow2"),
        "-o compat=1.1",
    )
}

/// A qcow2 of `fx.n` random bytes (optionally on the qcow2 `backing` next to it), built in
/// the bench directory from a temporary RAW image that is removed at once (untimed): the
/// qcow2 cases never keep two full images besides their output, so the bench fits in less
/// disk space.
fn full_qcow2(b: &Bench, fx: &Fixture, name: &str, backing: Option<&str>) -> Result<PathBuf> {
    let raw = b.dir.join(format!("{name}.raw"));
    make_image(&raw, fx.n, 11, |_| true)?;
    let q = b.dir.join(name);
    let _ = std::fs::remove_file(&q);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"];
    if let Some(p) = backing {
        args.extend(["-B", p, "-F", "qcow2"]);
    }
    let (rp, qp) = (s(&raw), s(&q));
    args.extend([rp.as_str(), qp.as_str()]);
    let r = qemu_img(&b.dir, &args);
    let _ = std::fs::remove_file(&raw);
    r.map(|()| q)
}

fn empty_qcow2(b: &Bench, name: &str, n: u64) -> Result<PathBuf> {
    let q = b.dir.join(name);
    let _ = std::fs::remove_file(&q);
    qemu_img(
        &b.dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1",
            &s(&q),
            &n.to_string(),
        ],
    )?;
    Ok(q)
}

pub fn qcow2_to_raw(b: &mut Bench, fx: &Fixture) -> Result<()> {
    eprintln!("building a qcow2 of the full image ...");
    let q = full_qcow2(b, fx, "src_full.qcow2", None)?;
    let dst = b.dir.join("dst.raw");
    let r = conversion(
        b,
        "qcow2 -> raw (disk)",
        fx.n,
        (&q, "qcow2"),
        &[layer("qcow2", &q)],
        (&dst, "raw"),
        "",
    );
    let _ = std::fs::remove_file(&q);
    r
}

/// A qcow2 on a parent into an existing qcow2 on its own parent: top-only, VDSM's `-n -B`.
pub fn top_only(b: &mut Bench, fx: &Fixture) -> Result<()> {
    eprintln!("building a qcow2 on a parent ...");
    let parent = empty_qcow2(b, "parent.qcow2", fx.n)?;
    let top = full_qcow2(b, fx, "top.qcow2", Some("parent.qcow2"))?;
    let dparent = empty_qcow2(b, "dparent.qcow2", fx.n)?;
    let dst = b.dir.join("dst_top.qcow2");
    // Volume.create made the destination, on its parent, before the copy.
    let setup = sh(&format!(
        "cd {} && qemu-img create -q -f qcow2 -o compat=1.1 -b dparent.qcow2 -F qcow2 {} {}",
        s(&b.dir),
        s(&dst),
        fx.n
    ));
    let v = compare(&top, "qcow2", &dst, "qcow2");
    let mut sdm = sdm_convert(
        b,
        "qcow2",
        Some("dparent.qcow2"),
        &dst,
        &[layer("qcow2", &top), layer("qcow2", &parent)],
    );
    sdm.setup = Some(setup.clone());
    let mut q = vdsm_convert(&top, "qcow2", &dst, "qcow2", "-n -B dparent.qcow2");
    q.setup = Some(setup);
    let tools = vec![with_verify(sdm, v.clone()), with_verify(q, v)];
    let r = b.case("qcow2 on a parent -> qcow2 -B (disk)", fx.n, tools, None);
    for p in [parent, top, dparent] {
        let _ = std::fs::remove_file(p);
    }
    r
}

/// base (the full image) <- mid (a quarter rewritten) <- top (an eighth rewritten, a
/// sixteenth zeroed), collapsed to raw and to qcow2.
pub fn chain(b: &mut Bench, fx: &Fixture) -> Result<()> {
    eprintln!("building a 3-volume chain ...");
    let base = full_qcow2(b, fx, "base.qcow2", None)?;
    let mid = b.dir.join("mid.qcow2");
    let top = b.dir.join("ctop.qcow2");
    let n = fx.n;
    for (img, back) in [(&mid, "base.qcow2"), (&top, "mid.qcow2")] {
        let _ = std::fs::remove_file(img);
        qemu_img(
            &b.dir,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=1.1",
                "-b",
                back,
                "-F",
                "qcow2",
                &s(img),
                &n.to_string(),
            ],
        )?;
    }
    let q = n / 16;
    qemu_io(&mid, &[&format!("write -P 0x44 {} {}", 2 * q, 4 * q)])?;
    qemu_io(
        &top,
        &[
            &format!("write -P 0x55 {} {}", 8 * q, 2 * q),
            &format!("write -z {} {}", 12 * q, q),
        ],
    )?;
    let layers = [
        layer("qcow2", &top),
        layer("qcow2", &mid),
        layer("qcow2", &base),
    ];
    let r = conversion(
        b,
        "3-volume chain -> raw (disk)",
        n,
        (&top, "qcow2"),
        &layers,
        (&b.dir.join("dst.raw"), "raw"),
        "",
    )
    .and_then(|()| {
        conversion(
            b,
            "3-volume chain -> qcow2 (disk)",
            n,
            (&top, "qcow2"),
            &layers,
            (&b.dir.join("dst.qcow2"), "qcow2"),
            "-o compat=1.1",
        )
    });
    for p in [base, mid, top] {
        let _ = std::fs::remove_file(p);
    }
    r
}

pub fn compressed(b: &mut Bench, fx: &Fixture) -> Result<()> {
    eprintln!("building a zlib-compressed qcow2 (slow: qemu-img compresses) ...");
    let raw = b.dir.join("compressible.raw");
    make_compressible(&raw, fx.n, 7)?;
    let q = b.dir.join("zlib.qcow2");
    let _ = std::fs::remove_file(&q);
    qemu_img(
        &b.dir,
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            &s(&raw),
            &s(&q),
        ],
    )?;
    let _ = std::fs::remove_file(&raw);
    let dst = b.dir.join("dst.raw");
    let r = conversion(
        b,
        "zlib qcow2 -> raw (disk)",
        fx.n,
        (&q, "qcow2"),
        &[layer("qcow2", &q)],
        (&dst, "raw"),
        "",
    );
    let _ = std::fs::remove_file(&q);
    r
}

pub fn sparse_qcow2(b: &mut Bench, fx: &Fixture) -> Result<()> {
    eprintln!("building a 10 %-allocated qcow2 ...");
    let raw = b.dir.join("src_sparse10.raw");
    make_image(&raw, fx.n, 3, |off| off % (10 * MIB) == 0)?;
    let q = b.dir.join("sparse10.qcow2");
    let _ = std::fs::remove_file(&q);
    qemu_img(
        &b.dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            &s(&raw),
            &s(&q),
        ],
    )?;
    let _ = std::fs::remove_file(&raw);
    let dst = b.dir.join("dst.raw");
    let r = conversion(
        b,
        "10% allocated qcow2 -> raw (disk)",
        fx.n,
        (&q, "qcow2"),
        &[layer("qcow2", &q)],
        (&dst, "raw"),
        "",
    );
    let _ = std::fs::remove_file(&q);
    r
}

/// Cold merge: a top holding the full image committed into its empty qcow2 base (made anew
/// before every run), by the engine and by VDSM's `qemu-img commit`.
pub fn merge(b: &mut Bench, fx: &Fixture) -> Result<()> {
    eprintln!("building a top of the full image on an empty base ...");
    let base = empty_qcow2(b, "mbase.qcow2", fx.n)?;
    let top = full_qcow2(b, fx, "mtop.qcow2", Some("mbase.qcow2"))?;
    let setup = sh(&format!(
        "cd {} && qemu-img create -q -f qcow2 -o compat=1.1 {} {}",
        s(&b.dir),
        s(&base),
        fx.n
    ));
    // The top holds every cluster: it reads its own data, which the base must now hold.
    let v = compare(&top, "qcow2", &base, "qcow2");
    let mut sdm = Tool::new(
        "sdm commit",
        b.sdm(
            "__commit",
            &["--base-format".into(), "qcow2".into(), s(&top), s(&base)],
        ),
        Some(&base),
        true,
    );
    sdm.setup = Some(setup.clone());
    let mut q = Tool::new(
        "qemu-img commit (VDSM)",
        sh(&format!(
            "cd {} && qemu-img commit -p -t none -b {} -f qcow2 {} && sync -d {}",
            s(&b.dir),
            s(&base),
            s(&top),
            s(&base)
        )),
        Some(&base),
        false,
    );
    q.setup = Some(setup);
    let tools = vec![with_verify(sdm, v.clone()), with_verify(q, v)];
    let r = b.case(
        "merge: commit top into qcow2 base (disk)",
        fx.n,
        tools,
        None,
    );
    let _ = std::fs::remove_file(&top);
    r
}
