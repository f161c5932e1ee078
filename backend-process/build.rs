//! Builds the guest program (backend-process/guest) as a static binary and
//! hands its path to the library, which embeds it with `include_bytes!`.
//!
//! Built from a published package (no `guest/` folder), it uses the binaries shipped prebuilt
//! in `prebuilt/` instead.
//!
//! The guest has its own lock file and is built by a nested cargo with its own target
//! directory under OUT_DIR (no lock shared with the outer build), with every inherited
//! setting that would change or break it scrubbed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest's binaries: the environment variable that hands each to the library, its file name.
const BINS: [(&str, &str); 2] = [
    ("CELL_GUEST_BIN", "cell-guest"),
    ("CELL_PROBE_BIN", "cell-probe"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = manifest_dir.join("guest");
    // A published package carries no guest sources (cargo leaves nested packages out of a
    // package): it ships the binaries that `cargo xtask package` built, under `prebuilt/`.
    if !guest.join("Cargo.toml").is_file() {
        for (env_name, bin) in BINS {
            let path = manifest_dir.join("prebuilt").join(bin);
            println!("cargo:rerun-if-changed={}", path.display());
            assert!(
                path.is_file(),
                "neither the guest sources (guest/) nor the prebuilt guest {} are here",
                path.display()
            );
            println!("cargo:rustc-env={env_name}={}", path.display());
        }
        return;
    }
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
    for (env_name, bin) in BINS {
        let path = bin_dir.join(bin);
        assert!(path.is_file(), "guest binary {} missing", path.display());
        println!("cargo:rustc-env={env_name}={}", path.display());
    }
}
