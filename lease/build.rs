//! Links libsanlock (package `libsanlock-dev`) when it is installed.
//!
//! Without the library the crate still builds: the local (OFD) backend does not need sanlock,
//! and `SanlockLeases::new` then fails with a `Daemon` error. Packagers set
//! `SDM_REQUIRE_SANLOCK=1` to turn a missing library into a build error instead.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sdm_no_libsanlock)");
    println!("cargo::rerun-if-env-changed=SANLOCK_LIB_DIR");
    println!("cargo::rerun-if-env-changed=SDM_REQUIRE_SANLOCK");

    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::var_os("SANLOCK_LIB_DIR") {
        dirs.push(dir.into());
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    for dir in [
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib64".to_string(),
        "/usr/lib".to_string(),
        "/usr/local/lib64".to_string(),
        "/usr/local/lib".to_string(),
    ] {
        dirs.push(dir.into());
    }

    match dirs.iter().find(|d| d.join("libsanlock.so").exists()) {
        Some(dir) => {
            println!(
                "cargo::rerun-if-changed={}",
                dir.join("libsanlock.so").display()
            );
            println!("cargo::rustc-link-search=native={}", dir.display());
            println!("cargo::rustc-link-lib=sanlock");
        }
        None => {
            // Pick the library up once it gets installed.
            for dir in dirs.iter().filter(|d| d.is_dir()) {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
            if env::var("SDM_REQUIRE_SANLOCK").is_ok_and(|v| v == "1") {
                panic!("libsanlock.so not found (install libsanlock-dev or set SANLOCK_LIB_DIR)");
            }
            println!(
                "cargo::warning=libsanlock.so not found: building sdm-lease without the sanlock backend"
            );
            println!("cargo::rustc-cfg=sdm_no_libsanlock");
        }
    }
}
