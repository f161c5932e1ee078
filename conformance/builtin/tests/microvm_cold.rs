//! The conformance suite on the microvm backend with every cell booting its own VM from the
//! image, not starting from the snapshot: the start `cell run` uses for its one cell.
conformance::conformance_main!(backend_microvm::MicroVm::cold());
