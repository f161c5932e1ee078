//! The conformance suite on the in-process backend.
cell_conformance::conformance_tests!(cell_conformance::supervisor::Supervisor::new, "subinterp");
