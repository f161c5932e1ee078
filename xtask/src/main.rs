//! Project automation: `cargo xtask <command>`.
//!
//! * `ci` — fmt check, clippy `-D warnings`, every test in the workspace, then the conformance
//!   counts per backend (from the same test run), then `package`; the guest programs, which are
//!   workspaces of their own (built static by their backend's build script), get fmt, clippy and
//!   their unit tests too;
//! * `guests` — just that: fmt check, clippy `-D warnings` and unit tests of each guest program;
//! * `conformance [--backend NAME]` — the conformance suite per backend, with pass/fail/ignored
//!   counts and the reason for any backend that cannot run here;
//! * `bench [--backend NAME]` — the benchmarks, each printed beside its floor;
//! * `bench --density [--backend NAME] [--max N] [--batch N] [--reserve-mib N] [--time-limit SECS]`
//!   — idle cells held per backend until a cap, a failed spawn, a memory reserve or a time limit:
//!   memory per cell and time per spawn at 1k, 10k and the maximum (`supervisor/benches/density.rs`);
//! * `fuzz-replay` — the committed fuzz corpora (`fuzz/corpus/`) through their targets' checks,
//!   on stable, without the fuzzer (`cargo test --workspace` runs the same test);
//! * `mutants [--area NAME] [-- ARGS]` — mutation testing (cargo-mutants, installed when
//!   missing) of the wire codec, the host side, the broker's decisions and the fs capability,
//!   each area judged by the tests of the crates that hold its rules; prints caught, missed,
//!   unviable and timed-out mutants per area. Slow: not part of `ci`.
//! * `package [-- ARGS]` — every publishable crate through `cargo package`, each verified by
//!   building it from its `.crate` (the backends' guest programs shipped prebuilt in it).
#![forbid(unsafe_code)]

mod package;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const BACKENDS: &[&str] = &["subinterp", "process", "microvm", "stdio"];

/// The package and test targets that run the conformance suite against each backend: one per
/// way the backend starts cells (`process_direct`: no fork server; `microvm_cold`: no
/// snapshot; both are how `cell run` starts its one cell; `microvm_hosted`: every VM in a VM
/// host process).
fn suite_targets(backend: &str) -> Vec<(&'static str, &str)> {
    const BUILTIN: &str = "cell-conformance-builtin";
    match backend {
        "stdio" => vec![("cell-stdio-backend", "conformance")],
        "process" => vec![(BUILTIN, "process"), (BUILTIN, "process_direct")],
        "microvm" => vec![
            (BUILTIN, "microvm"),
            (BUILTIN, "microvm_cold"),
            (BUILTIN, "microvm_hosted"),
        ],
        other => vec![(BUILTIN, other)],
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
        Some("mutants") => mutants(&args[1..]),
        Some("package") => package::package(after_dashes(&args)),
        Some("fuzz-replay") => step(
            "fuzz corpora replayed (cargo test -p cell-fuzz-replay)",
            cargo().args(["test", "-p", "cell-fuzz-replay"]),
        ),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | guests | conformance [--backend NAME] | bench [--backend NAME] | bench --density [--backend NAME] [--max N] | fuzz-replay | mutants [--area NAME] [-- ARGS] | package [-- ARGS]>"
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

/// The vendored, patched Rhai: a workspace member so that it packages with the rest, but the
/// published engine's own code, so `ci` neither lints nor tests it.
const ENGINE: &str = "cell-rhai";

/// The arguments after `--`, passed on to the tool a command runs.
fn after_dashes(args: &[String]) -> &[String] {
    args.iter()
        .position(|a| a == "--")
        .map_or(&[], |i| &args[i + 1..])
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
    /// The suite's test binary (a backend has one per way it starts cells).
    suite: String,
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
    // Every libtest result line of the run (unit, integration, doc tests), added up.
    let (mut total, mut binaries) = (Counts::default(), 0);
    for line in BufReader::new(reader).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.trim().strip_prefix("conformance suite: backend `") {
            // `NAME` in `SUITE`: results are kept per backend, each suite its own entry.
            let mut parts = rest.split('`');
            let name = parts.next().unwrap_or_default().to_string();
            let suite = parts.nth(1).unwrap_or(&name).to_string();
            current = Some((
                name,
                Counts {
                    suite,
                    ..Counts::default()
                },
            ));
        } else if line.trim().starts_with("Running ") {
            // A test binary that is no conformance suite.
            current = None;
        }
        if let (Some((_, counts)), Some(rest)) = (&mut current, line.strip_prefix("SKIPPED: ")) {
            counts.skipped = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            binaries += 1;
            total.passed += count(rest, "passed");
            total.failed += count(rest, "failed");
            total.ignored += count(rest, "ignored");
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
    println!(
        "\n==> test summary: {} passed, {} failed, {} ignored, in {binaries} test runs",
        total.passed, total.failed, total.ignored
    );
    (ok, results)
}

fn report(selected: &[&str], results: &[(String, Counts)]) -> bool {
    println!("\n==> conformance per backend");
    let mut ok = true;
    for backend in selected {
        let suites: Vec<&Counts> = results
            .iter()
            .filter(|(b, _)| b == backend)
            .map(|(_, c)| c)
            .collect();
        if suites.is_empty() {
            println!("  {backend:<10} FAILED: the suite did not run (build error?)");
            ok = false;
        }
        for c in suites {
            let verdict = match (c.failed, c.passed) {
                (0, 0) if c.ignored > 0 => "SKIPPED",
                (0, _) => "ok",
                _ => "FAILED",
            };
            println!(
                "  {backend:<10} {verdict}: {} passed, {} failed, {} ignored (suite {})",
                c.passed, c.failed, c.ignored, c.suite
            );
            if let Some(reason) = &c.skipped {
                println!("  {:<10} {reason}", "");
            }
            ok &= c.failed == 0;
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
        for (package, test) in suite_targets(b) {
            cmd.args(["-p", package, "--test", test]);
        }
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
            "--exclude",
            ENGINE,
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    let guests = guests();
    let features = feature_sets();
    println!("\n==> cargo test --workspace");
    let mut test = cargo();
    test.args(["test", "--workspace", "--exclude", ENGINE, "--no-fail-fast"]);
    let (tests, results) = run_tests(test);
    let conformance = report(BACKENDS, &results);
    let packaged = package::package(&[]);
    println!(
        "\n==> summary: fmt {} · clippy {} · guests {} · features {} · tests {} · conformance {} · package {}",
        verdict(fmt),
        verdict(clippy),
        verdict(guests),
        verdict(features),
        verdict(tests),
        verdict(conformance),
        verdict(packaged)
    );
    fmt && clippy && guests && features && tests && conformance && packaged
}

/// The supervisor's feature sets a dependent may pick, beyond the default (all backends): each
/// must build without warnings on its own (`supervisor/tests/features.rs` checks what each
/// one pulls in).
const FEATURE_SETS: &[&str] = &["", "subinterp", "process", "microvm"];

fn feature_sets() -> bool {
    let mut ok = true;
    for set in FEATURE_SETS {
        let mut cmd = cargo();
        cmd.args(["clippy", "-p", "cell-supervisor", "--no-default-features"]);
        if !set.is_empty() {
            cmd.args(["--features", set]);
        }
        cmd.args(["--", "-D", "warnings"]);
        let name = if set.is_empty() { "none" } else { set };
        ok &= step(&format!("cell-supervisor with features: {name}"), &mut cmd);
    }
    ok
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
    // The microvm guest is built (with flags and a linker script of its own) by its backend's
    // build script, which also runs clippy on it when asked; its pure modules are unit-tested
    // inside the backend crate (`backend-microvm/src/lib.rs`).
    let microvm = root().join("backend-microvm/guest/Cargo.toml");
    ok &= step(
        "backend-microvm/guest: cargo fmt --check",
        cargo()
            .args(["fmt", "--manifest-path"])
            .arg(&microvm)
            .args(["--", "--check"]),
    );
    ok &= step(
        "backend-microvm/guest: cargo clippy -D warnings",
        cargo()
            .args(["build", "-p", "cell-backend-microvm"])
            .env("CELL_MICROVM_GUEST_CLIPPY", "1"),
    );
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

/// One area `cargo xtask mutants` covers: the files mutated, and the packages whose tests must
/// catch each mutant (the crate itself, and the tests that prove its rule end to end).
struct MutantArea {
    name: &'static str,
    package: &'static str,
    files: &'static [&'static str],
    tests: &'static [&'static str],
}

const MUTANT_AREAS: &[MutantArea] = &[
    MutantArea {
        name: "wire",
        package: "cell-abi",
        files: &[
            "abi/src/wire.rs",
            "abi/src/frame.rs",
            "abi/src/decode.rs",
            "abi/src/version.rs",
        ],
        tests: &["cell-abi"],
    },
    MutantArea {
        name: "host",
        package: "cell-host",
        files: &[
            "host/src/host.rs",
            "host/src/rules.rs",
            "host/src/memory.rs",
        ],
        // The hostile guests prove that a cell breaking the protocol is killed.
        tests: &["cell-host", "cell-conformance"],
    },
    MutantArea {
        name: "broker",
        package: "cell-broker",
        files: &[
            "broker/src/cell.rs",
            "broker/src/quota.rs",
            "broker/src/rules.rs",
        ],
        tests: &["cell-broker"],
    },
    MutantArea {
        name: "fs",
        package: "cell-broker",
        files: &["broker/src/caps/fs.rs", "broker/src/caps/fs_object.rs"],
        tests: &["cell-broker"],
    },
];

/// Lines in one of cargo-mutants' outcome lists (`caught.txt`, `missed.txt`, ...).
fn listed(out: &Path, list: &str) -> usize {
    std::fs::read_to_string(out.join(list))
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

fn ensure_cargo_mutants() -> bool {
    let present = cargo()
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    present
        || step(
            "installing cargo-mutants",
            cargo().args(["install", "--locked", "cargo-mutants"]),
        )
}

/// Runs cargo-mutants over each area (or the one named by `--area`), one build at a time, with
/// its results in `target/mutants/AREA/mutants.out`, and prints the counts. Arguments after
/// `--` go to cargo-mutants (`--list`, `-j 2`, `--iterate`, ...). Exclusions of equivalent
/// mutants, each with its reason, are in `.cargo/mutants.toml`.
fn mutants(args: &[String]) -> bool {
    let (ours, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let only = ours
        .iter()
        .position(|a| a == "--area")
        .and_then(|i| ours.get(i + 1));
    let areas: Vec<&MutantArea> = MUTANT_AREAS
        .iter()
        .filter(|a| only.is_none_or(|o| o == a.name))
        .collect();
    if areas.is_empty() {
        let names: Vec<&str> = MUTANT_AREAS.iter().map(|a| a.name).collect();
        eprintln!("xtask: unknown area (known: {})", names.join(", "));
        return false;
    }
    if !ensure_cargo_mutants() {
        return false;
    }
    let listing = extra.iter().any(|a| a == "--list" || a == "--list-files");
    let base = root().join("target").join("mutants");
    let mut ok = true;
    let mut rows = Vec::new();
    for area in areas {
        let output = base.join(area.name);
        let mut cmd = cargo();
        cmd.args(["mutants", "-p", area.package]);
        for file in area.files {
            cmd.args(["--file", file]);
        }
        // One list: cargo-mutants takes one value of `--test-package`, comma-separated.
        cmd.args(["--test-package", &area.tests.join(",")]);
        if !extra.iter().any(|a| a.starts_with("-j") || a == "--jobs") {
            cmd.args(["-j", "1"]);
        }
        cmd.arg("--output").arg(&output).args(extra);
        // The mutated copies share one target directory, so dependencies build once.
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            cmd.env("CARGO_TARGET_DIR", base.join("build"));
        }
        // cargo-mutants exits non-zero when a mutant survives: the counts below say which.
        let ran = step(&format!("mutants: {}", area.name), &mut cmd);
        if listing {
            ok &= ran;
            continue;
        }
        let out = output.join("mutants.out");
        let counts = ["caught.txt", "missed.txt", "unviable.txt", "timeout.txt"]
            .map(|list| listed(&out, list));
        ok &= counts[1] == 0;
        rows.push((area.name, counts));
    }
    if !rows.is_empty() {
        println!("\n==> mutants per area (caught / missed / unviable / timeouts, survivors)");
        let mut total = [0; 4];
        for (name, c) in &rows {
            println!("  {name:<7} {}", mutant_line(c));
            for (t, n) in total.iter_mut().zip(c) {
                *t += n;
            }
        }
        println!("  {:<7} {}", "all", mutant_line(&total));
    }
    ok
}

/// "39 / 1 / 24 / 0, 2.5 % of the 40 that built survive".
fn mutant_line(c: &[usize; 4]) -> String {
    let [caught, missed, unviable, timeouts] = *c;
    let built = caught + missed + timeouts;
    let share = if built == 0 {
        0.0
    } else {
        100.0 * missed as f64 / built as f64
    };
    format!(
        "{caught} / {missed} / {unviable} / {timeouts}, {share:.1} % of the {built} that built survive"
    )
}
