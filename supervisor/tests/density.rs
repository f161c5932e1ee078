//! The density benchmark's core at a tiny count, on every backend that runs here, so the bench
//! cannot rot: the cells are held, the checkpoints measured, and the stop reasons honoured.

#[path = "../benches/density/core.rs"]
mod density_core;

use cell_supervisor::{CellState, Policy, Supervisor};
use density_core::{Options, Stop, hold};
use std::sync::Mutex;
use std::time::Duration;

/// The heap readings are process-wide: one test's frees must not land in the other's window.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn options(max: usize) -> Options {
    Options {
        max,
        checkpoints: vec![10],
        batch: 5,
        reserve_bytes: 0,
        time_limit: Duration::from_secs(3600),
    }
}

#[test]
fn holds_idle_cells_and_measures_each_checkpoint() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let supervisor = Supervisor::new();
    for (backend, available) in supervisor.backends() {
        if let Err(why) = available {
            eprintln!("SKIPPED: backend {backend} cannot run here: {why}");
            continue;
        }
        let mut seen = Vec::new();
        let report = hold(
            &supervisor,
            &backend,
            &Policy::default(),
            &options(20),
            |cells, _| seen.push(cells),
        );
        assert_eq!(report.stop, Stop::Cap, "{backend}");
        assert_eq!(
            seen,
            [5, 10, 15, 20],
            "{backend}: one progress call per batch"
        );
        let cells: Vec<usize> = report.points.iter().map(|p| p.cells).collect();
        assert_eq!(cells, [10, 20], "{backend}: the checkpoint and the maximum");
        let max = report.max().unwrap();
        // Every cell holds its host side in this process's heap. An in-process cell may fit in
        // pages earlier frees left resident, so PSS is asked to grow only where cells live in
        // processes or guest memory of their own.
        assert!(
            max.heap_per_cell > 0.0,
            "{backend}: twenty live cells hold heap"
        );
        if backend != "subinterp" {
            assert!(
                max.pss_per_cell > 0.0,
                "{backend}: twenty live cells take memory"
            );
        }
        assert!(max.spawn_median > Duration::ZERO, "{backend}");
        if backend == "process" {
            // The cells are processes in this process's tree, so their PSS is counted.
            assert!(
                max.processes > 20,
                "process cells are descendants: {}",
                max.processes
            );
        }
        // Every cell was closed: the names are free again.
        assert!(
            !supervisor
                .list()
                .iter()
                .any(|c| matches!(c.state, CellState::Alive)),
            "{backend}: cells left alive"
        );
    }
}

#[test]
fn stops_at_the_memory_reserve_and_on_a_refused_spawn() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let supervisor = Supervisor::new();
    let mut opts = options(20);
    opts.reserve_bytes = u64::MAX;
    let report = hold(
        &supervisor,
        "subinterp",
        &Policy::default(),
        &opts,
        |_, _| {},
    );
    assert!(matches!(report.stop, Stop::Memory(_)), "{:?}", report.stop);
    assert!(report.points.is_empty(), "no cell was held");

    let report = hold(
        &supervisor,
        "no-such-backend",
        &Policy::default(),
        &options(20),
        |_, _| {},
    );
    assert!(
        matches!(&report.stop, Stop::SpawnFailed(e) if e.contains("no-such-backend")),
        "{:?}",
        report.stop
    );
}
