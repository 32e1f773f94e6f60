//! stomp.py, a STOMP client written outside this project (PyPI, in the venv `scripts/stomp-venv`
//! makes), driven line by line through `tests/py/stomp_shell.py`; and the venv's Python for
//! other checks with third-party code (prometheus_client's OpenMetrics parser).
//!
//! Without python3, venv or PyPI a test using it says why and skips; under `CI=true` it fails
//! instead, since `scripts/install-deps` makes the venv.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The venv's python (made on first use), or why there is none. Under `CI=true` a missing venv
/// panics.
pub fn venv_python() -> Result<PathBuf, String> {
    let script = workspace_root().join("scripts/stomp-venv");
    let made = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))
        .and_then(|out| {
            if out.status.success() {
                let venv = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Ok(Path::new(&venv).join("bin/python"))
            } else {
                Err(format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        });
    match made {
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the stomp.py venv is needed under CI: {why}")
        }
        r => r,
    }
}

/// A running `stomp_shell.py`.
pub struct StompPy {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// How long one shell command may take before the test gives up on it.
const COMMAND_PATIENCE: Duration = Duration::from_secs(180);

impl StompPy {
    /// Starts the shell; None (after saying why) when there is no venv outside CI.
    pub fn start(test: &str) -> Option<StompPy> {
        let python = match venv_python() {
            Ok(p) => p,
            Err(why) => {
                eprintln!("SKIP {test}: {why}");
                return None;
            }
        };
        let mut child = Command::new(python)
            .arg(workspace_root().join("tests/py/stomp_shell.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start stomp_shell.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Some(StompPy {
            child,
            stdin,
            lines,
        })
    }

    /// Runs one command; the shell's answer, `{"error": ...}` included.
    pub fn try_cmd(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to stomp_shell.py");
        self.stdin.flush().expect("flush");
        let line = self
            .lines
            .recv_timeout(COMMAND_PATIENCE)
            .unwrap_or_else(|_| panic!("stomp_shell.py did not answer {cmd}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }

    /// Runs one command that must succeed.
    pub fn cmd(&mut self, cmd: Value) -> Value {
        let r = self.try_cmd(cmd.clone());
        if let Some(e) = r.get("error") {
            panic!("stomp.py: {cmd} failed: {e}");
        }
        r
    }

    /// Connects session `name` to `port` with heart-beats `(cx, cy)` (no TLS).
    pub fn connect(&mut self, name: &str, port: u16, hb: (u64, u64)) -> Value {
        self.cmd(json!({"op": "connect", "name": name, "port": port, "hb": [hb.0, hb.1]}))
    }

    /// Subscribes session `name` to `dest` as `id`.
    pub fn subscribe(&mut self, name: &str, dest: &str, id: &str) {
        self.cmd(json!({"op": "subscribe", "name": name, "dest": dest, "id": id}));
    }

    /// Sends `body` to `dest` with `headers`.
    pub fn send(&mut self, name: &str, dest: &str, body: &str, headers: Value) {
        self.cmd(
            json!({"op": "send", "name": name, "dest": dest, "body": body, "headers": headers}),
        );
    }

    /// Waits for the MESSAGE on `dest` answering request `id`; returns (headers, parsed body).
    pub fn reply(&mut self, name: &str, dest: &str, id: &str) -> (Value, Value) {
        let m = self
            .cmd(json!({"op": "wait", "name": name, "dest": dest, "json_id": id, "timeout": 60}));
        let body: Value = serde_json::from_str(m["body"].as_str().expect("body")).expect("JSON");
        (m["headers"].clone(), body)
    }

    /// Calls `method` with `params` as vdsm-client does (a one-element batch to the request
    /// queue, `reply-to` = `reply_to`, which `name` must be subscribed to); returns the reply.
    pub fn call(&mut self, name: &str, reply_to: &str, method: &str, params: Value) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!([{"jsonrpc": "2.0", "id": id, "method": method, "params": params}]);
        self.send(
            name,
            sdm_stomp_request_queue(),
            &body.to_string(),
            json!({"reply-to": reply_to}),
        );
        self.reply(name, reply_to, &id).1
    }

    /// Session `name`'s counters.
    pub fn stats(&mut self, name: &str) -> Value {
        self.cmd(json!({"op": "stats", "name": name}))
    }
}

/// VDSM's request queue.
pub fn sdm_stomp_request_queue() -> &'static str {
    "jms.topic.vdsm_requests"
}

impl Drop for StompPy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
