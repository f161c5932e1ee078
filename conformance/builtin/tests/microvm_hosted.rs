//! The conformance suite on the microvm backend with every cell in a VM host process (the start
//! the default mode uses past the supervisor's own share of cells).
conformance::conformance_main!(backend_microvm::MicroVm::hosted());
