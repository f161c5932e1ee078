//! The conformance suite on the microvm backend (KVM; every trial shows as ignored, with the
//! reason, where /dev/kvm is absent).
conformance::conformance_main!(backend_microvm::MicroVm::new());
