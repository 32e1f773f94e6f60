//! Differential tests of copy, wipe and checksum, each body run over io_uring and the sync
//! engine, on files and on loop block devices, with cmp, qemu-img and sha256sum as oracles.
//!
//! The bodies live in rooms by operation: `copy`, `checksum`, `wipe`, `abort` (stopping each
//! operation in time) and `load` (full file systems, concurrency, bandwidth limits, progress,
//! fragmented chunks); this file runs each over both backends.

#[path = "../common/mod.rs"]
mod common;

mod abort;
mod checksum;
mod copy;
mod load;
mod wipe;

use abort::*;
use checksum::*;
use copy::*;
use load::*;
use wipe::*;

use common::*;
use sdm_io::{Control, CopyOptions};

per_backend!(
    copy_to_fresh_file,
    copy_over_existing_file,
    copy_partial_length,
    copy_between_loop_devices,
    copy_file_to_larger_device,
    copy_to_small_device_is_invalid,
    checksum_matches_sha256sum,
    checksum_of_loop_device,
    wipe_file,
    wipe_file_with_discard,
    wipe_loop_device,
    abort_copy,
    abort_wipe_file,
    abort_wipe_loop_device,
    abort_checksum,
    copy_into_full_tmpfs_is_enospc,
    concurrent_copies,
    bandwidth_limit_slows_copy,
    throttled_operations_report_progress,
    fragmented_chunks_many_writes,
    copy_checksum_wipe_on_tmpfs,
);

#[test]
fn sync_choice_is_reported() {
    let e = sync();
    assert_eq!(e.backend().as_str(), "sync");
    assert!(e.fallback_reason().is_some());
}

#[test]
fn missing_source_names_path() {
    let e = sync();
    let err = e
        .copy(
            std::path::Path::new("/nonexistent/src"),
            std::path::Path::new("/nonexistent/dst"),
            &CopyOptions::default(),
            &Control::new(),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("open /nonexistent/src failed: No such file"),
        "{err}"
    );
}
