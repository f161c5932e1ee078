//! Soak every built-in backend that runs here: thousands of exec/call/post/request cycles and a
//! few hundred cells spawned and closed, in this test binary alone (so nothing else opens files
//! meanwhile). After the warm-up the host's file descriptors and resident memory may grow by at
//! most the slacks below: far less than one leaked descriptor or buffer per cell or cycle.

use conformance::Harness;
use conformance::soak::soak;
use std::sync::Arc;

/// Resident memory a soak may add after its warm-up: allocator caches and fragmentation, not a
/// per-cycle or per-cell leak (which at these counts would be far larger).
const RSS_SLACK: u64 = 32 << 20;
/// Descriptors a soak may add after its warm-up: a backend's pool of spare cells, refilled in
/// the background, holds a few at any moment (one leaked per cell would be 100).
const FD_SLACK: usize = 16;
const CYCLES: u32 = 1_000;
const PER_CELL: u32 = 10;

fn check(backend: Arc<dyn abi::backend::Backend>) {
    let name = backend.name().to_string();
    if let Err(reason) = backend.available() {
        eprintln!("SKIPPED: soak on `{name}`: {reason}");
        return;
    }
    let report = soak(&Harness::new(backend), CYCLES, PER_CELL);
    eprintln!("soak {name}: {report:?}");
    assert!(
        report.after.fds <= report.before.fds + FD_SLACK,
        "{name}: file descriptors grew from {} to {}",
        report.before.fds,
        report.after.fds
    );
    assert!(
        report.after.rss_bytes <= report.before.rss_bytes + RSS_SLACK,
        "{name}: resident memory grew from {} to {} bytes",
        report.before.rss_bytes,
        report.after.rss_bytes
    );
}

#[test]
fn soak_every_backend() {
    check(Arc::new(backend_subinterp::Subinterp));
    check(Arc::new(backend_process::ProcessBackend::new()));
    check(Arc::new(backend_microvm::MicroVm::new()));
}
