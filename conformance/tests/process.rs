//! The conformance suite on the process backend: every cell is a kernel-confined child
//! process (namespaces, empty root, seccomp allowlist, Landlock, rlimits, cgroups).
use std::sync::Arc;

use backend_process::ProcessBackend;
use cell_conformance::supervisor::Supervisor;

fn supervisor() -> Supervisor {
    let supervisor = Supervisor::new();
    supervisor.register_backend(Arc::new(ProcessBackend::new()));
    supervisor
}

cell_conformance::conformance_tests!(supervisor, "process");
