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

#[test]
fn bad_journal_urls_are_usage_errors_that_name_the_problem() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("postgres://sdm:secret@127.0.0.1:{port}/sdm");
    for (url, want) in [
        ("mysql://h/db", "unknown scheme"),
        ("file:", "file: needs a path"),
        (unreachable.as_str(), "cannot connect to journal database"),
    ] {
        let out = sdmctl()
            .args(["resume", "--journal", url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains(want), "{url}: {err}");
        assert!(!err.contains("secret"), "the password is not shown: {err}");
    }
    // A lease the renewals cannot keep is refused before anything is opened.
    let out = sdmctl()
        .args([
            "resume",
            "--journal",
            &unreachable,
            "--journal-lease",
            "2",
            "--journal-renew",
            "2",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at most half the lease"), "{err}");
}

#[test]
fn resume_list_of_an_empty_file_journal() {
    let dir = tempfile::tempdir().unwrap();
    let j = format!("file:{}", dir.path().join("j").display());
    let out = sdmctl()
        .args(["resume", "--list", "--journal", &j])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to resume"));
}
