//! The conformance suite on the microvm backend (KVM; skips loudly where /dev/kvm is absent).
use std::sync::Arc;

use backend_microvm::MicroVm;
use cell_conformance::supervisor::Supervisor;

fn supervisor() -> Supervisor {
    let supervisor = Supervisor::new();
    supervisor.register_backend(Arc::new(MicroVm::new()));
    supervisor
}

cell_conformance::conformance_tests!(supervisor, "microvm");
