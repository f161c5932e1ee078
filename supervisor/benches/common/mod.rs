//! Shared by the benchmarks: criterion configured for a noisy 2-core machine, pinning, memory
//! readings, and the summary table that prints each figure beside its floor and target.
#![allow(dead_code)]

pub mod memory;

use cell_supervisor::{Map, Policy, Supervisor, Value};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where criterion writes its estimates; the summary reads medians back from there.
pub fn criterion_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/criterion")
}

pub fn criterion() -> Criterion {
    Criterion::default()
        .output_directory(&criterion_dir())
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// The median, in nanoseconds, criterion measured for `group/id` in this run.
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// The median of `samples` (the upper one of an even count); `samples` must not be empty.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// A cell name no other bench iteration has used.
pub fn fresh_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Cold cell, as bench `id`: spawn → `post(40 + 2)` → recv → close.
pub fn bench_cold(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    supervisor: &Supervisor,
    backend: &str,
    policy: &Policy,
) {
    g.bench_function(BenchmarkId::new(id, ""), |b| {
        b.iter(|| black_box(cold_cycle(supervisor, backend, policy)))
    });
}

/// One cold cell: spawn → `post(40 + 2)` → recv → close; returns the event.
fn cold_cycle(supervisor: &Supervisor, backend: &str, policy: &Policy) -> cell_supervisor::Event {
    let cell = supervisor.spawn(&fresh_name(), backend, policy).unwrap();
    cell.exec("post(40 + 2)").unwrap();
    let event = cell.recv(Some(Duration::from_secs(5))).unwrap();
    cell.close();
    event
}

/// Cold cell latency, as bench `id`: like [`bench_cold`], but each timed start begins
/// after `settle` of idle time, so the background work the previous cell left (reaping,
/// refilling a backend's spares) is not charged to the next one, as it would be for a
/// start that is not one of thousands back to back. Print [`bench_cold`] beside it for
/// the back-to-back rate.
pub fn bench_cold_settled(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    supervisor: &Supervisor,
    backend: &str,
    policy: &Policy,
    settle: Duration,
) {
    g.bench_function(BenchmarkId::new(id, ""), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(settle);
                let t0 = std::time::Instant::now();
                black_box(cold_cycle(supervisor, backend, policy));
                total += t0.elapsed();
            }
            total
        })
    });
}

/// Warm round trips on one live cell, as `warm_exec{suffix}` (`exec("40 + 2")`) and
/// `warm_call{suffix}` (`call("add", [40, 2])`).
pub fn bench_warm(
    g: &mut BenchmarkGroup<'_, WallTime>,
    suffix: &str,
    supervisor: &Supervisor,
    backend: &str,
    policy: &Policy,
) {
    let warm = supervisor.spawn(&fresh_name(), backend, policy).unwrap();
    warm.exec("fn add(a, b) { a + b }").unwrap();
    g.bench_function(BenchmarkId::new(format!("warm_exec{suffix}"), ""), |b| {
        b.iter(|| black_box(warm.exec("40 + 2").unwrap()))
    });
    g.bench_function(BenchmarkId::new(format!("warm_call{suffix}"), ""), |b| {
        b.iter(|| {
            black_box(
                warm.call("add", vec![Value::Int(40), Value::Int(2)], Map::new())
                    .unwrap(),
            )
        })
    });
    warm.close();
}

/// Pins the whole process to one CPU (`Some(cpu)`) or to all of them (`None`).
pub fn pin(cpu: Option<usize>) {
    let mut set = nix::sched::CpuSet::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for c in 0..cpus {
        if cpu.is_none_or(|only| only == c) {
            let _ = set.set(c);
        }
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// One row of the summary: a figure, its floor measured in the same run, and the target.
pub struct Row {
    pub figure: String,
    pub median_ns: Option<f64>,
    pub floor: String,
    pub floor_ns: Option<f64>,
    /// The ratio when it is not `median_ns / floor_ns` (a median of paired ratios).
    pub ratio: Option<f64>,
    pub target: String,
}

impl Row {
    /// A row whose figure and floor are the criterion benches `{id}{suffix}` and
    /// `{floor_id}{suffix}` of `group`, from this run.
    pub fn of(
        group: &str,
        suffix: &str,
        figure: impl Into<String>,
        id: &str,
        floor: &str,
        floor_id: &str,
        target: &str,
    ) -> Row {
        Row {
            figure: figure.into(),
            median_ns: median_ns(group, &format!("{id}{suffix}/")),
            floor: floor.into(),
            floor_ns: median_ns(group, &format!("{floor_id}{suffix}/")),
            ratio: None,
            target: target.into(),
        }
    }
}

pub fn print_summary(title: &str, rows: &[Row], extra: &[String]) {
    println!("\n=== {title} (medians of this run) ===");
    println!(
        "{:<52} {:>11}   {:<36} {:>11} {:>8}   target",
        "figure", "median", "floor", "floor med.", "ratio"
    );
    for r in rows {
        let ratio = match (r.ratio, r.median_ns, r.floor_ns) {
            (Some(ratio), _, _) => format!("{ratio:.2}x"),
            (None, Some(m), Some(f)) if f > 0.0 => format!("{:.2}x", m / f),
            _ => "-".into(),
        };
        println!(
            "{:<52} {:>11}   {:<36} {:>11} {:>8}   {}",
            r.figure,
            r.median_ns.map(fmt_ns).unwrap_or_else(|| "n/a".into()),
            r.floor,
            r.floor_ns.map(fmt_ns).unwrap_or_else(|| "-".into()),
            ratio,
            r.target
        );
    }
    for line in extra {
        println!("{line}");
    }
}

/// Scripts run in a cell under the default policy and on a bare engine: (id, what, source).
/// Each is a block, so that its variables go with it (a cell keeps top-level `let`s).
/// Building an array or a string was quadratic with any size limit set (the engine re-walked
/// the whole value after each change); the checks are O(1) now.
pub const SCRIPTS: &[(&str, &str, &str)] = &[
    (
        "push_100k",
        "build a 100k-element array with push",
        "{ let a = []; for i in 0..100000 { a.push(i); } a.len() }",
    ),
    (
        "concat_100k",
        "build a 100 KB string with +=",
        "{ let s = \"\"; for i in 0..100000 { s += \"x\"; } s.len() }",
    ),
    (
        "map_50k",
        "build a 50k-entry map by index assignment",
        "{ let m = #{}; for i in 0..50000 { m[\"k\" + i] = i; } m.len() }",
    ),
    (
        "strings_array_20k",
        "an array of 20k 40-byte strings",
        "{ let p = \"\"; p.pad(40, 'x'); let a = []; for i in 0..20000 { a.push(p); } a.len() }",
    ),
    (
        "cpu_loop_1m",
        "CPU-bound loop (s += i, 1M iterations)",
        "{ let s = 0; for i in 0..1000000 { s += i; } s }",
    ),
];

/// Pairs of runs per script (after two that are not counted).
const SCRIPT_PAIRS: usize = 15;

/// Runs each of [`SCRIPTS`] in one warm cell of `backend` under `policy` and, beside it, the
/// same compiled script on a bare engine in this process (no limits, no progress callback, no
/// account), alternating bare, cell, bare, cell …: each pair runs at one speed of this shared
/// machine, so the ratio is taken pair by pair and the row gives the median of those ratios
/// (and of each side's times). Runs of the two sides minutes apart, as separate criterion
/// benches would make them, drift apart by more than the difference being measured.
pub fn bench_scripts(supervisor: &Supervisor, backend: &str, policy: &Policy) -> Vec<Row> {
    use rhai::packages::Package;
    use std::time::Instant;
    let mut bare = rhai::Engine::new_raw();
    bare.register_global_module(rhai::packages::StandardPackage::new().as_shared_module());
    let cell = supervisor.spawn(&fresh_name(), backend, policy).unwrap();
    let rows = SCRIPTS
        .iter()
        .map(|(_, what, source)| {
            let ast = bare.compile(source).unwrap();
            let expected = bare.eval_ast::<i64>(&ast).unwrap();
            let (mut bare_ns, mut cell_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for pair in 0..SCRIPT_PAIRS + 2 {
                let t = Instant::now();
                black_box(bare.eval_ast::<i64>(&ast).unwrap());
                let b = t.elapsed().as_nanos() as f64;
                let t = Instant::now();
                assert_eq!(cell.exec(source).unwrap(), Value::Int(expected));
                let c = t.elapsed().as_nanos() as f64;
                if pair >= 2 {
                    bare_ns.push(b);
                    cell_ns.push(c);
                    ratios.push(c / b);
                }
            }
            Row {
                figure: format!("{what}, default limits"),
                median_ns: Some(median(cell_ns)),
                floor: "bare Rhai 1.27, no limits".into(),
                floor_ns: Some(median(bare_ns)),
                ratio: Some(median(ratios)),
                target: "≤ 1.1x (median of paired ratios)".into(),
            }
        })
        .collect();
    cell.close();
    rows
}
