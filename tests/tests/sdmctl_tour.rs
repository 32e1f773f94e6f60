//! The README's tour, command by command, through the real `sdmctl` against a real agent:
//! what a newcomer types must work as written.

use std::process::{Command, Output};

use sdm_tests::*;

fn sdmctl(agent: &AgentProc, journal: &std::path::Path, args: &[&str]) -> Output {
    let out = Command::new(bin("sdmctl"))
        .env("SDM_AGENT", &agent.url)
        .env("SDM_JOURNAL", journal)
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "sdmctl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn ok(agent: &AgentProc, journal: &std::path::Path, args: &[&str]) -> String {
    let out = sdmctl(agent, journal, args);
    assert!(out.status.success(), "sdmctl {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_readme_tour_works() {
    let agent = AgentProc::start(AgentOptions::default());
    let j = agent.state_dir.join("engine.journal");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&agent, &j, &["--json", "domain", "list"])).unwrap();
    let sd1 = list[0]["sd_id"].as_str().unwrap().to_string();
    let sd2 = list[1]["sd_id"].as_str().unwrap().to_string();
    assert!(ok(&agent, &j, &["domain", "list"]).contains(&sd1));

    let img = uuid().to_string();
    let vol = ok(
        &agent,
        &j,
        &[
            "volume", "create", &sd1, &img, "--size", "64M", "--format", "raw",
        ],
    );
    assert_eq!(vol.len(), 36);
    let info = ok(&agent, &j, &["volume", "info", &sd1, &img, &vol]);
    assert!(
        info.contains("LEGAL (generation 0)") && info.contains("lease:       free"),
        "{info}"
    );
    let sum = ok(&agent, &j, &["volume", "checksum", &sd1, &img, &vol]);
    assert!(sum.contains("checksum done"), "{sum}");

    assert!(ok(
        &agent,
        &j,
        &["image", "move", &img, "--from", &sd1, "--to", &sd2]
    )
    .contains("done"));
    assert!(ok(&agent, &j, &["image", "delete", &sd1, &img, "--wipe"]).contains("done"));
    let jobs = ok(&agent, &j, &["jobs", "list"]);
    assert!(
        jobs.contains("move_image") && jobs.contains("delete_image"),
        "{jobs}"
    );
    assert_eq!(ok(&agent, &j, &["domain", "check", &sd1]), "nothing to fix");

    let img2 = uuid().to_string();
    let base = ok(
        &agent,
        &j,
        &[
            "volume", "create", &sd2, &img2, "--size", "16M", "--format", "cow",
        ],
    );
    ok(
        &agent,
        &j,
        &[
            "volume", "create", &sd2, &img2, "--size", "16M", "--format", "cow", "--parent", &base,
        ],
    );
    let hosts = ok(&agent, &j, &["hosts"]);
    assert!(hosts.contains(&agent.addr.port().to_string()), "{hosts}");
    let moved = sdmctl(
        &agent,
        &j,
        &[
            "--json", "disk", "move", &img2, "--from", &sd2, "--to", &sd1, "--wipe",
        ],
    );
    assert!(moved.status.success());
    ok(&agent, &j, &["resume"]);
    let vols = ok(&agent, &j, &["image", "volumes", &sd1, &img2]);
    assert_eq!(vols.lines().count(), 2, "{vols}");
    // The source was deleted after the move: the image has no volumes there any more.
    let gone = ok(&agent, &j, &["image", "volumes", &sd2, &img2]);
    assert_eq!(gone.lines().count(), 0, "{gone}");
}
