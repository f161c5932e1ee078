//! `subinterp` figures beside their floor (a bare Rhai eval on a fresh and a reused engine):
//! cold cell → first `post(40 + 2)` → close, warm exec and call round trips (unpinned and pinned
//! to one CPU), and host memory per idle cell.

mod common;

use cell_supervisor::{Policy, Supervisor};
use common::{Row, fresh_name, pin, print_summary, rss_bytes};
use criterion::BenchmarkId;
use rhai::packages::Package;
use std::hint::black_box;

const GROUP: &str = "subinterp";

/// Scripts run in a cell under the default policy and on a bare engine: (id, what, source).
/// Each is a block, so that its variables go with it (a cell keeps top-level `let`s).
/// Building an array or a string was quadratic with any size limit set (the engine re-walked
/// the whole value after each change); the checks are O(1) now.
const SCRIPTS: &[(&str, &str, &str)] = &[
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

/// As `cell` and `cell-serve` run: `memory_mib` binds, and its cost is in every figure.
#[global_allocator]
static ALLOCATOR: cell_supervisor::AccountingAllocator = cell_supervisor::AccountingAllocator;

fn main() {
    let mut c = common::criterion();
    let supervisor = Supervisor::new();
    let policy = Policy::default();
    let std_pkg = rhai::packages::StandardPackage::new().as_shared_module();

    let mut reused = rhai::Engine::new_raw();
    reused.register_global_module(std_pkg.clone());
    for (suffix, cpu) in [("", None), ("_pinned", Some(0))] {
        pin(cpu);
        let mut g = c.benchmark_group(GROUP);
        g.bench_function(
            BenchmarkId::new(format!("floor_rhai_fresh_engine{suffix}"), ""),
            |b| {
                b.iter(|| {
                    let mut engine = rhai::Engine::new_raw();
                    engine.register_global_module(std_pkg.clone());
                    black_box(engine.eval::<i64>("40 + 2").unwrap())
                })
            },
        );
        g.bench_function(
            BenchmarkId::new(format!("floor_rhai_reused_engine{suffix}"), ""),
            |b| b.iter(|| black_box(reused.eval::<i64>("40 + 2").unwrap())),
        );
        common::bench_cold(
            &mut g,
            &format!("cold_post_42{suffix}"),
            &supervisor,
            "subinterp",
            &policy,
        );
        common::bench_warm(&mut g, suffix, &supervisor, "subinterp", &policy);
        g.finish();
    }
    pin(None);

    // Scripts that grow collections (and one CPU-bound loop) in a cell under the default
    // policy's limits, beside a bare engine (no limits) running the same compiled script.
    let mut g = c.benchmark_group(GROUP);
    g.sample_size(10);
    let cell = supervisor
        .spawn(&fresh_name(), "subinterp", &policy)
        .unwrap();
    for (id, _, source) in SCRIPTS {
        let ast = reused.compile(source).unwrap();
        let expected = reused.eval_ast::<i64>(&ast).unwrap();
        g.bench_function(BenchmarkId::new(format!("floor_rhai_{id}"), ""), |b| {
            b.iter(|| black_box(reused.eval_ast::<i64>(&ast).unwrap()))
        });
        assert_eq!(cell.exec(source).unwrap(), abi::Value::Int(expected));
        g.bench_function(BenchmarkId::new(format!("script_{id}"), ""), |b| {
            b.iter(|| black_box(cell.exec(source).unwrap()))
        });
    }
    drop(cell);
    g.finish();

    // Memory: idle cells after their handshake and one exec, resident growth per cell.
    const CELLS: usize = 500;
    let before = rss_bytes();
    let cells: Vec<_> = (0..CELLS)
        .map(|_| {
            let cell = supervisor
                .spawn(&fresh_name(), "subinterp", &policy)
                .unwrap();
            cell.exec("let x = 1;").unwrap();
            cell
        })
        .collect();
    let per_cell = rss_bytes().saturating_sub(before) as f64 / CELLS as f64;
    drop(cells);

    c.final_summary();
    let mut rows = Vec::new();
    for (suffix, label) in [("", "unpinned"), ("_pinned", "pinned to CPU 0")] {
        rows.push(Row::of(
            GROUP,
            suffix,
            format!("cold spawn→post(40+2)→recv→close, {label}"),
            "cold_post_42",
            "bare Rhai eval, fresh engine",
            "floor_rhai_fresh_engine",
            "< 200 µs",
        ));
        for op in ["exec", "call"] {
            rows.push(Row::of(
                GROUP,
                suffix,
                format!("warm {op} round trip, {label}"),
                &format!("warm_{op}"),
                "bare Rhai eval, reused engine",
                "floor_rhai_reused_engine",
                "< 20 µs",
            ));
        }
    }
    for (id, what, _) in SCRIPTS {
        rows.push(Row::of(
            GROUP,
            "",
            format!("{what}, default limits"),
            &format!("script_{id}"),
            "bare Rhai 1.27, no limits",
            &format!("floor_rhai_{id}"),
            "≤ 1.1x",
        ));
    }
    print_summary(
        "subinterp",
        &rows,
        &[format!(
            "host memory per idle cell ({CELLS} cells, RSS growth): {:.0} KiB   target < 512 KiB",
            per_cell / 1024.0
        )],
    );
}
