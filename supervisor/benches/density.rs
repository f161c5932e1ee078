//! Density: how many idle cells each backend holds on this machine, the memory each one adds
//! to the whole host side and the time each spawn takes as their number grows, at 1,000, 10,000
//! and the most this run reached, beside the targets of issue 13.
//!
//! `cargo xtask bench --density [--backend NAME] [--max N] [--batch N] [--reserve-mib N]
//! [--time-limit SECS]`. Without `--backend`, every backend is measured in a fresh process of
//! its own (so one backend's freed memory is not the next one's baseline); a backend that
//! cannot run here (no `/dev/kvm`, no user namespaces) is reported SKIPPED. Each run stops at
//! `--max` cells (default 200,000), when a spawn fails, when `MemAvailable` would fall below
//! `--reserve-mib` (default the larger of 2 GiB and an eighth of the machine) or after
//! `--time-limit` seconds of spawning (default 240). See `density/core.rs` for what is measured.

#[path = "density/core.rs"]
mod density_core;

use cell_supervisor::{Policy, Supervisor};
use density_core::{Options, Report};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// As `cell` and `cell-serve` run: `memory_mib` binds, and its cost is in every figure.
#[global_allocator]
static ALLOCATOR: cell_supervisor::AccountingAllocator = cell_supervisor::AccountingAllocator;

const BACKENDS: &[&str] = &["subinterp", "process", "microvm"];

/// Live cells and memory per idle cell the issue asks of each backend.
fn target(backend: &str) -> (usize, &'static str) {
    match backend {
        "subinterp" => (100_000, "≤ 16 KiB"),
        "process" => (5_000, "≤ 256 KiB"),
        "microvm" => (10_000, "≤ 1 MiB cold"),
        _ => (0, "-"),
    }
}

const RESULT: &str = "density-result ";

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total = density_core::memory::mem_total();
    let opts = Options {
        max: arg(&args, "--max").unwrap_or(200_000),
        checkpoints: vec![1_000, 10_000],
        batch: arg(&args, "--batch").unwrap_or(1_000),
        reserve_bytes: arg::<u64>(&args, "--reserve-mib")
            .map(|m| m << 20)
            .unwrap_or((2 << 30).max(total / 8)),
        time_limit: Duration::from_secs(arg(&args, "--time-limit").unwrap_or(240)),
    };
    match arg::<String>(&args, "--backend") {
        Some(backend) if BACKENDS.contains(&backend.as_str()) => one(&backend, &opts),
        Some(other) => {
            eprintln!("density: unknown backend `{other}` (known: {BACKENDS:?})");
            ExitCode::from(2)
        }
        None => all(&args, &opts),
    }
}

/// Measures one backend in this process and prints its result as one JSON line.
fn one(backend: &str, opts: &Options) -> ExitCode {
    raise_fd_limit();
    let supervisor = Supervisor::new();
    let available = supervisor
        .backends()
        .into_iter()
        .find(|(name, _)| name == backend)
        .map(|(_, ok)| ok)
        .unwrap_or_else(|| Err("not built into this supervisor".into()));
    if let Err(why) = available {
        println!("SKIPPED: backend {backend} cannot run here: {why}");
        println!(
            "{RESULT}{}",
            serde_json::json!({"backend": backend, "skipped": why})
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "==> density {backend}: up to {} cells, batches of {}, stop below {} MiB available or after {:?}",
        opts.max,
        opts.batch,
        opts.reserve_bytes >> 20,
        opts.time_limit
    );
    let report = density_core::hold(
        &supervisor,
        backend,
        &Policy::default(),
        opts,
        |cells, median| {
            println!(
                "  {backend}: {cells} cells, median spawn of the batch {}",
                fmt_duration(median)
            )
        },
    );
    println!("  {backend}: stopped: {}", report.stop);
    println!("{RESULT}{}", to_json(&report));
    ExitCode::SUCCESS
}

/// Runs every backend in a child process of its own and prints one table.
fn all(args: &[String], opts: &Options) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("density: cannot find this program: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    let mut ok = true;
    for backend in BACKENDS {
        let output = Command::new(&exe)
            .args(args)
            .args(["--backend", backend])
            .stderr(Stdio::inherit())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                eprintln!("density: cannot run {backend}: {e}");
                ok = false;
                continue;
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let mut result = None;
        for line in text.lines() {
            match line.strip_prefix(RESULT) {
                Some(json) => result = serde_json::from_str::<serde_json::Value>(json).ok(),
                None => println!("{line}"),
            }
        }
        match result {
            Some(r) => rows.push(r),
            None => {
                println!("FAILED: backend {backend}: no result ({})", output.status);
                ok = false;
            }
        }
    }
    print_table(&rows, opts);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn to_json(report: &Report) -> serde_json::Value {
    let points: Vec<_> = report
        .points
        .iter()
        .map(|p| {
            serde_json::json!({
                "cells": p.cells,
                "pss_per_cell": p.pss_per_cell,
                "heap_per_cell": p.heap_per_cell,
                "avail_per_cell": p.avail_per_cell,
                "spawn_median_ns": p.spawn_median.as_nanos() as u64,
                "elapsed_ns": p.elapsed.as_nanos() as u64,
                "processes": p.processes,
            })
        })
        .collect();
    serde_json::json!({
        "backend": report.backend,
        "points": points,
        "stop": report.stop.to_string(),
    })
}

fn print_table(rows: &[serde_json::Value], opts: &Options) {
    println!(
        "\n=== density: idle cells held through the Supervisor API (cap {}, reserve {} MiB, time limit {:?}) ===",
        opts.max,
        opts.reserve_bytes >> 20,
        opts.time_limit
    );
    println!(
        "{:<10} {:>8} {:>12} {:>12} {:>14} {:>12} {:>12} {:>7}   {:<14} {:>10}   stopped",
        "backend",
        "cells",
        "PSS/cell",
        "heap/cell",
        "MemAvail/cell",
        "spawn med.",
        "spawn avg.",
        "procs",
        "target mem.",
        "target n"
    );
    for row in rows {
        let backend = row["backend"].as_str().unwrap_or("?");
        let (target_n, target_mem) = target(backend);
        if let Some(why) = row["skipped"].as_str() {
            println!("{backend:<10} SKIPPED: {why}");
            continue;
        }
        let points = row["points"].as_array().cloned().unwrap_or_default();
        for (i, p) in points.iter().enumerate() {
            let cells = p["cells"].as_u64().unwrap_or(0);
            let ns = |k: &str| Duration::from_nanos(p[k].as_u64().unwrap_or(0));
            let last = i + 1 == points.len();
            println!(
                "{:<10} {:>8} {:>12} {:>12} {:>14} {:>12} {:>12} {:>7}   {:<14} {:>10}   {}",
                backend,
                cells,
                fmt_kib(p["pss_per_cell"].as_f64().unwrap_or(0.0)),
                fmt_kib(p["heap_per_cell"].as_f64().unwrap_or(0.0)),
                fmt_kib(p["avail_per_cell"].as_f64().unwrap_or(0.0)),
                fmt_duration(ns("spawn_median_ns")),
                fmt_duration(ns("elapsed_ns") / cells.max(1) as u32),
                p["processes"].as_u64().unwrap_or(0),
                target_mem,
                target_n,
                if last {
                    row["stop"].as_str().unwrap_or("")
                } else {
                    ""
                }
            );
        }
    }
    println!(
        "PSS/cell: growth of this process and its descendants (fork server, cells; a microvm's touched \
         guest memory is mapped here); heap/cell: growth of this process's C heap in use (what a \
         subinterp cell holds, even in pages already resident); MemAvail/cell: drop of the system's MemAvailable (kernel memory \
         included, noisy on a shared machine); spawn med.: median Supervisor::spawn of the last batch; \
         spawn avg.: wall time of spawn plus first exec per cell up to that count"
    );
}

fn fmt_kib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// Each process cell holds sockets and each microvm its KVM descriptors: allow as many open
/// files as the kernel does (`fs.nr_open`) when this process may raise its hard limit
/// (CAP_SYS_RESOURCE), else as many as the hard limit does.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = ceiling
        && max > hard
        && setrlimit(Resource::RLIMIT_NOFILE, max, max).is_ok()
    {
        return;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
}
