//! Builds the plugins workspace (first-party plugins and the hostile test
//! guests) for wasm32-wasip2, so the black-box tests can upload them, and
//! tells the tests where the components are (`WASMHOOK_PLUGINS_DIR`).
//!
//! `plugins/` is a workspace of its own with its own target directory, so
//! this nested cargo does not wait on the outer build's lock. CI installs
//! the target first (`rustup target add wasm32-wasip2`).

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest.parent().expect("tests/ sits in the repository");
    let plugins = repo.join("plugins");
    for watched in ["plugins", "wit", "guest-sdk"] {
        rerun_if_changed(&repo.join(watched));
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
    let out = plugins.join("target/wasm32-wasip2/release");
    println!("cargo:rustc-env=WASMHOOK_PLUGINS_DIR={}", out.display());
}

/// Watches everything under `dir` except build output (`target/`), so editing
/// a plugin rebuilds it but building it does not trigger this script again.
/// (A watched directory is scanned whole, so `dir` itself is not watched.)
fn rerun_if_changed(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
