//! The `sdm-agent` binary's start-up checks: a bad configuration is refused with the file, the
//! key and why, before anything is created.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sdm-agent"))
}

#[test]
fn bad_config_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "host_id = 1\n[io]\nqueue_depth = \"deep\"\n").unwrap();
    let out = agent()
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&cfg.display().to_string()) && err.contains("queue_depth"),
        "{err}"
    );
    assert!(
        !dir.path().join("s").exists(),
        "nothing is created for a refused config"
    );

    std::fs::write(&cfg, "host_id = 5000\n").unwrap();
    let out = agent().arg("--config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("host_id") && err.contains("1-2000"),
        "{err}"
    );
}

#[test]
fn non_loopback_without_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["--listen", "0.0.0.0:0", "--state-dir"])
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("listen"), "{err}");
}

#[test]
fn help_lists_the_flags() {
    let out = agent().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--listen", "--state-dir", "--host-id"] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}
