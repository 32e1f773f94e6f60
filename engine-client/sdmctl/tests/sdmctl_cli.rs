//! `sdmctl` exit codes without an agent: usage errors and unreachable agents are told apart.

use std::process::Command;

fn sdmctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sdmctl"))
}

#[test]
fn unreachable_agent_exits_3() {
    // A port nobody listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = sdmctl()
        .args([
            "--agent",
            &format!("http://127.0.0.1:{port}"),
            "host",
            "caps",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_ids_are_usage_errors() {
    let out = sdmctl()
        .args(["volume", "info", "../etc", "a", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid UUID"));
}
