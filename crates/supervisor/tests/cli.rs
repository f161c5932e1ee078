//! The `cell` binary end to end: JSON lines on stdout and one exit code per failure class.

use std::process::Command;

fn cell(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run cell");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn run_without_a_script_runs_the_embedded_default() {
    let (code, out) = cell(&["run"]);
    assert_eq!(code, 0, "{out}");
    let events = lines(&out);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "post" && e["value"] == 42),
        "{out}"
    );
    assert_eq!(events.last().unwrap()["event"], "result");
}

#[test]
fn call_loads_a_script_then_calls_with_json_arguments() {
    let (code, out) = cell(&["call", "examples/fib.rhai", "fib", "50"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out).last().unwrap()["value"], 12586269025i64);
    let (code, out) = cell(&["call", "examples/fib.rhai", "stats", "[1, 2, 3]"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out).last().unwrap()["value"]["mean"], 2.0);
}

#[test]
fn exit_codes_name_the_failure_class() {
    let dir = std::env::temp_dir().join(format!("cell-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_script = dir.join("bad.rhai");
    std::fs::write(&bad_script, "let x = ;").unwrap();
    let bad_policy = dir.join("bad.toml");
    std::fs::write(&bad_policy, "[limits]\nmax_operatons = 1\n").unwrap();
    let bad = bad_script.to_str().unwrap();

    let (code, out) = cell(&["run", bad]);
    assert_eq!((code, lines(&out)[0]["code"].as_str()), (1, Some("syntax")));
    assert_eq!(
        cell(&["run", "--policy", bad_policy.to_str().unwrap()]).0,
        3
    );
    assert_eq!(cell(&["run", "--backend", "nonesuch"]).0, 4);
    let (code, out) = cell(&[
        "run",
        "--policy",
        "examples/strict.toml",
        "examples/spin.rhai",
    ]);
    assert_eq!(code, 5, "{out}");
    assert_eq!(lines(&out)[0]["value"], "about to spin");
    assert_eq!(cell(&["run", "/nonexistent/script.rhai"]).0, 7);
    assert_eq!(cell(&["call", "examples/fib.rhai", "fib", "not json"]).0, 2);
    assert_eq!(cell(&["frobnicate"]).0, 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn doctor_lists_backends() {
    let (code, out) = cell(&["doctor"]);
    assert_eq!(code, 0);
    assert!(out.contains("backend subinterp: available"), "{out}");
    // Every backend lists its confinement layers, each supported or missing here.
    for layer in [
        "process layer seccomp",
        "process layer landlock",
        "microvm layer kvm",
        "subinterp layer interpreter",
    ] {
        assert!(out.contains(layer), "{layer} missing from:\n{out}");
    }
}
