//! The conformance suite on the process backend with every cell confined directly, not forked
//! from the pre-confined fork server: the start `cell run` uses for its one cell.
conformance::conformance_main!(backend_process::ProcessBackend {
    fork_server: false,
    ..backend_process::ProcessBackend::new()
});
