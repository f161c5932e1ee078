//! The density benchmark's core, shared by the `density` bench and its test: hold idle cells of
//! one backend through the public [`Supervisor`] API until a cap, a spawn failure, a memory
//! floor or a time limit, and measure at checkpoints the memory each cell adds to the whole host
//! side and the time each spawn takes.
//!
//! Memory is the growth, divided by the number of live cells, of
//! * the proportional set size (PSS, `/proc/PID/smaps_rollup`) summed over this process and
//!   every process descended from it — the supervisor, a process backend's fork server and its
//!   cells; a microvm's guest memory is mapped in this process, so the guest pages it touched
//!   are in this figure;
//! * the system's `MemAvailable` (`/proc/meminfo`), which also counts what the kernel holds for
//!   the cells (KVM structures, page tables, socket buffers) but moves with anything else the
//!   machine runs.
//!
//! The baseline is taken after one cell was spawned and closed, so a backend's one-time setup
//! (fork server, snapshot template, shared image) is not charged to the cells.
#![allow(dead_code)]

#[path = "../common/memory.rs"]
pub mod memory;

use cell_supervisor::{Cell, Policy, Supervisor};
use memory::{heap_in_use, mem_available, tree_pss};
use std::time::{Duration, Instant};

/// What to hold and when to stop.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop at this many live cells.
    pub max: usize,
    /// Cell counts at which memory is measured (the last count reached is always measured).
    pub checkpoints: Vec<usize>,
    /// Spawns per timing batch; each point reports the median spawn of its last batch.
    pub batch: usize,
    /// Stop before `MemAvailable` drops below this many bytes.
    pub reserve_bytes: u64,
    /// Stop spawning after this long.
    pub time_limit: Duration,
}

/// Why spawning stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// `max` cells are live.
    Cap,
    /// `MemAvailable` fell below the reserve (bytes available when it was read).
    Memory(u64),
    /// The backend refused a spawn (or the fresh cell's first exec failed).
    SpawnFailed(String),
    /// The time limit passed.
    TimeLimit,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Cap => write!(f, "cap reached"),
            Stop::Memory(avail) => {
                write!(f, "MemAvailable down to {} MiB (the reserve)", avail >> 20)
            }
            Stop::SpawnFailed(e) => write!(f, "spawn failed: {e}"),
            Stop::TimeLimit => write!(f, "time limit"),
        }
    }
}

/// Measurements with `cells` idle cells live.
#[derive(Clone, Debug)]
pub struct Point {
    pub cells: usize,
    /// PSS growth of this process and its descendants, per cell, in bytes.
    pub pss_per_cell: f64,
    /// Growth of this process's C heap in use, per cell, in bytes: what an in-process cell holds,
    /// even where it fits in pages already resident and PSS does not move.
    pub heap_per_cell: f64,
    /// `MemAvailable` drop per cell, in bytes.
    pub avail_per_cell: f64,
    /// Median spawn (`Supervisor::spawn`, handshake included) of the last batch.
    pub spawn_median: Duration,
    /// Wall time spent spawning (and giving each cell its first exec) up to here.
    pub elapsed: Duration,
    /// Processes in this process's tree, itself included.
    pub processes: usize,
}

/// One backend's run.
#[derive(Clone, Debug)]
pub struct Report {
    pub backend: String,
    pub points: Vec<Point>,
    /// `(cells live after the batch, median spawn in it)` for every batch, in order.
    pub batches: Vec<(usize, Duration)>,
    pub stop: Stop,
}

impl Report {
    /// The point measured at the most cells.
    pub fn max(&self) -> Option<&Point> {
        self.points.last()
    }

    /// The point measured at exactly `cells`.
    pub fn at(&self, cells: usize) -> Option<&Point> {
        self.points.iter().find(|p| p.cells == cells)
    }
}

/// Holds idle cells of `backend` (each spawned, then given one `let x = 1;`) until `opts` says
/// stop, calling `progress` after every batch; closes them all before returning.
pub fn hold(
    supervisor: &Supervisor,
    backend: &str,
    policy: &Policy,
    opts: &Options,
    mut progress: impl FnMut(usize, Duration),
) -> Report {
    let run = std::process::id();
    // One-time setup of the backend, outside the baseline.
    let mut stop = None;
    match supervisor.spawn(&format!("density-{run}-warm"), backend, policy) {
        Ok(cell) => cell.close(),
        Err(e) => stop = Some(Stop::SpawnFailed(e.to_string())),
    }
    let (pss0, heap0, avail0) = (tree_pss().0, heap_in_use(), mem_available());
    let mut cells: Vec<Cell> = Vec::with_capacity(opts.max.min(1 << 20));
    let mut points = Vec::new();
    let mut batches = Vec::new();
    let mut batch: Vec<Duration> = Vec::with_capacity(opts.batch);
    let mut last_median = Duration::ZERO;
    let started = Instant::now();
    let measure = |cells: usize, median: Duration, elapsed: Duration| {
        let (pss, processes) = tree_pss();
        let per = |grown: u64| grown as f64 / cells.max(1) as f64;
        Point {
            cells,
            pss_per_cell: per(pss.saturating_sub(pss0)),
            heap_per_cell: per(heap_in_use().saturating_sub(heap0)),
            avail_per_cell: per(avail0.saturating_sub(mem_available())),
            spawn_median: median,
            elapsed,
            processes,
        }
    };
    while stop.is_none() {
        if cells.len() >= opts.max {
            stop = Some(Stop::Cap);
            break;
        }
        if started.elapsed() >= opts.time_limit {
            stop = Some(Stop::TimeLimit);
            break;
        }
        // Reading /proc/meminfo costs a few µs: look every 16 spawns.
        if cells.len().is_multiple_of(16) {
            let avail = mem_available();
            if avail < opts.reserve_bytes {
                stop = Some(Stop::Memory(avail));
                break;
            }
        }
        let name = format!("density-{run}-{}", cells.len());
        let t0 = Instant::now();
        let spawned = supervisor.spawn(&name, backend, policy);
        let took = t0.elapsed();
        let cell = match spawned {
            Ok(cell) => cell,
            Err(e) => {
                stop = Some(Stop::SpawnFailed(e.to_string()));
                break;
            }
        };
        if let Err(e) = cell.exec("let x = 1;") {
            stop = Some(Stop::SpawnFailed(format!("first exec: {e}")));
            break;
        }
        cells.push(cell);
        batch.push(took);
        if batch.len() == opts.batch {
            last_median = median(&mut batch);
            batches.push((cells.len(), last_median));
            progress(cells.len(), last_median);
            batch.clear();
        }
        if opts.checkpoints.contains(&cells.len()) {
            let elapsed = started.elapsed();
            let median = if batch.is_empty() {
                last_median
            } else {
                median(&mut batch.clone())
            };
            points.push(measure(cells.len(), median, elapsed));
        }
    }
    let elapsed = started.elapsed();
    if !batch.is_empty() {
        last_median = median(&mut batch);
        batches.push((cells.len(), last_median));
        progress(cells.len(), last_median);
    }
    if matches!(stop, Some(Stop::SpawnFailed(_))) {
        // The spawn may have failed for want of descriptors, and reading /proc needs some:
        // give back the last cell's, so the final reading sees every process still held.
        if let Some(last) = cells.pop() {
            last.close();
        }
    }
    if points.last().is_none_or(|p| p.cells != cells.len()) && !cells.is_empty() {
        points.push(measure(cells.len(), last_median, elapsed));
    }
    for cell in &cells {
        cell.close();
    }
    drop(cells);
    Report {
        backend: backend.to_string(),
        points,
        batches,
        stop: stop.unwrap_or(Stop::Cap),
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}
