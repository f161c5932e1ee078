//! A backend that cannot run on this host: every trial of the suite is ignored with the reason,
//! none passes.

use abi::backend::{Backend, CellPipe, HostSide, SpawnError, SpawnSpec};
use libtest_mimic::Arguments;
use std::sync::Arc;

struct Absent;

impl Backend for Absent {
    fn name(&self) -> &str {
        "absent"
    }
    fn available(&self) -> Result<(), String> {
        Err("no such device here".into())
    }
    fn spawn(&self, _: &SpawnSpec, _: Arc<dyn HostSide>) -> Result<Box<dyn CellPipe>, SpawnError> {
        panic!("the suite spawned a cell on a backend that said it cannot run");
    }
}

#[test]
fn an_unavailable_backend_is_ignored_never_passed() {
    let trials = cell_conformance::trials(Arc::new(Absent));
    let total = trials.len() as u64;
    assert!(total > 20, "{total} trials");
    let args = Arguments {
        test_threads: Some(1),
        quiet: true,
        ..Arguments::default()
    };
    let c = libtest_mimic::run(&args, trials);
    assert_eq!((c.num_passed, c.num_failed, c.num_ignored), (0, 0, total));
}
