//! The fallback converter: `qemu-img convert` with VDSM's flags, as a child process whose `-p`
//! progress feeds the operation's [`Control`] and which an abort kills (SIGKILL, as VDSM does).
//! The child also gets SIGKILL if the thread that started it dies (PR_SET_PDEATHSIG), so it
//! never outlives the agent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{ConvertDest, DestFormat, ImageFormat, Layer};
use crate::{sys, Control, IoError};

/// How often the waiting thread looks at the abort flag.
const POLL: Duration = Duration::from_millis(50);

/// The qemu-img binary; tests may point elsewhere.
fn qemu_img() -> PathBuf {
    std::env::var_os("SDM_QEMU_IMG").map_or_else(|| "qemu-img".into(), PathBuf::from)
}

/// Everything that decides the command line.
pub(crate) struct Job<'a> {
    pub(crate) src: &'a [Layer],
    /// The caller's chain stops above a layer the top's headers still name: pin it with a
    /// `json:` source so qemu-img reads exactly the layers given (collapse only).
    pub(crate) pin_chain: bool,
    pub(crate) dst: &'a ConvertDest,
    pub(crate) dst_is_block: bool,
    pub(crate) copy_bitmaps: bool,
    pub(crate) rate_limit: Option<u64>,
}

/// The argument vector (without the program), as VDSM's `qemuimg.convert` builds it.
pub(crate) fn args(j: &Job<'_>) -> Vec<String> {
    let mut a: Vec<String> = ["convert", "-p", "-t", "none", "-T", "none"]
        .map(String::from)
        .into();
    let top = &j.src[0];
    if !j.pin_chain {
        a.extend(["-f".into(), top.format.as_str().into()]);
    }
    let (dst_fmt, backing) = match &j.dst.format {
        DestFormat::Raw => ("raw", None),
        DestFormat::Qcow2(q) => ("qcow2", q.backing.as_ref()),
    };
    a.extend(["-O".into(), dst_fmt.into()]);
    if j.dst.create {
        let mut o = Vec::new();
        if let DestFormat::Qcow2(q) = &j.dst.format {
            o.push(format!("compat={}", q.compat.as_str()));
            if q.cluster_size != super::DEFAULT_CLUSTER_SIZE {
                o.push(format!("cluster_size={}", q.cluster_size));
            }
        }
        if let Some(b) = backing {
            o.push(format!("backing_file={}", b.name));
            o.push(format!("backing_fmt={}", b.format.as_str()));
        }
        if !o.is_empty() {
            a.extend(["-o".into(), o.join(",")]);
        }
    } else {
        a.push("-n".into());
        if let Some(b) = backing {
            // As VDSM: -B alone (with -n, qemu-img takes the format from the image).
            a.extend(["-B".into(), b.name.clone()]);
        } else if j.dst.reads_zero {
            a.push("--target-is-zero".into());
        }
    }
    if j.dst_is_block && matches!(j.dst.format, DestFormat::Raw) {
        a.push("-W".into());
    }
    if j.copy_bitmaps {
        a.extend(["--bitmaps".into(), "--skip-broken-bitmaps".into()]);
    }
    if let Some(r) = j.rate_limit {
        a.extend(["-r".into(), r.to_string()]);
    }
    a.push(if j.pin_chain {
        pinned_source(j.src)
    } else {
        top.path.display().to_string()
    });
    a.push(j.dst.path.display().to_string());
    a
}

/// A `json:` source naming every layer and ending the chain with `"backing": null`.
fn pinned_source(layers: &[Layer]) -> String {
    let mut node = "null".to_string();
    for l in layers.iter().rev() {
        let proto = if is_block(&l.path) {
            "host_device"
        } else {
            "file"
        };
        let file = format!(
            r#"{{"driver":"{proto}","filename":{}}}"#,
            json_str(&l.path.display().to_string())
        );
        node = match l.format {
            ImageFormat::Raw => format!(r#"{{"driver":"raw","file":{file}}}"#),
            ImageFormat::Qcow2 => {
                format!(r#"{{"driver":"qcow2","file":{file},"backing":{node}}}"#)
            }
        };
    }
    format!("json:{node}")
}

fn is_block(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The percentage of the last complete `\r`-terminated `(NN.NN/100%)` record in `out`,
/// consuming what was parsed.
pub(crate) fn take_progress(out: &mut Vec<u8>) -> Option<f64> {
    let end = out.iter().rposition(|&b| b == b'\r')?;
    let rec = &out[..end];
    let start = rec.iter().rposition(|&b| b == b'\r').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&rec[start..]).into_owned();
    out.drain(..=end);
    let t = text.trim();
    let inner = t.strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.parse().ok()
}

/// Runs qemu-img with `args` until it exits, is aborted through `ctl`, or fails.
pub(crate) fn run(args: &[String], cwd: &Path, dst: &Path, ctl: &Control) -> Result<(), IoError> {
    let total = ctl.progress().bytes_total;
    let mut cmd = Command::new(qemu_img());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::kill_with_parent(&mut cmd);
    tracing::info!(?args, "converting with qemu-img");
    let mut child = cmd
        .spawn()
        .map_err(|e| IoError::os("start qemu-img for", dst, e))?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    std::thread::scope(|s| {
        let progress = s.spawn(move || follow_progress(stdout, total, ctl));
        let errors = s.spawn(move || {
            let mut e = Vec::new();
            let _ = stderr.read_to_end(&mut e);
            e
        });
        let status = wait_or_kill(&mut child, ctl);
        let _ = progress.join();
        let err_text = errors.join().unwrap_or_default();
        let status = status.map_err(|e| IoError::os("wait for qemu-img for", dst, e))?;
        match status {
            None => Err(IoError::aborted("convert to", dst)),
            Some(st) if st.success() => Ok(()),
            Some(st) => Err(IoError::External {
                path: dst.to_owned(),
                status: st.to_string(),
                stderr: String::from_utf8_lossy(&err_text).trim().to_string(),
            }),
        }
    })
}

/// Waits for the child; on abort kills it and returns None.
fn wait_or_kill(
    child: &mut Child,
    ctl: &Control,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if ctl.is_aborted() {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

fn follow_progress(mut out: impl Read, total: u64, ctl: &Control) {
    let mut buf = vec![0u8; 4096];
    let mut pending = Vec::new();
    let mut reported = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        if let Some(pct) = take_progress(&mut pending) {
            let now = ((pct.clamp(0.0, 100.0) / 100.0) * total as f64) as u64;
            if now > reported {
                ctl.add_done(now - reported);
                reported = now;
            }
        }
    }
}

/// `qemu-img measure` of converting `top` (and its chain) into qcow2 with `q`.
pub(crate) fn measure(
    top: &Layer,
    q: &super::Qcow2Options,
    size: u64,
) -> Result<super::Measure, IoError> {
    let opts = format!(
        "compat={},cluster_size={}",
        q.compat.as_str(),
        q.cluster_size
    );
    let run = |tail: &[&str]| -> Result<String, IoError> {
        let out = Command::new(qemu_img())
            .args(["measure", "--output", "json", "-O", "qcow2", "-o", &opts])
            .args(tail)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| IoError::os("run qemu-img measure on", &top.path, e))?;
        if !out.status.success() {
            return Err(IoError::External {
                path: top.path.clone(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let path = top.path.display().to_string();
    let of_src = run(&["-f", top.format.as_str(), &path])?;
    let of_size = run(&["--size", &size.to_string()])?;
    let field = |json: &str, key: &str| -> Result<u64, IoError> {
        json_u64(json, key).ok_or_else(|| IoError::External {
            path: top.path.clone(),
            status: "unexpected output".into(),
            stderr: format!("no {key:?} in {json}"),
        })
    };
    Ok(super::Measure {
        required: field(&of_src, "required")?,
        fully_allocated: field(&of_size, "fully-allocated")?,
    })
}

/// The unsigned number after `"key":` in qemu-img's flat JSON output.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn measure_json_fields() {
        let j = "{\n    \"bitmaps\": 0,\n    \"required\": 393216,\n    \"fully-allocated\": 1074135040\n}\n";
        assert_eq!(super::json_u64(j, "required"), Some(393216));
        assert_eq!(super::json_u64(j, "fully-allocated"), Some(1074135040));
        assert_eq!(super::json_u64(j, "missing"), None);
    }

    use super::*;

    #[test]
    fn progress_records_are_parsed_like_vdsm() {
        let mut out = b"    (0.00/100%)\r    (12.50/100%)\r    (13".to_vec();
        assert_eq!(take_progress(&mut out), Some(12.5));
        assert_eq!(out, b"    (13");
        out.extend_from_slice(b".01/100%)\r");
        assert_eq!(take_progress(&mut out), Some(13.01));
        assert_eq!(take_progress(&mut out), None);
    }

    #[test]
    fn pinned_source_escapes_and_ends_the_chain() {
        let layers = [
            Layer {
                path: "/d/top\"x".into(),
                format: ImageFormat::Qcow2,
            },
            Layer {
                path: "/d/base".into(),
                format: ImageFormat::Raw,
            },
        ];
        assert_eq!(
            pinned_source(&layers),
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"/d/top\"x"},"backing":{"driver":"raw","file":{"driver":"file","filename":"/d/base"}}}"#
        );
        let one = &layers[..1];
        assert!(pinned_source(one).ends_with(r#""backing":null}"#));
    }
}
