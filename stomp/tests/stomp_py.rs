//! Cross-check against a STOMP implementation nobody here wrote: the Python `stomp.py`
//! client (PyPI, in a venv made by `scripts/stomp-venv`) talks to a loopback server built from
//! this crate's codec: CONNECT with heart-beats, SUBSCRIBE, SEND with `reply-to` and an
//! escaped header, MESSAGE back, heart-beats both ways while idle, DISCONNECT with a receipt.
//!
//! Without python3, venv or PyPI the test says why and skips; under `CI=true` it fails instead,
//! since `scripts/install-deps` should have made the venv.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sdm_stomp::Command;
use tokio::net::TcpListener;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate is inside the workspace")
        .to_path_buf()
}

/// The venv's python, made on first use.
fn stomp_py_python() -> Result<PathBuf, String> {
    let script = workspace_root().join("scripts/stomp-venv");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let venv = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Path::new(&venv).join("bin/python"))
}

#[tokio::test]
async fn stomp_py_session_against_our_codec() {
    let python = match stomp_py_python() {
        Ok(p) => p,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIP stomp_py_session_against_our_codec: {why}");
            return;
        }
        Err(why) => panic!("stomp.py is needed under CI: {why}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.map_err(|e| e.to_string())?;
        support::serve(sock).await
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stomp_py_client.py");
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let out = tokio::time::timeout(support::PATIENCE, child.wait_with_output())
        .await
        .expect("stomp.py client finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "OK"),
        "stomp.py client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report = tokio::time::timeout(support::PATIENCE, server)
        .await
        .expect("server finished")
        .unwrap()
        .expect("server saw valid STOMP");
    assert_eq!(
        report.commands,
        [
            Command::Connect,
            Command::Subscribe,
            Command::Send,
            Command::Disconnect
        ],
        "{report:?}"
    );
    // stomp.py asked for 1000,1000; VDSM's arithmetic answers 1000,1000.
    assert_eq!(
        (report.heart_beat.send_ms, report.heart_beat.expect_ms),
        (1000, 1000)
    );
    assert!(
        report.heart_beats >= 1,
        "no heart-beat from stomp.py: {report:?}"
    );
    assert!(report.heart_beats_sent >= 1, "{report:?}");
    assert_eq!(report.escaped, ["a:b\\c\nd\re"]);
    let connect = &report.connect_headers[0];
    let get = |k: &str| {
        connect
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("accept-version"), Some("1.2"));
    assert_eq!(get("heart-beat"), Some("1000,1000"));
}
