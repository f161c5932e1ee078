//! The `cell` binary against awkward input: negative numbers and `--` as call arguments,
//! guest text that tries to forge host output, colour only on a terminal, non-finite floats.

use std::io::Read;
use std::process::{Command, Output, Stdio};

const SCRIPT: &str = r#"
fn neg(x) { -x }
fn pair(a, b) { [a, b] }
log("warn", "one\n2026-01-01T00:00:00Z ERROR forged\r\x1b[31mred", #{k: "a\nb"});
metric("up", 1.0 / 0.0);
metric("down", -1.0 / 0.0);
metric("nan", 0.0 / 0.0);
post(1.0 / 0.0);
post(-1.0 / 0.0);
post(0.0 / 0.0);
"#;

fn script() -> tempfile::TempPath {
    let file = tempfile::Builder::new().suffix(".rhai").tempfile().unwrap();
    std::fs::write(file.path(), SCRIPT).unwrap();
    file.into_temp_path()
}

fn cell(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cell"));
    cmd.args(args).env_remove("NO_COLOR").env_remove("CELL_LOG");
    cmd
}

fn output(args: &[&str]) -> Output {
    cell(args).output().expect("run cell")
}

fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn result(out: &Output) -> serde_json::Value {
    let events = events(out);
    let last = events.last().expect("a result line");
    assert_eq!(last["event"], "result", "{events:?}");
    last["value"].clone()
}

#[test]
fn negative_numbers_are_arguments_and_double_dash_ends_the_flags() {
    let s = script();
    let s = s.to_str().unwrap();
    let out = output(&["call", s, "neg", "-5"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(result(&out), 5);
    let out = output(&["call", s, "pair", "-1.5", "-2e3"]);
    assert_eq!(result(&out), serde_json::json!([-1.5, -2000.0]));
    let out = output(&["call", s, "neg", "--", "-7"]);
    assert_eq!(result(&out), 7);
    // After `--` a flag's name is an argument (and not JSON: a usage error), not a flag.
    let out = output(&["call", s, "neg", "--", "--backend"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`--backend` is not JSON"),
        "{out:?}"
    );
    // A flag that is not a negative number is still a flag.
    let out = output(&["call", s, "neg", "-x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A huge argument that is not JSON is quoted shortened, not echoed whole.
    let huge = "[".repeat(100_000);
    let out = output(&["call", s, "neg", &huge]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.len() < 1_000, "{} bytes of stderr", stderr.len());
    assert!(stderr.contains("(99920 more characters)"), "{stderr}");
}

#[test]
fn guest_text_cannot_forge_a_line_of_stderr() {
    let s = script();
    let out = output(&["run", s.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one log event, one line: {stderr:?}");
    assert!(lines[0].contains("WARN"), "{stderr:?}");
    assert!(
        lines[0].contains(r"one\n2026-01-01T00:00:00Z ERROR forged\r\u{1b}[31mred"),
        "{stderr:?}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}

#[test]
fn no_colour_when_stderr_is_not_a_terminal() {
    let s = script();
    let out = output(&["run", s.to_str().unwrap()]);
    assert!(!out.stderr.is_empty());
    assert!(!out.stderr.contains(&0x1b), "{out:?}");
}

/// The stderr of `cell run SCRIPT` when it is a terminal (a pseudo-terminal here).
fn stderr_on_a_terminal(no_color: Option<&str>) -> String {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let s = script();
    let mut cmd = cell(&["run", s.to_str().unwrap()]);
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .expect("run cell");
    drop(cmd); // our copy of the terminal's slave side: EOF once the child's is gone
    let mut master = std::fs::File::from(pty.master);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // Reading the master side ends with EIO once no process holds the slave side open.
    while let Ok(n @ 1..) = master.read(&mut buf) {
        text.extend_from_slice(&buf[..n]);
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn colour_on_a_terminal_unless_no_color_is_set() {
    let coloured = stderr_on_a_terminal(None);
    assert!(
        coloured.contains("WARN") && coloured.contains("\x1b["),
        "{coloured:?}"
    );
    let plain = stderr_on_a_terminal(Some("1"));
    assert!(
        plain.contains("WARN") && !plain.contains('\x1b'),
        "{plain:?}"
    );
    // An empty NO_COLOR does not count (no-color.org).
    assert!(stderr_on_a_terminal(Some("")).contains("\x1b["));
}

#[test]
fn non_finite_floats_print_alike_in_posts_and_metrics() {
    let s = script();
    let out = output(&["run", s.to_str().unwrap()]);
    let events = events(&out);
    let metrics: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "metric")
        .map(|e| e["value"].clone())
        .collect();
    let posts: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "post")
        .map(|e| e["value"].clone())
        .collect();
    assert_eq!(metrics, ["inf", "-inf", "NaN"], "{events:?}");
    assert_eq!(posts, metrics);
}

/// A process cell needs descriptors in the supervisor (its channel, its pidfd, cgroup files
/// while it is made). Run out of them and the spawn fails with a reason a user can act on,
/// not as an invalid argument or a cell that "crashed".
#[test]
fn running_out_of_descriptors_is_reported_as_such() {
    let doctor = output(&["doctor"]);
    if !String::from_utf8_lossy(&doctor.stdout).contains("backend process: available") {
        eprintln!("SKIPPED: the process backend is unavailable here");
        return;
    }
    let script = tempfile::Builder::new().suffix(".rhai").tempfile().unwrap();
    std::fs::write(script.path(), "1").unwrap();
    // Enough for the policy's 16 open files to be valid; at 16 a process cell can never
    // spawn (the backend keeps the descriptors it hands a child at 16 and up), above it
    // whether it does depends on the host.
    for limit in [16, 18, 20] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {limit} && exec \"$0\" run --backend process \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_cell"))
            .arg(script.path())
            .env_remove("CELL_LOG")
            .output()
            .expect("run sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(0) && limit > 16 {
            continue; // this host's cell needed fewer descriptors than that
        }
        assert_eq!(out.status.code(), Some(4), "limit {limit}: {out:?}");
        assert!(
            stderr.contains("Too many open files"),
            "limit {limit}: {stderr}"
        );
    }
}
