//! One cargo feature per built-in backend: a supervisor built with `subinterp` only compiles
//! no KVM binding and no process-confinement crate (`cargo tree` of its normal dependencies).

use std::process::Command;

/// Crates only the process and microvm backends need.
const CONFINEMENT: [&str; 6] = [
    "cell-backend-process",
    "cell-backend-microvm",
    "kvm-ioctls",
    "kvm-bindings",
    "vmm-sys-util",
    "landlock",
];

/// The package names in the supervisor's normal dependency tree under `features`.
fn tree(features: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "cell-supervisor", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn subinterp_alone_pulls_in_no_kvm_or_confinement_crate() {
    let slim = tree(&["--no-default-features", "--features", "subinterp"]);
    assert!(
        slim.iter().any(|p| p == "cell-backend-subinterp"),
        "{slim:?}"
    );
    let leaked: Vec<_> = CONFINEMENT
        .iter()
        .filter(|c| slim.iter().any(|p| p == *c))
        .collect();
    assert!(
        leaked.is_empty(),
        "subinterp-only build pulls in {leaked:?}"
    );
    // The default build has them all: the check above is looking at the right names.
    let full = tree(&[]);
    for c in CONFINEMENT {
        assert!(
            full.iter().any(|p| p == c),
            "{c} missing from the default tree"
        );
    }
}
