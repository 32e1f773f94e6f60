//! sanlock: one process holds many leases in one lockspace at once. The agent has a single
//! registration per lockspace (`registry.rs`), and sanlock keeps a registration's leases in a
//! table that older releases fixed at `SANLK_MAX_RESOURCES` (8). An `Image.move` holds every
//! destination volume's lease of a chain for its whole run, and concurrent jobs add theirs, so
//! more than eight must fit.
#![cfg(feature = "test-support")]

mod common;

use common::{daemon, opts, tempdir, unique, with_log};
use sdm_lease::test_support::TEST_IO_TIMEOUT_S;
use sdm_lease::{LeaseBackend, SanlockLeases};

const LEASES: usize = 20;

#[test]
fn sanlock_holds_more_than_eight_leases_in_one_lockspace() {
    let dir = tempdir();
    let Some(d) = daemon("lease-many") else {
        return;
    };
    with_log(&d, || {
        let h = SanlockLeases::new(1, opts(&d)).unwrap();
        let sd = unique("sd-many");
        let ids = dir.path().join("ids");
        h.format_domain(&sd, &ids, &dir.path().join("leases"), TEST_IO_TIMEOUT_S)
            .unwrap();
        h.join(&sd, &ids).unwrap();
        let mut held = Vec::new();
        for i in 0..LEASES {
            let path = dir.path().join(format!("v{i}.lease"));
            let vol = format!("vol-{i}");
            h.init_volume_lease(&sd, &vol, &path).unwrap();
            match h.acquire(&sd, &vol, &path, 0) {
                Ok(l) => held.push(l),
                Err(e) => panic!("lease {} of {LEASES} in one lockspace: {e}", i + 1),
            }
        }
        for l in &held {
            l.verify().unwrap();
        }
        for l in held {
            l.release().unwrap();
        }
    });
}
