//! sanlock: an acquire is only as good as what it recorded, and `verify` compares all of it
//! (owner host, owner generation, lease version). One test, one private daemon, one lockspace
//! (a process talks to one daemon; joins cost seconds).
#![cfg(feature = "test-support")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{daemon, opts, outside_release, tempdir, unique, with_log};
use sdm_lease::test_support::{SanlockDaemon, TEST_IO_TIMEOUT_S};
use sdm_lease::{LeaseBackend, LeaseErrorKind, LeaseStatus, SanlockLeases, SanlockOptions};

const CHILD_ENV: &str = "SDM_LEASE_VERIFY_CHILD";

/// Helper process: another holder on the same host (same daemon), so that its acquire is
/// not seen by this process's own bookkeeping. Holds the lease until its stdin closes.
#[test]
#[ignore = "helper process, driven by sanlock_acquire_records_and_verify_compares"]
fn child_holder() {
    let Some(args) = std::env::var(CHILD_ENV).ok() else {
        return;
    };
    let a: Vec<&str> = args.split('\n').collect();
    let opts = SanlockOptions {
        io_timeout_s: TEST_IO_TIMEOUT_S,
        run_dir: Some(a[0].into()),
    };
    let h = SanlockLeases::new(1, opts).unwrap();
    let lease = h.acquire(a[1], a[2], Path::new(a[3]), 0).unwrap();
    println!("@@ acquired");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(lease);
}

/// The parent's handle on a `child_holder`. Dropping it closes the child's stdin, so the
/// child releases its lease and exits; it is killed by pid if it has not after 10 s.
struct Holder {
    child: Child,
    /// Kept open until the child is gone (a pipe buffer holds its last lines): a closed pipe
    /// would fail its exit.
    _out: Option<BufReader<std::process::ChildStdout>>,
}

impl Holder {
    fn acquire(d: &SanlockDaemon, sd: &str, vol: &str, path: &Path) -> Holder {
        let args = format!("{}\n{sd}\n{vol}\n{}", d.run_dir().display(), path.display());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_holder", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 {
            if line.contains("@@ acquired") {
                return Holder {
                    child,
                    _out: Some(out),
                };
            }
            line.clear();
        }
        let mut holder = Holder { child, _out: None };
        let st = holder.child.wait();
        panic!("the helper did not acquire the lease: {st:?}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sanlock_acquire_records_and_verify_compares() {
    let Some(d) = daemon("lease-verify") else {
        return;
    };
    with_log(&d, || scenario(&d));
}

fn scenario(d: &SanlockDaemon) {
    let dir = tempdir();
    let root = dir.path();
    let ids = root.join("ids");
    let leases = root.join("leases");
    let vpath = root.join("vol.lease");
    let sd = unique("sd-verify");
    let vol = "vol-1";
    let h = SanlockLeases::new(1, opts(d)).unwrap();
    h.format_domain(&sd, &ids, &leases, TEST_IO_TIMEOUT_S)
        .unwrap();
    h.join(&sd, &ids).unwrap();
    h.init_volume_lease(&sd, vol, &vpath).unwrap();

    acquire_whose_owner_read_fails_holds_nothing(&h, &sd, vol, &vpath);
    verify_detects_a_newer_version(d, &h, &sd, vol, &vpath);
    verify_detects_a_rejoined_host(d, &h, &sd, &ids, vol, &vpath);
}

/// The owner record read right after the acquire fails: the acquire fails too, and the
/// lease it had taken is released (free on storage, and acquirable again at once instead of
/// -EEXIST from the daemon).
fn acquire_whose_owner_read_fails_holds_nothing(
    h: &SanlockLeases,
    sd: &str,
    vol: &str,
    vpath: &Path,
) {
    sdm_lease::test_support::fail_next_acquired_read(-libc::EIO);
    let r = h.acquire(sd, vol, vpath, 0);
    let e = r.expect_err("an acquire whose owner record could not be read must fail");
    assert_eq!(
        (e.kind(), e.code()),
        (LeaseErrorKind::Io, Some(-libc::EIO)),
        "{e}"
    );
    eprintln!("acquire with a failed owner read: {e}");
    let st = h.status(sd, vol, vpath, 0).unwrap();
    assert!(
        st.owners.is_empty(),
        "the failed acquire still holds: {st:?}"
    );
    // It did take the lease (the version moved on) and gave it back.
    assert_eq!(st.version, Some(1));
    let lease = h.acquire(sd, vol, vpath, 0).unwrap();
    lease.verify().unwrap();
    lease.release().unwrap();
}

/// Released behind our back, then acquired again by another process of this host: same
/// host, same generation, newer version. Then the same with this process acquiring again:
/// the old holder's verify fails at once, and its release must not release the new holder's
/// lease.
fn verify_detects_a_newer_version(
    d: &SanlockDaemon,
    h: &SanlockLeases,
    sd: &str,
    vol: &str,
    vpath: &Path,
) {
    let old = h.acquire(sd, vol, vpath, 0).unwrap();
    old.verify().unwrap();
    outside_release(d, sd, vol, vpath, 0);
    let other = Holder::acquire(d, sd, vol, vpath);
    old.verify_fast().unwrap(); // nothing this process could notice without reading
    let e = old.verify().unwrap_err();
    assert_eq!(e.kind(), LeaseErrorKind::Lost, "{e}");
    assert!(e.to_string().contains("version"), "{e}");
    eprintln!("verify after another process's acquire: {e}");
    drop(other);
    drop(old);

    let old = h.acquire(sd, vol, vpath, 0).unwrap();
    outside_release(d, sd, vol, vpath, 0);
    let new = h.acquire(sd, vol, vpath, 0).unwrap();
    let e = old.verify().unwrap_err();
    assert_eq!(e.kind(), LeaseErrorKind::Lost, "{e}");
    eprintln!("verify after this process's own newer acquire: {e}");
    assert_eq!(old.verify_fast().unwrap_err().kind(), LeaseErrorKind::Lost);
    new.verify().unwrap();
    new.verify_fast().unwrap();
    let e = old.release().unwrap_err();
    assert_eq!(e.kind(), LeaseErrorKind::Lost, "{e}");
    new.verify().unwrap();
    assert_eq!(h.status(sd, vol, vpath, 0).unwrap().owners, vec![1]);
    new.release().unwrap();
}

/// Released behind our back, the host leaves and re-joins the lockspace (new generation),
/// the lease is re-initialised (version back to 0) and acquired again: same host, same
/// version, different generation. Only the generation tells the two acquires apart.
fn verify_detects_a_rejoined_host(
    d: &SanlockDaemon,
    h: &SanlockLeases,
    sd: &str,
    ids: &Path,
    vol: &str,
    vpath: &Path,
) {
    h.init_volume_lease(sd, vol, vpath).unwrap();
    let old = h.acquire(sd, vol, vpath, 0).unwrap();
    let v = h.status(sd, vol, vpath, 0).unwrap().version;
    assert_eq!(v, Some(1));
    outside_release(d, sd, vol, vpath, 0);
    h.leave(sd, ids).unwrap();
    h.join(sd, ids).unwrap();
    h.init_volume_lease(sd, vol, vpath).unwrap();
    let new = Holder::acquire(d, sd, vol, vpath);
    assert_eq!(
        h.status(sd, vol, vpath, 0).unwrap(),
        LeaseStatus {
            owners: vec![1],
            version: Some(1)
        },
        "same host and version as the first acquire"
    );
    let e = old.verify().unwrap_err();
    assert_eq!(e.kind(), LeaseErrorKind::Lost, "{e}");
    assert!(e.to_string().contains("generation"), "{e}");
    eprintln!("verify after a re-join: {e}");
    // Releasing the stale lease leaves the other holder's alone.
    assert!(old.release().is_err());
    let e = h.acquire(sd, vol, vpath, 0).unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (LeaseErrorKind::Busy, Some(-libc::EEXIST)),
        "{e}"
    );
    drop(new);
    h.acquire(sd, vol, vpath, 0).unwrap().release().unwrap();
}
