//! sanlock: an acquire on slow storage (a lease file whose every I/O takes 250 ms longer:
//! nbdkit's delay filter behind nbdfuse) must not hold up the verify and release of leases
//! in other lockspaces, and a release in its own lockspace waits for it instead of failing.
#![cfg(feature = "test-support")]

mod common;

use std::time::{Duration, Instant};

use common::{daemon, opts, tempdir, unique, with_log, SlowFile};
use sdm_lease::test_support::TEST_IO_TIMEOUT_S;
use sdm_lease::{LeaseBackend, SanlockLeases, SDM_LEASE_OFFSET, SDM_RESOURCE};

const DELAY_MS: u64 = 250;

#[test]
fn sanlock_slow_acquire_does_not_stall_other_lockspaces() {
    let dir = tempdir();
    let slow = match SlowFile::start(dir.path(), 3, DELAY_MS) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED sanlock_slow_acquire_does_not_stall_other_lockspaces: {why}");
            return;
        }
    };
    let Some(d) = daemon("lease-slow") else {
        return;
    };
    with_log(&d, || scenario(&d, dir.path(), &slow));
}

fn scenario(d: &sdm_lease::test_support::SanlockDaemon, root: &std::path::Path, slow: &SlowFile) {
    let h = SanlockLeases::new(1, opts(d)).unwrap();
    // Lockspace A keeps its domain lease (SDM, at 1 MiB) on the slow file; B is all fast.
    let (sd_a, sd_b) = (unique("sd-slow"), unique("sd-fast"));
    let (ids_a, ids_b) = (root.join("ids-a"), root.join("ids-b"));
    h.format_domain(&sd_a, &ids_a, slow.path(), TEST_IO_TIMEOUT_S)
        .unwrap();
    h.format_domain(&sd_b, &ids_b, &root.join("leases-b"), TEST_IO_TIMEOUT_S)
        .unwrap();
    std::thread::scope(|s| {
        let a = s.spawn(|| h.join(&sd_a, &ids_a));
        h.join(&sd_b, &ids_b).unwrap();
        a.join().unwrap().unwrap();
    });
    let (fast_a, fast_b, fast_b2) = (
        root.join("a.lease"),
        root.join("b.lease"),
        root.join("b2.lease"),
    );
    h.init_volume_lease(&sd_a, "vol-a", &fast_a).unwrap();
    h.init_volume_lease(&sd_b, "vol-b", &fast_b).unwrap();
    h.init_volume_lease(&sd_b, "vol-b2", &fast_b2).unwrap();
    let in_a = h.acquire(&sd_a, "vol-a", &fast_a, 0).unwrap();
    let in_b = h.acquire(&sd_b, "vol-b", &fast_b, 0).unwrap();

    std::thread::scope(|s| {
        let t0 = Instant::now();
        let (h, sd_a) = (&h, &sd_a);
        let slow_acquire = s.spawn(move || {
            let r = h.acquire(sd_a, SDM_RESOURCE, slow.path(), SDM_LEASE_OFFSET);
            (r, t0.elapsed())
        });
        // Let it reach the daemon (its first read alone takes DELAY_MS).
        std::thread::sleep(Duration::from_millis(DELAY_MS / 2));

        let t = Instant::now();
        in_b.verify().unwrap();
        let verify_b = t.elapsed();
        let t = Instant::now();
        in_b.release().unwrap();
        let release_b = t.elapsed();
        let t = Instant::now();
        let other_b = h.acquire(&sd_b, "vol-b2", &fast_b2, 0).unwrap();
        let acquire_b = t.elapsed();
        let t = Instant::now();
        in_a.verify().unwrap();
        let verify_a = t.elapsed();
        let during = t0.elapsed();
        // Same lockspace: the daemon runs one command per registration at a time, so this
        // release waits for the slow acquire, and must then succeed rather than fail Busy.
        let t = Instant::now();
        in_a.release().unwrap();
        let release_a = t.elapsed();

        let (r, slow_took) = slow_acquire.join().unwrap();
        let slow_lease = r.expect("the slow acquire succeeds");
        eprintln!(
            "slow acquire {slow_took:?}; meanwhile: verify B {verify_b:?}, release B \
             {release_b:?}, acquire B {acquire_b:?}, verify A {verify_a:?}; release A waited \
             {release_a:?}"
        );
        assert!(
            slow_took >= Duration::from_millis(4 * DELAY_MS),
            "the slow acquire took only {slow_took:?}: the delay filter is not in the path"
        );
        assert!(
            during < slow_took / 2,
            "work on lockspace B and the verify of A took {during:?} of the slow acquire's {slow_took:?}"
        );
        for (what, took) in [
            ("verify B", verify_b),
            ("release B", release_b),
            ("acquire B", acquire_b),
            ("verify A", verify_a),
        ] {
            assert!(
                took < Duration::from_millis(DELAY_MS),
                "{what} took {took:?} while an acquire was slow"
            );
        }
        slow_lease.verify().unwrap();
        slow_lease.release().unwrap();
        other_b.release().unwrap();
    });
}
