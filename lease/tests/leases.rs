//! Lease tests with real processes: a child process (this test binary, re-executed) holds
//! leases so that killing it can be tested, and acts as a second sanlock host. The sanlock
//! test starts its own unprivileged daemons (feature `test-support`) and skips with a
//! message when it cannot (not root, sanlock missing).
// Parts of the helper protocol are only used by the sanlock test.
#![cfg_attr(not(feature = "test-support"), allow(dead_code))]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use sdm_lease::{Lease, LeaseBackend, LeaseErrorKind, LocalLeases};

const CHILD_ENV: &str = "SDM_LEASE_TEST_CHILD";

/// Entry point of the helper process; does nothing in a normal test run.
#[test]
#[ignore = "helper process, driven by the other tests"]
fn child_main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child::serve();
    }
}

/// Line protocol of the helper: one command per stdin line, one `@@ ok ...` or
/// `@@ err <Kind> <message>` line back per command.
mod child {
    use super::*;
    use sdm_lease::{SanlockLeases, SanlockOptions};

    pub fn serve() {
        let mut backend: Option<Box<dyn LeaseBackend>> = None;
        let mut held: Vec<Lease> = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap();
            let w: Vec<&str> = line.split_whitespace().collect();
            let start = Instant::now();
            let reply: Result<String, sdm_lease::LeaseError> = match w.as_slice() {
                ["local", id] => {
                    backend = Some(Box::new(LocalLeases::new(id.parse().unwrap())));
                    Ok(String::new())
                }
                ["sanlock", id, run_dir] => {
                    let opts = SanlockOptions {
                        io_timeout_s: 1,
                        run_dir: Some(PathBuf::from(run_dir)),
                    };
                    SanlockLeases::new(id.parse().unwrap(), opts).map(|b| {
                        backend = Some(Box::new(b));
                        String::new()
                    })
                }
                ["join", sd, ids] => backend
                    .as_ref()
                    .unwrap()
                    .join(sd, Path::new(ids))
                    .map(|_| String::new()),
                ["acquire", sd, vol, path, off] => backend
                    .as_ref()
                    .unwrap()
                    .acquire(sd, vol, Path::new(path), off.parse().unwrap())
                    .map(|l| held.push(l))
                    .map(|_| String::new()),
                ["release"] => held.pop().unwrap().release().map(|_| String::new()),
                ["pid"] => Ok(std::process::id().to_string()),
                _ => panic!("unknown command {line:?}"),
            };
            let ms = start.elapsed().as_millis();
            match reply {
                Ok(text) => println!("@@ ok {ms} {text}"),
                Err(e) => println!("@@ err {ms} {:?} {e}", e.kind()),
            }
        }
    }
}

/// The parent's handle on a helper process; killed (SIGKILL by pid) on drop.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(Debug)]
struct Reply {
    ok: bool,
    ms: u64,
    kind: String,
    text: String,
}

impl Helper {
    fn spawn() -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_main",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Helper {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Reply {
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "helper exited"
            );
            // libtest may print "test child_main ... " in front of the first reply.
            let Some(at) = line.find("@@ ") else { continue };
            let rest = line[at + 3..].trim_end();
            let mut parts = rest.splitn(3, ' ');
            let ok = parts.next() == Some("ok");
            let ms = parts.next().unwrap().parse().unwrap();
            let rest = parts.next().unwrap_or("").trim().to_string();
            let (kind, text) = if ok {
                (String::new(), rest)
            } else {
                let (k, t) = rest.split_once(' ').unwrap_or((&rest, ""));
                (k.to_string(), t.to_string())
            };
            return Reply { ok, ms, kind, text };
        }
    }

    fn call(&mut self, cmd: &str) -> Reply {
        self.send(cmd);
        self.recv()
    }

    fn ok(&mut self, cmd: &str) -> Reply {
        let r = self.call(cmd);
        assert!(r.ok, "helper {cmd:?} failed: {r:?}");
        r
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sdm-lease-test-")
        .tempdir()
        .unwrap()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn local_lease_is_freed_when_holder_is_killed() {
    let dir = tempdir();
    let path = dir.path().join("vol.lease");
    let leases = LocalLeases::new(1);
    leases.init_volume_lease("sd", "vol", &path).unwrap();

    let mut holder = Helper::spawn();
    holder.ok("local 1");
    holder.ok(&format!("acquire sd vol {} 0", path.display()));

    assert_eq!(
        leases.status("sd", "vol", &path, 0).unwrap().owners,
        vec![1]
    );
    let err = leases.acquire("sd", "vol", &path, 0).unwrap_err();
    assert_eq!(err.kind(), LeaseErrorKind::Busy, "{err}");

    holder.kill();
    assert!(leases
        .status("sd", "vol", &path, 0)
        .unwrap()
        .owners
        .is_empty());
    leases
        .acquire("sd", "vol", &path, 0)
        .unwrap()
        .release()
        .unwrap();
}

#[cfg(feature = "test-support")]
mod sanlock {
    use super::*;
    use sdm_lease::test_support::{sanlock_available, SanlockDaemon, TEST_IO_TIMEOUT_S};
    use sdm_lease::{LeaseStatus, SanlockLeases, SanlockOptions, SDM_LEASE_OFFSET, SDM_RESOURCE};

    fn opts(d: &SanlockDaemon) -> SanlockOptions {
        SanlockOptions {
            io_timeout_s: TEST_IO_TIMEOUT_S,
            run_dir: Some(d.run_dir().into()),
        }
    }

    /// The whole sanlock story in one test, because a process can talk to one daemon only and
    /// joins cost seconds: host 1 is this process (daemon A), host 2 a helper (daemon B), both
    /// on the same lockspace files.
    #[test]
    fn sanlock_two_hosts() {
        if let Err(why) = sanlock_available() {
            eprintln!("SKIPPED sanlock_two_hosts: {why}");
            return;
        }
        let t0 = Instant::now();
        let mut a = SanlockDaemon::start("lease-host1");
        let b = SanlockDaemon::start("lease-host2");
        eprintln!("daemons up in {:?}", t0.elapsed());
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut a, &b)));
        if result.is_err() || std::env::var_os("SDM_LEASE_TEST_LOGS").is_some() {
            eprintln!(
                "--- daemon A log ---\n{}\n--- daemon B log ---\n{}",
                a.log(),
                b.log()
            );
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        eprintln!("sanlock_two_hosts took {:?}", t0.elapsed());
    }

    fn scenario(a: &mut SanlockDaemon, b: &SanlockDaemon) {
        let dir = tempdir();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dom_md")).unwrap();
        std::fs::create_dir_all(root.join("images/img")).unwrap();
        let ids = root.join("dom_md/ids");
        let dleases = root.join("dom_md/leases");
        let vpath = root.join("images/img/vol-1.lease");
        let sd = format!("sd-{}-{}", std::process::id(), t_nanos());
        let vol = "vol-1";
        let vstr = vpath.display().to_string();

        // A process without a daemon gets a Daemon error, not a hang.
        let mut nodaemon = Helper::spawn();
        let r = nodaemon.call(&format!("sanlock 3 {}", root.join("no-daemon").display()));
        assert!(!r.ok && r.kind == "Daemon", "{r:?}");
        drop(nodaemon);

        let h1 = SanlockLeases::new(1, opts(a)).unwrap();
        // The process is bound to daemon A now.
        let e = SanlockLeases::new(1, opts(b)).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::Invalid, "{e}");

        let t = Instant::now();
        h1.format_domain(&sd, &ids, &dleases, TEST_IO_TIMEOUT_S)
            .unwrap();
        assert_eq!(std::fs::metadata(&ids).unwrap().len(), sdm_lease::ALIGNMENT);
        assert_eq!(
            std::fs::metadata(&dleases).unwrap().len(),
            2 * sdm_lease::ALIGNMENT
        );
        eprintln!("format_domain: {:?}", t.elapsed());

        // Host 2 joins in parallel with host 1.
        let mut host2 = Helper::spawn();
        host2.ok(&format!("sanlock 2 {}", b.run_dir().display()));
        host2.send(&format!("join {sd} {}", ids.display()));

        // Two threads join at once: one adds, the other waits for it; both succeed.
        let t = Instant::now();
        std::thread::scope(|s| {
            let j: Vec<_> = (0..2).map(|_| s.spawn(|| h1.join(&sd, &ids))).collect();
            for j in j {
                j.join().unwrap().unwrap();
            }
        });
        eprintln!(
            "join (host 1, io_timeout {TEST_IO_TIMEOUT_S}s): {:?}",
            t.elapsed()
        );
        h1.join(&sd, &ids).unwrap(); // already joined

        // A lease at an offset of a shared area, as a block domain's `leases` LV holds them:
        // written in place, independent of its neighbours.
        let at = 101 * sdm_lease::ALIGNMENT;
        h1.init_lease_at(&sd, "vol-at", &dleases, at).unwrap();
        h1.init_lease_at(&sd, "vol-next", &dleases, at + sdm_lease::ALIGNMENT)
            .unwrap();
        let held = h1.acquire(&sd, "vol-at", &dleases, at).unwrap();
        let next = h1
            .acquire(&sd, "vol-next", &dleases, at + sdm_lease::ALIGNMENT)
            .unwrap();
        assert_eq!(
            h1.status(&sd, "vol-at", &dleases, at).unwrap().owners,
            vec![1]
        );
        held.release().unwrap();
        next.release().unwrap();
        assert!(h1
            .status(&sd, "vol-at", &dleases, at)
            .unwrap()
            .owners
            .is_empty());

        h1.init_volume_lease(&sd, vol, &vpath).unwrap();
        assert_eq!(
            std::fs::metadata(&vpath).unwrap().len(),
            sdm_lease::ALIGNMENT
        );
        assert_eq!(
            h1.status(&sd, vol, &vpath, 0).unwrap(),
            LeaseStatus::default()
        );

        let t = Instant::now();
        let lease = h1.acquire(&sd, vol, &vpath, 0).unwrap();
        eprintln!("acquire: {:?}", t.elapsed());
        let st = h1.status(&sd, vol, &vpath, 0).unwrap();
        assert_eq!(st.owners, vec![1]);
        let v1 = st.version.expect("version after acquire");

        // Another job on this host: Busy at once (-EEXIST).
        let t = Instant::now();
        let e = h1.acquire(&sd, vol, &vpath, 0).unwrap_err();
        assert_eq!(
            (e.kind(), e.code()),
            (LeaseErrorKind::Busy, Some(-libc::EEXIST)),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(1));

        let r = host2.recv();
        assert!(r.ok, "host 2 join: {r:?}");
        eprintln!("join (host 2): {} ms", r.ms);

        // Host 2 cannot take what host 1 holds. Right after its join, its daemon first waits
        // until it has looked at the other hosts (its first renewal, <= 2 x io_timeout) ...
        let r = host2.call(&format!("acquire {sd} {vol} {vstr} 0"));
        assert!(!r.ok && r.kind == "Busy", "{r:?}");
        assert!(r.ms < 5000, "host 2 acquire took {} ms", r.ms);
        eprintln!(
            "acquire held by other host, just after join: {} ms ({})",
            r.ms, r.text
        );
        // ... after that the answer comes at once.
        let r = host2.call(&format!("acquire {sd} {vol} {vstr} 0"));
        assert!(!r.ok && r.kind == "Busy", "{r:?}");
        assert!(r.ms < 1000, "host 2 acquire took {} ms", r.ms);
        eprintln!("acquire held by other host: {} ms ({})", r.ms, r.text);

        // Leaving while a lease is held is refused (instead of sanlock killing us).
        assert_eq!(
            h1.leave(&sd, &ids).unwrap_err().kind(),
            LeaseErrorKind::Busy
        );

        lease.release().unwrap();
        let st = h1.status(&sd, vol, &vpath, 0).unwrap();
        assert_eq!(
            st,
            LeaseStatus {
                owners: vec![],
                version: Some(v1)
            }
        );

        // Now host 2 gets it; host 1 sees owner 2, a newer version, and cannot take it.
        host2.ok(&format!("acquire {sd} {vol} {vstr} 0"));
        let st = wait_until("owner 2", Duration::from_secs(10), || {
            let st = h1.status(&sd, vol, &vpath, 0).unwrap();
            (st.owners == vec![2]).then_some(st)
        });
        assert!(st.version.unwrap() > v1);
        let t = Instant::now();
        let e = h1.acquire(&sd, vol, &vpath, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::Busy, "{e}");
        eprintln!("host 1 acquire of host 2's lease: {:?} ({e})", t.elapsed());

        // Killing the registered holder frees its lease (daemon B releases it).
        let t = Instant::now();
        host2.kill();
        wait_until(
            "lease freed after holder killed",
            Duration::from_secs(10),
            || {
                h1.status(&sd, vol, &vpath, 0)
                    .unwrap()
                    .owners
                    .is_empty()
                    .then_some(())
            },
        );
        eprintln!("lease free after kill -9 of holder: {:?}", t.elapsed());
        let lease = h1.acquire(&sd, vol, &vpath, 0).unwrap();
        assert!(h1.status(&sd, vol, &vpath, 0).unwrap().version.unwrap() > st.version.unwrap());
        lease.verify().unwrap();
        lease.release().unwrap();

        // A lease released behind the holder's back (here by `sanlock client release -p`, as
        // an operator or a daemon-side revocation would): verify reports it Lost, so the
        // holder's final "data is good" write is never made without it.
        let lease = h1.acquire(&sd, vol, &vpath, 0).unwrap();
        lease.verify().unwrap();
        let out = std::process::Command::new(sdm_lease::test_support::sanlock_binary().unwrap())
            .args(["client", "release", "-r"])
            .arg(format!("{sd}:{vol}:{vstr}:0"))
            .args(["-p", &std::process::id().to_string()])
            .env("SANLOCK_RUN_DIR", a.run_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sanlock client release: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let e = lease.verify().unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::Lost, "{e}");
        eprintln!("verify after an outside release: {e}");
        let _ = lease.release();
        assert!(h1.status(&sd, vol, &vpath, 0).unwrap().owners.is_empty());

        // The domain's SDM lease was formatted where the layout says.
        h1.acquire(&sd, SDM_RESOURCE, &dleases, SDM_LEASE_OFFSET)
            .unwrap()
            .release()
            .unwrap();

        // Not initialised / wrong name.
        let other = root.join("images/img/other.lease");
        std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
        let e = h1.acquire(&sd, "other", &other, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::NotFound, "{e}");
        let e = h1.status(&sd, "wrong-name", &vpath, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::Invalid, "{e}");
        let missing = root.join("images/img/missing.lease");
        let e = h1.acquire(&sd, "missing", &missing, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::NotFound, "{e}");
        let e = h1.status(&sd, "missing", &missing, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::NotFound, "{e}");

        let t = Instant::now();
        h1.leave(&sd, &ids).unwrap();
        eprintln!("leave: {:?}", t.elapsed());
        h1.leave(&sd, &ids).unwrap(); // not joined: fine
        let e = h1.acquire(&sd, vol, &vpath, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::NotFound, "{e}");

        // Daemon gone while a lease is held: release reports the lost registration.
        h1.join(&sd, &ids).unwrap();
        let lease = h1.acquire(&sd, vol, &vpath, 0).unwrap();
        a.kill().unwrap();
        let e = lease.release().unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::Daemon, "{e}");
        let e = h1.acquire(&sd, vol, &vpath, 0).unwrap_err();
        assert_eq!(e.kind(), LeaseErrorKind::Daemon, "{e}");
    }

    fn t_nanos() -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    }
}
