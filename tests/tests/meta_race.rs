//! Two hosts replacing the same `.meta` (issue 12): every version a reader sees is one
//! writer's whole version, never empty or torn. The writers are processes (this test binary,
//! re-executed), each with its own host id, calling the agent's `durable::replace`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WRITER_ENV: &str = "SDM_FENCING_META_WRITER";

/// Version `seq` of writer `host`: parsable, with a marker, of a length that varies.
fn meta_version(host: u64, seq: u64) -> Vec<u8> {
    let pad = "x".repeat(200 + ((seq * 37 + host * 11) % 200) as usize);
    format!("MARKER=sdm-fencing\nHOST={host}\nSEQ={seq}\nPAD={pad}\nEOF\n").into_bytes()
}

fn parse_version(b: &[u8]) -> Option<(u64, u64)> {
    let t = std::str::from_utf8(b).ok()?;
    let mut lines = t.lines();
    (lines.next()? == "MARKER=sdm-fencing").then_some(())?;
    let host = lines.next()?.strip_prefix("HOST=")?.parse().ok()?;
    let seq = lines.next()?.strip_prefix("SEQ=")?.parse().ok()?;
    (meta_version(host, seq) == b).then_some((host, seq))
}

/// Not a test of its own: the writer process of `two_hosts_replacing_one_meta_never_tear_it`
/// (this binary, re-executed with the writer's arguments in the environment). Without them
/// it only checks that the versions it writes are what the reader accepts.
#[test]
fn meta_writer_child() {
    let Ok(args) = std::env::var(WRITER_ENV) else {
        assert_eq!(parse_version(&meta_version(2, 7)), Some((2, 7)));
        assert_eq!(parse_version(&meta_version(2, 7)[..40]), None);
        assert_eq!(parse_version(b""), None);
        return;
    };
    let mut it = args.splitn(3, ':');
    let host: u64 = it.next().unwrap().parse().unwrap();
    let count: u64 = it.next().unwrap().parse().unwrap();
    let path = std::path::PathBuf::from(it.next().unwrap());
    sdm_agent::durable::set_writer_host(host);
    let mut errors = 0;
    for seq in 0..count {
        if let Err(e) = sdm_agent::durable::replace(&path, &meta_version(host, seq)) {
            if errors == 0 {
                eprintln!("writer {host}: {e}");
            }
            errors += 1;
        }
    }
    println!("WRITER-ERRORS={errors}");
}

/// Two writers (processes, host ids 1 and 2) replace the same `.meta` 10,000 times in all
/// while a reader reads it in a loop: every version read is whole (parses, carries the
/// marker, is exactly one writer's version), and no writer fails.
#[test]
fn two_hosts_replacing_one_meta_never_tear_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0f6b3e0a-1111-4222-8333-444455556666.meta");
    sdm_agent::durable::replace(&path, &meta_version(0, 0)).unwrap();
    let writers: Vec<_> = [1u64, 2]
        .iter()
        .map(|h| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "meta_writer_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WRITER_ENV, format!("{h}:5000:{}", path.display()))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut reads, mut torn, mut seen) = (0u64, Vec::new(), std::collections::HashSet::new());
    let running = |w: &[std::process::Child]| {
        w.iter()
            .any(|c| Path::new(&format!("/proc/{}", c.id())).exists())
    };
    let start = Instant::now();
    let mut writers = writers;
    while writers.iter_mut().any(|c| c.try_wait().unwrap().is_none()) && running(&writers) {
        assert!(start.elapsed() < Duration::from_secs(300), "writers hang");
        match std::fs::read(&path) {
            Ok(b) => match parse_version(&b) {
                Some(v) => {
                    seen.insert(v);
                }
                None => {
                    if torn.len() < 5 {
                        torn.push(String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned());
                    }
                }
            },
            Err(e) => torn.push(format!("read failed: {e}")),
        }
        reads += 1;
    }
    let mut errors = 0;
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let n: u64 = text
            .lines()
            .find_map(|l| l.split("WRITER-ERRORS=").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count from the writer: {text}"));
        errors += n;
    }
    eprintln!(
        "{reads} reads, {} distinct versions seen, {} bad, writer errors {errors}",
        seen.len(),
        torn.len()
    );
    assert!(torn.is_empty(), "torn or empty versions read: {torn:?}");
    assert_eq!(errors, 0, "writers failed");
    assert!(parse_version(&std::fs::read(&path).unwrap()).is_some());
    assert!(seen.len() > 10, "the reader saw the writers at work");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
}
