//! Builds the plugins workspace (first-party plugins and the hostile test
//! guests) for wasm32-wasip2, so the black-box tests can upload them from
//! `plugins/target/wasm32-wasip2/release/`.
//!
//! `plugins/` is a workspace of its own with its own target directory, so
//! this nested cargo does not wait on the outer build's lock. CI installs
//! the target first (`rustup target add wasm32-wasip2`).
//!
//! Paths come from the environment at run time and are watched relative to
//! this package: a target directory shared by several checkouts (CI's cache)
//! may reuse this script's binary and output from another checkout, and
//! must then still build and point at this one's plugins.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let repo = manifest.parent().expect("tests/ sits in the repository");
    let plugins = repo.join("plugins");
    for watched in ["plugins", "wit", "guest-sdk"] {
        rerun_if_changed(repo, Path::new(watched));
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .args(["--exclude", "wasmhook-plugin-common"]);
    // What the outer cargo sets for this build script must not leak into the
    // plugins' build: their own target directory and flags, no clippy driver.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("running cargo to build the plugins workspace");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed ({status}); \
             is the target installed? `rustup target add wasm32-wasip2`"
        );
    }
}

/// Watches everything under `repo/dir` except build output (`target/`), so
/// editing a plugin rebuilds it but building it does not trigger this script
/// again. (A watched directory is scanned whole, so `dir` itself is not
/// watched.) Paths are printed relative to this package (`../dir/...`), which
/// cargo resolves against the checkout being built.
fn rerun_if_changed(repo: &Path, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(repo.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let relative = Path::new("..").join(dir).join(name);
        println!("cargo:rerun-if-changed={}", relative.display());
    }
}
