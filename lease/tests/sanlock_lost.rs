//! sanlock: when the daemon dies, the process learns at once that its registration (and with
//! it every lease in the lockspace) is gone, without any call of its own.
#![cfg(feature = "test-support")]

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{daemon, opts, tempdir, unique};
use sdm_lease::test_support::{SanlockDaemon, TEST_IO_TIMEOUT_S};
use sdm_lease::{LeaseBackend, LeaseErrorKind, SanlockLeases};

#[test]
fn sanlock_daemon_death_fires_registration_lost() {
    let Some(mut d) = daemon("lease-lost") else {
        return;
    };
    let dir = tempdir();
    // Not `with_log`: the scenario kills the daemon, so it needs it mutably.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(&mut d, dir.path())
    }));
    if let Err(p) = r {
        eprintln!("--- daemon log ---\n{}", d.log());
        std::panic::resume_unwind(p);
    }
}

fn scenario(d: &mut SanlockDaemon, root: &std::path::Path) {
    let h = SanlockLeases::new(1, opts(d)).unwrap();
    let sd = unique("sd-lost");
    let ids = root.join("ids");
    h.format_domain(&sd, &ids, &root.join("leases"), TEST_IO_TIMEOUT_S)
        .unwrap();
    h.join(&sd, &ids).unwrap();
    let vpath = root.join("vol.lease");
    h.init_volume_lease(&sd, "vol", &vpath).unwrap();
    let lease = h.acquire(&sd, "vol", &vpath, 0).unwrap();

    let (tx, rx) = mpsc::channel();
    let _sub = h.on_registration_lost(move |ev| {
        let _ = tx.send((ev.clone(), Instant::now()));
    });
    assert_eq!(h.registrations_lost(), 0);
    lease.verify_fast().unwrap();
    lease.verify().unwrap();

    let killed = Instant::now();
    d.kill().unwrap();
    let (ev, at) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("no registration-lost event within 5 s of the daemon's death");
    let after = at.duration_since(killed);
    eprintln!("registration lost {after:?} after the daemon was killed: {ev:?}");
    assert!(after < Duration::from_secs(1), "{after:?}");
    assert_eq!((ev.lockspace.as_str(), ev.losses), (sd.as_str(), 1));
    assert_eq!(h.registrations_lost(), 1);

    let e = lease.verify_fast().unwrap_err();
    assert_eq!(e.kind(), LeaseErrorKind::Lost, "{e}");
    assert_eq!(lease.verify().unwrap_err().kind(), LeaseErrorKind::Lost);
    let e = lease.release().unwrap_err();
    assert_eq!(e.kind(), LeaseErrorKind::Daemon, "{e}");
    // Reported once.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}
