//! `cargo xtask package`: every publishable crate packaged and verified together.
//!
//! Two backends embed a guest program built from a nested package (`guest/`), which cargo leaves
//! out of a `.crate`; their build scripts fall back to the binaries under `prebuilt/` when the
//! sources are absent. This command builds the guests as the build scripts do, copies them
//! there, and runs one `cargo package` over all the crates (each verified by building it from its
//! `.crate`, with the other crates of this workspace taken from the packages just made).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use crate::{cargo, root, step};

/// The crates a user can depend on, in dependency order (`cell-rhai` is the patched engine).
pub const PUBLISHED: &[&str] = &[
    "cell-rhai",
    "cell-abi",
    "cell-runtime",
    "cell-host",
    "cell-broker",
    "cell-backend-subinterp",
    "cell-backend-process",
    "cell-backend-microvm",
    "cell-supervisor",
    "cell-conformance",
    "cell-service",
    "cell-cli",
];

/// The guest binaries each backend ships prebuilt: the environment variable its build script
/// sets to a binary's path, and the backend's folder.
const GUESTS: &[(&str, &str)] = &[
    ("CELL_GUEST_BIN", "backend-process"),
    ("CELL_PROBE_BIN", "backend-process"),
    ("CELL_MICROVM_GUEST_ELF", "backend-microvm"),
];

pub fn package(args: &[String]) -> bool {
    if !stage_guests() {
        return false;
    }
    forget_unpacked();
    forget_built();
    let mut cmd = cargo();
    cmd.args(["package", "--allow-dirty"]);
    for name in PUBLISHED {
        cmd.args(["-p", name]);
    }
    cmd.args(args);
    step("cargo package (every published crate, verified)", &mut cmd)
}

/// Removes cargo's unpacked copies of earlier packages of these crates. Verification takes the
/// crates it depends on from a local registry of the packages just made, but cargo unpacks a
/// registry crate once per registry path and version and reuses that copy, so a second run
/// from the same folder would build against the first run's sources.
fn forget_unpacked() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return;
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return;
    };
    for registry in registries.flatten() {
        remove_ours(&registry.path(), |version| {
            version.starts_with(|c: char| c.is_ascii_digit())
        });
    }
}

/// Removes the entries of `dir` named `<published crate>-<tail>` whose tail `tail` accepts.
fn remove_ours(dir: &std::path::Path, tail: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = PUBLISHED.iter().any(|p| {
            name.strip_prefix(p)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(&tail)
        });
        if ours && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            eprintln!("xtask: removing {}: {e}", entry.path().display());
        }
    }
}

/// Makes cargo rebuild these crates. Verification builds them from that local registry into
/// the workspace's `target/debug`, and cargo trusts a registry crate of one version never to
/// change: a second run would link the first run's build of a crate whose sources moved on
/// (`cargo xtask ci` failed after a new `abi` function that way). Without their fingerprints
/// they are rebuilt; the next workspace build recompiles its own copies too.
fn forget_built() {
    let fingerprints = root().join("target").join("debug").join(".fingerprint");
    remove_ours(&fingerprints, |hash| {
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit())
    });
}

/// Builds the backends (so their build scripts build the guests) and copies each guest binary
/// the build scripts report into its backend's `prebuilt/`.
fn stage_guests() -> bool {
    println!("\n==> building the guest programs");
    let mut cmd = cargo();
    // The nested guest builds are release builds whatever the outer profile, so the outer
    // build is a debug one: in `ci` it is already built.
    cmd.args([
        "build",
        "-p",
        "cell-backend-process",
        "-p",
        "cell-backend-microvm",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("xtask: cannot run cargo build: {e}");
            return false;
        }
    };
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "build-script-executed" {
            continue;
        }
        for pair in msg["env"].as_array().into_iter().flatten() {
            if let (Some(key), Some(path)) = (pair[0].as_str(), pair[1].as_str())
                && GUESTS.iter().any(|(k, _)| *k == key)
            {
                found.push((key.to_string(), PathBuf::from(path)));
            }
        }
    }
    match child.wait() {
        Ok(status) if status.success() => {}
        other => {
            eprintln!("xtask: building the backends failed: {other:?}");
            return false;
        }
    }
    for (key, folder) in GUESTS {
        let Some((_, from)) = found.iter().find(|(k, _)| k == key) else {
            eprintln!("xtask: no build script reported {key}");
            return false;
        };
        let dir = root().join(folder).join("prebuilt");
        let to = dir.join(from.file_name().expect("a binary's file name"));
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(from, &to)) {
            eprintln!("xtask: copying {} to {}: {e}", from.display(), to.display());
            return false;
        }
        println!("staged {}", to.display());
    }
    true
}
