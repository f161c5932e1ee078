//! The `cell` binary end to end: JSON lines on stdout and one exit code per failure class.

use std::process::Command;

fn cell(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
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

/// Directories under `dir` (at most `depth` levels down) whose name starts with `prefix`.
fn find_dirs(dir: &std::path::Path, prefix: &str, depth: u32, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            out.push(path);
        } else if depth > 0 {
            find_dirs(&path, prefix, depth - 1, out);
        }
    }
}

#[test]
fn a_process_run_leaves_no_cell_or_cgroup_behind() {
    // `cell run` confines its one cell directly; the reaper thread removes a killed cell's
    // cgroups after the process is gone, and a normal exit must wait for it (it did not: the
    // cell's cgroups were left behind). The fork server and its spares, where a program uses
    // them, are taken along the same way (a cgroup cannot be removed while a process is in it).
    let child = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["run", "--backend", "process"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run cell");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        lines(&stdout).iter().any(|e| e["event"] == "post"),
        "{stdout}"
    );
    let mut left = Vec::new();
    find_dirs(
        std::path::Path::new("/sys/fs/cgroup"),
        &format!("cell-{pid}-"),
        6,
        &mut left,
    );
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// Waits until every process in the cgroup `dir` has ended (a pidfd per process: no polling).
fn wait_until_empty(dir: &std::path::Path) {
    use nix::libc;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
    {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        if fd < 0 {
            continue; // already gone
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a pidfd becomes readable when its process ends.
        unsafe {
            libc::poll(&mut p, 1, 10_000);
            libc::close(fd);
        }
    }
}

#[test]
fn a_killed_process_run_leaves_cgroups_only_until_the_next_run() {
    // A `cell run` stopped by SIGKILL (or Ctrl-C) cannot remove its cell's cgroups. They went
    // only when a fork server started, which `cell run` no longer starts, so every killed run
    // left three directories for good; the next process cell of any supervisor removes them.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("spin.rhai");
    std::fs::write(&script, "post(1); loop {}").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["run", "--backend", "process"])
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run cell");
    let pid = child.id();
    // The post is on stdout: the cell runs.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("\"post\""), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut left = Vec::new();
    find_dirs(
        std::path::Path::new("/sys/fs/cgroup"),
        &format!("cell-{pid}-"),
        6,
        &mut left,
    );
    if left.is_empty() {
        eprintln!("SKIPPED: no writable cgroup hierarchy, nothing to leave behind");
        return;
    }
    // The cell dies with its parent; once it has, its cgroups are empty.
    left.iter().for_each(|d| wait_until_empty(d));
    let (code, out) = cell(&["run", "--backend", "process", "examples/fib.rhai"]);
    assert_eq!(code, 0, "{out}");
    let still: Vec<_> = left.iter().filter(|d| d.exists()).collect();
    assert!(
        still.is_empty(),
        "cgroups of the killed run left: {still:?}"
    );
}

#[test]
fn huge_or_endless_files_are_refused_before_they_are_read_whole() {
    let dir = std::env::temp_dir().join(format!("cell-cli-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 17 MiB of NUL bytes (sparse: nothing written), over the 16 MiB any file is read to.
    let huge = dir.join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let huge = huge.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cell"))
            .args(args)
            .env("CELL_API_KEY", "a-key-for-the-test")
            .output()
            .expect("run cell");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (out.status.code(), stderr)
    };
    // `/dev/zero` never ends: it was read until memory ran out.
    for script in [huge, "/dev/zero"] {
        let (code, stderr) = run(&["run", script]);
        assert_eq!(code, Some(7), "{script}: {stderr}");
        assert!(stderr.contains("larger than 16777216 bytes"), "{stderr}");
    }
    let (code, stderr) = run(&["run", "--policy", huge]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("larger than"), "{stderr}");
    let (code, stderr) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--node",
        "t",
        "--policy",
        huge,
    ]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("larger than"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_reader_that_goes_away_ends_the_run_without_a_panic() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("cell-cli-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Far more output than a pipe holds: writes go on after the reader has gone.
    let script = dir.join("many.rhai");
    std::fs::write(&script, "for i in 0..100000 { post(i) }").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["run", script.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cell");
    // `cell run … | head -1`: one line, then the pipe is closed.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), r#"{"event":"post","value":0}"#);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}
