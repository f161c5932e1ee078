//! Builds the freestanding guest image (`guest/`) with a nested `cargo build` and exposes its path
//! to the crate as `CELL_MICROVM_GUEST_ELF` (embedded with `include_bytes!`). Built from a
//! published package (no `guest/` folder), it uses the image shipped in `prebuilt/` instead.
//!
//! The nested build uses its own target dir under OUT_DIR (no lock contention with the outer
//! build), the installed x86_64-unknown-linux-gnu target (no extra rustup target), and a scrubbed
//! environment so flags meant for the outer build never leak into the guest.
//!
//! With `CELL_MICROVM_GUEST_CLIPPY=1` it first runs `cargo clippy -- -D warnings` on the guest
//! with exactly these flags and environment, and fails the build on any finding:
//! `CELL_MICROVM_GUEST_CLIPPY=1 cargo build -p cell-backend-microvm`.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest image's file name.
const GUEST_BIN: &str = "cell-microvm-guest";

fn rerun_dir(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rerun_dir(&p);
            } else {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = manifest_dir.join("guest");
    // A published package carries no guest sources (cargo leaves nested packages out of a
    // package): it ships the image that `cargo xtask package` built, under `prebuilt/`.
    if !guest.join("Cargo.toml").is_file() {
        let elf = manifest_dir.join("prebuilt").join(GUEST_BIN);
        println!("cargo:rerun-if-changed={}", elf.display());
        assert!(
            elf.is_file(),
            "neither the guest sources (guest/) nor the prebuilt image {} are here",
            elf.display()
        );
        println!("cargo:rustc-env=CELL_MICROVM_GUEST_ELF={}", elf.display());
        return;
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("guest-target");

    rerun_dir(&guest.join("src"));
    for f in ["Cargo.toml", "Cargo.lock", "link.ld", "build.rs"] {
        println!("cargo:rerun-if-changed={}", guest.join(f).display());
    }
    println!("cargo:rerun-if-changed=src/layout.rs");
    // The guest is the cell runtime: rebuild when its crates (or the vendored engine) change.
    for dep in ["../guest-runtime", "../abi", "../vendor/rhai"] {
        let d = manifest_dir.join(dep);
        rerun_dir(&d.join("src"));
        println!("cargo:rerun-if-changed={}", d.join("Cargo.toml").display());
    }

    let flags = [
        "-Crelocation-model=static".to_string(),
        "-Ctarget-feature=+crt-static".to_string(),
        "-Clink-arg=-nostartfiles".to_string(),
        "-Clink-arg=-nostdlib".to_string(),
        "-Clink-arg=-static".to_string(),
    ]
    .join("\x1f");

    println!("cargo:rerun-if-env-changed=CELL_MICROVM_GUEST_CLIPPY");
    if env::var_os("CELL_MICROVM_GUEST_CLIPPY").is_some_and(|v| v != "0") {
        let mut clippy = guest_cargo("clippy", &guest, &target_dir, &flags);
        clippy.args(["--", "-D", "warnings"]);
        run(clippy, "clippy on the microvm guest");
    }
    run(
        guest_cargo("build", &guest, &target_dir, &flags),
        "building the microvm guest image",
    );
    let elf = target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join(GUEST_BIN);
    if !elf.is_file() {
        panic!("guest image missing after build: {}", elf.display());
    }
    println!("cargo:rustc-env=CELL_MICROVM_GUEST_ELF={}", elf.display());
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run cargo for {what}: {e}"));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("{what} failed ({})", out.status);
    }
}

/// `cargo <subcommand>` on the guest, for its target, flags and a scrubbed environment.
fn guest_cargo(subcommand: &str, guest: &Path, target_dir: &Path, flags: &str) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg(subcommand)
        .arg("--release")
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target")
        .arg("x86_64-unknown-linux-gnu")
        .arg("--target-dir")
        .arg(target_dir);
    // Scrub everything the outer cargo set for this build script or inherited from the user,
    // keeping only what configures registry access, the toolchain and the shared jobserver.
    for (k, _) in env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let keep = k == "CARGO_HOME"
            || k == "CARGO_MAKEFLAGS"
            || k.starts_with("CARGO_NET_")
            || k.starts_with("CARGO_HTTP_")
            || k.starts_with("CARGO_REGISTRIES_")
            || k.starts_with("CARGO_REGISTRY_");
        let scrub = (k.starts_with("CARGO_") && !keep)
            || matches!(
                k,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if scrub {
            cmd.env_remove(k);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    cmd
}
