//! Project automation: `cargo xtask <command>`.
//!
//! * `ci` — fmt check, clippy `-D warnings`, every test in the workspace, then the conformance
//!   counts per backend (from the same test run); the guest programs, which are workspaces of
//!   their own (built static by their backend's build script), get fmt, clippy and their unit
//!   tests too;
//! * `guests` — just that: fmt check, clippy `-D warnings` and unit tests of each guest program;
//! * `conformance [--backend NAME]` — the conformance suite per backend, with pass/fail/ignored
//!   counts and the reason for any backend that cannot run here;
//! * `bench [--backend NAME]` — the benchmarks, each printed beside its floor;
//! * `bench --density [--backend NAME] [--max N] [--batch N] [--reserve-mib N] [--time-limit SECS]`
//!   — idle cells held per backend until a cap, a failed spawn, a memory reserve or a time limit:
//!   memory per cell and time per spawn at 1k, 10k and the maximum (`supervisor/benches/density.rs`);
//! * `fuzz-replay` — the committed fuzz corpora (`fuzz/corpus/`) through their targets' checks,
//!   on stable, without the fuzzer (`cargo test --workspace` runs the same test).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const BACKENDS: &[&str] = &["subinterp", "process", "microvm", "stdio"];

/// The package and test target that run the conformance suite against each backend.
fn suite_target(backend: &str) -> (&'static str, &str) {
    match backend {
        "stdio" => ("cell-stdio-backend", "conformance"),
        other => ("cell-conformance-builtin", other),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let ok = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("guests") => guests(),
        Some("conformance") => conformance(backend.as_deref()),
        Some("bench") if args.iter().any(|a| a == "--density") => density(&args[1..]),
        Some("bench") => bench(backend.as_deref()),
        Some("fuzz-replay") => step(
            "fuzz corpora replayed (cargo test -p cell-fuzz-replay)",
            cargo().args(["test", "-p", "cell-fuzz-replay"]),
        ),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | guests | conformance [--backend NAME] | bench [--backend NAME] | bench --density [--backend NAME] [--max N] | fuzz-replay>"
            );
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn step(name: &str, cmd: &mut Command) -> bool {
    println!("\n==> {name}");
    match cmd.status() {
        Ok(status) if status.success() => true,
        Ok(status) => {
            eprintln!("xtask: {name} failed ({status})");
            false
        }
        Err(e) => {
            eprintln!("xtask: cannot run {name}: {e}");
            false
        }
    }
}

/// Per-backend conformance counts.
#[derive(Default, Debug)]
struct Counts {
    passed: u32,
    failed: u32,
    ignored: u32,
    /// Why the backend cannot run here, when its suite said so.
    skipped: Option<String>,
}

/// The number before `word` in a libtest result line (`test result: ok. 3 passed; 0 failed; ...`).
fn count(rest: &str, word: &str) -> u32 {
    rest.split(';')
        .find_map(|part| {
            part.trim().strip_suffix(word).map(|n| {
                n.trim()
                    .trim_start_matches("ok.")
                    .trim_start_matches("FAILED.")
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

/// Runs a cargo test command, echoing its output, and collects the result of each conformance
/// suite binary: the suite names its backend (`conformance suite: backend `NAME``) before it
/// runs, and says `SKIPPED: ...` when the backend cannot run here.
fn run_tests(mut cmd: Command) -> (bool, Vec<(String, Counts)>) {
    // The suite names its backend on stderr and libtest prints results on stdout: read both, in
    // order, from one pipe.
    let spawned = std::io::pipe().and_then(|(reader, writer)| {
        cmd.stdout(writer.try_clone()?).stderr(writer);
        let child = cmd.spawn();
        drop(cmd);
        Ok((reader, child?))
    });
    let (reader, mut child) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("xtask: cannot run cargo test: {e}");
            return (false, Vec::new());
        }
    };
    let mut current: Option<(String, Counts)> = None;
    let mut results = Vec::new();
    for line in BufReader::new(reader).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.trim().strip_prefix("conformance suite: backend `") {
            let name = rest.trim_end_matches('`').to_string();
            current = Some((name, Counts::default()));
        } else if line.trim().starts_with("Running ") {
            // A test binary that is no conformance suite.
            current = None;
        }
        if let (Some((_, counts)), Some(rest)) = (&mut current, line.strip_prefix("SKIPPED: ")) {
            counts.skipped = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("test result: ")
            && let Some((backend, mut counts)) = current.take()
        {
            counts.passed = count(rest, "passed");
            counts.failed = count(rest, "failed");
            counts.ignored = count(rest, "ignored");
            results.push((backend, counts));
        }
    }
    let ok = child.wait().map(|s| s.success()).unwrap_or(false);
    (ok, results)
}

fn report(selected: &[&str], results: &[(String, Counts)]) -> bool {
    println!("\n==> conformance per backend");
    let mut ok = true;
    for backend in selected {
        match results.iter().find(|(b, _)| b == backend) {
            Some((_, c)) => {
                let verdict = match (c.failed, c.passed) {
                    (0, 0) if c.ignored > 0 => "SKIPPED",
                    (0, _) => "ok",
                    _ => "FAILED",
                };
                println!(
                    "  {backend:<10} {verdict}: {} passed, {} failed, {} ignored",
                    c.passed, c.failed, c.ignored
                );
                if let Some(reason) = &c.skipped {
                    println!("  {:<10} {reason}", "");
                }
                ok &= c.failed == 0;
            }
            None => {
                println!("  {backend:<10} FAILED: the suite did not run (build error?)");
                ok = false;
            }
        }
    }
    ok
}

fn conformance(only: Option<&str>) -> bool {
    let selected: Vec<&str> = match only {
        Some(b) if BACKENDS.contains(&b) => vec![b],
        Some(b) => {
            eprintln!(
                "xtask: unknown backend `{b}` (known: {})",
                BACKENDS.join(", ")
            );
            return false;
        }
        None => BACKENDS.to_vec(),
    };
    let mut cmd = cargo();
    cmd.args(["test", "--no-fail-fast"]);
    for b in &selected {
        let (package, test) = suite_target(b);
        cmd.args(["-p", package, "--test", test]);
    }
    let (ran, results) = run_tests(cmd);
    report(&selected, &results) && ran
}

fn ci() -> bool {
    let fmt = step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    );
    let clippy = step(
        "cargo clippy -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    let guests = guests();
    println!("\n==> cargo test --workspace");
    let mut test = cargo();
    test.args(["test", "--workspace", "--no-fail-fast"]);
    let (tests, results) = run_tests(test);
    let conformance = report(BACKENDS, &results);
    println!(
        "\n==> summary: fmt {} · clippy {} · guests {} · tests {} · conformance {}",
        verdict(fmt),
        verdict(clippy),
        verdict(guests),
        verdict(tests),
        verdict(conformance)
    );
    fmt && clippy && guests && tests && conformance
}

/// Guest programs kept out of the workspace (own lock file, own static build): each is
/// checked here with its own manifest, into one target directory of its own.
const GUESTS: &[&str] = &["backend-process/guest"];

fn guests() -> bool {
    let target = root().join("target").join("guests");
    let mut ok = true;
    for guest in GUESTS {
        let manifest = root().join(guest).join("Cargo.toml");
        let run = |name: &str, args: &[&str]| {
            let mut cmd = cargo();
            cmd.args([args[0], "--manifest-path"]).arg(&manifest);
            if args[0] != "fmt" {
                cmd.arg("--locked").arg("--target-dir").arg(&target);
            }
            cmd.args(&args[1..]);
            step(&format!("{guest}: {name}"), &mut cmd)
        };
        ok &= run("cargo fmt --check", &["fmt", "--", "--check"]);
        ok &= run(
            "cargo clippy -D warnings",
            &["clippy", "--all-targets", "--", "-D", "warnings"],
        );
        ok &= run("cargo test", &["test"]);
    }
    ok
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAILED" }
}

fn bench(only: Option<&str>) -> bool {
    ensure_bwrap();
    let benches: Vec<&str> = BACKENDS
        .iter()
        .copied()
        .filter(|b| only.is_none_or(|o| o == *b))
        .filter(|b| root().join(format!("supervisor/benches/{b}.rs")).exists())
        .collect();
    let mut ok = true;
    for b in benches {
        ok &= step(
            &format!("bench {b}"),
            cargo().args(["bench", "-p", "cell-supervisor", "--bench", b]),
        );
    }
    ok
}

/// The density benchmark, given the options after `bench` (`--density` dropped, the rest passed
/// on: `--backend`, `--max`, `--batch`, `--reserve-mib`, `--time-limit`).
fn density(options: &[String]) -> bool {
    step(
        "bench density",
        cargo()
            .args(["bench", "-p", "cell-supervisor", "--bench", "density", "--"])
            .args(options.iter().filter(|a| *a != "--density")),
    )
}

/// The process benchmark compares against `bwrap --unshare-all`; install it from Debian's
/// packages when missing and we are root.
fn ensure_bwrap() {
    if Command::new("bwrap").arg("--version").output().is_ok() {
        return;
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !root_user {
        eprintln!(
            "xtask: bwrap is absent and we are not root: the process bench will skip its bwrap floor"
        );
        return;
    }
    println!("==> installing bubblewrap for the process bench floor");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "bubblewrap"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}
