//! Builds the guest program (backend-process/guest) as a static binary and
//! hands its path to the library, which embeds it with `include_bytes!`.
//!
//! The guest has its own lock file and is built by a nested cargo with its own target
//! directory under OUT_DIR (no lock shared with the outer build), with every inherited
//! setting that would change or break it scrubbed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = manifest_dir.join("guest");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("guest-target");

    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "src/fork_protocol.rs",
        "src/confine.rs",
        "src/step.rs",
        "../guest-runtime",
        "../abi",
        "../vendor/rhai",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target")
        .arg(TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--bins");
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key == "RUSTFLAGS"
            || key == "CARGO_ENCODED_RUSTFLAGS"
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || key == "CLIPPY_ARGS"
            || key == "CARGO_TARGET_DIR"
            || key == "CARGO_MAKEFLAGS"
            || key == "MAKEFLAGS"
            || key == "MFLAGS"
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
        {
            cmd.env_remove(key);
        }
    }
    // With an explicit --target, these flags reach only the guest, not build scripts
    // or proc macros.
    // The guest stays a static PIE, so it keeps ASLR.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");

    let status = cmd
        .status()
        .expect("could not run cargo to build the process guest");
    assert!(
        status.success(),
        "building the process guest failed: {status}"
    );

    let bin_dir = target_dir.join(TARGET).join("release");
    for (env_name, bin) in [
        ("CELL_GUEST_BIN", "cell-guest"),
        ("CELL_PROBE_BIN", "cell-probe"),
    ] {
        let path = bin_dir.join(bin);
        assert!(path.is_file(), "guest binary {} missing", path.display());
        println!("cargo:rustc-env={env_name}={}", path.display());
    }
}
