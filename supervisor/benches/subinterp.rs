//! `subinterp` figures beside their floor (a bare Rhai eval on a fresh and a reused engine):
//! cold cell → first `post(40 + 2)` → close, warm exec and call round trips (unpinned and pinned
//! to one CPU), and host memory per idle cell.

mod common;

use cell_supervisor::{Policy, Supervisor};
use common::memory::heap_in_use;
use common::{Row, fresh_name, pin, print_summary};
use criterion::BenchmarkId;
use rhai::packages::Package;
use std::hint::black_box;

const GROUP: &str = "subinterp";

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

    // Memory: idle cells after their handshake and one exec, all alive at once: the growth of
    // the heap in use (glibc's `mallinfo2`, arena and mmapped blocks), per cell. Not RSS: the
    // cells would fit in heap that the benches before left free, and RSS would not move.
    const CELLS: usize = 2000;
    let before = heap_in_use();
    let cells: Vec<_> = (0..CELLS)
        .map(|_| {
            let cell = supervisor
                .spawn(&fresh_name(), "subinterp", &policy)
                .unwrap();
            cell.exec("let x = 1;").unwrap();
            cell
        })
        .collect();
    let per_cell = heap_in_use().saturating_sub(before) as f64 / CELLS as f64;
    drop(cells);

    let script_rows = common::bench_scripts(&supervisor, "subinterp", &policy);

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
            "≤ 5 µs",
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
    rows.extend(script_rows);
    print_summary(
        "subinterp",
        &rows,
        &[format!(
            "host memory per idle cell ({CELLS} cells, heap in use growth): {:.1} KiB   target ≤ 16 KiB",
            per_cell / 1024.0
        )],
    );
}
