//! Soak every built-in backend that runs here: several threads at once spawn cells, run
//! exec/call/post/request cycles on them and end them by closing, killing, or killing an exec
//! while it runs, in this test binary alone (so nothing else starts threads or opens files
//! meanwhile). After a warm-up round, the host's threads, child processes, file descriptors,
//! cell cgroup directories and resident memory may grow by at most the slacks below: far less
//! than one leaked per cell (each soak ends `THREADS * CELLS_PER_THREAD` cells).

use conformance::soak::{SoakPlan, Usage, soak};
use conformance::{Harness, Setup};
use std::sync::Arc;

const THREADS: u32 = 4;
const CELLS_PER_THREAD: u32 = 500;

/// Threads a soak may add: a backend's helper threads started late (a reaper, a pool keeper,
/// a broker worker), not one per cell.
const THREAD_SLACK: usize = 4;
/// Child processes a soak may add: the process backend's spare cells (two per image, forked
/// ahead of use) and, per soak thread, a last killed cell its reaper has not yet collected.
const CHILD_SLACK: usize = 4 + THREADS as usize;
/// Descriptors a soak may add: a backend's pool of spare cells, refilled in the background,
/// holds a few at any moment.
const FD_SLACK: usize = 16;
/// Cell cgroup directories a soak may add: those of the spares and of cells not yet reaped
/// (the process backend makes one per cell in each hierarchy: four on a cgroup-v1 host).
const CGROUP_SLACK: usize = 4 * CHILD_SLACK;
/// Anonymous resident memory a soak may add after its warm-up: allocator caches and
/// fragmentation (at most 0.4 MiB seen here) and the private pages of the microVMs a pool holds
/// (≈ 0.2 MiB each), not a leak on one way of ending a cell: a subinterp cell leaked at every
/// plain kill (675 of them) added 12 MiB.
const ANON_SLACK: u64 = 8 << 20;

fn check(backend: Arc<dyn abi::backend::Backend>) {
    let name = backend.name().to_string();
    if let Err(reason) = backend.available() {
        eprintln!("SKIPPED: soak on `{name}`: {reason}");
        return;
    }
    let plan = SoakPlan {
        threads: THREADS,
        cells_per_thread: CELLS_PER_THREAD,
        warm_up_per_thread: 6,
        cycles_per_cell: 2,
    };
    let report = soak(&Harness::new(backend), plan);
    eprintln!("soak {name}: {report:?}");
    let (b, a) = (report.before, report.after);
    assert_eq!(
        report.cells,
        THREADS * (CELLS_PER_THREAD + plan.warm_up_per_thread)
    );
    assert!(
        report.closed > 0 && report.killed > 0 && report.killed_running > 0,
        "{name}: every way of ending a cell ran: {report:?}"
    );
    let grew = |what: &str, before: usize, after: usize, slack: usize| {
        assert!(
            after <= before + slack,
            "{name}: {what} grew from {before} to {after} (slack {slack})"
        );
    };
    grew("threads", b.threads, a.threads, THREAD_SLACK);
    grew("child processes", b.children, a.children, CHILD_SLACK);
    grew("file descriptors", b.fds, a.fds, FD_SLACK);
    grew(
        "cell cgroup directories",
        b.cgroups,
        a.cgroups,
        CGROUP_SLACK,
    );
    assert!(
        a.anon_bytes <= b.anon_bytes + ANON_SLACK,
        "{name}: anonymous resident memory grew from {} to {} bytes",
        b.anon_bytes,
        a.anon_bytes
    );
}

/// The probes see what a live cell holds, so the soak's assertions can fail: a process cell
/// spawned directly (no fork server, whose spares would blur the count) is one more child
/// process, more descriptors and, where the host gives cells cgroups, more cell cgroup
/// directories while it lives.
fn probes_see_a_live_process_cell() {
    let backend = backend_process::ProcessBackend {
        fork_server: false,
        ..backend_process::ProcessBackend::new()
    };
    if let Err(reason) = abi::backend::Backend::available(&backend) {
        eprintln!("SKIPPED: probes on `process`: {reason}");
        return;
    }
    let h = Harness::new(Arc::new(backend));
    let before = Usage::now();
    let cell = h.spawn("probe", &Setup::default());
    assert_eq!(cell.exec("1 + 1"), Ok(abi::Value::Int(2)));
    let during = Usage::now();
    cell.close();
    eprintln!("probes: {before:?} with a live process cell: {during:?}");
    assert_eq!(during.children, before.children + 1);
    assert!(during.fds > before.fds, "{before:?} {during:?}");
    if during.cgroups == before.cgroups {
        eprintln!("probes: this host gives process cells no cgroup directory");
    }
}

/// One test, the backends in turn: soaks running at once would count each other's threads,
/// children and descriptors.
#[test]
fn soak_every_backend() {
    probes_see_a_live_process_cell();
    check(Arc::new(backend_subinterp::Subinterp));
    check(Arc::new(backend_process::ProcessBackend::new()));
    check(Arc::new(backend_microvm::MicroVm::new()));
}
