//! The conformance suite on the process backend: every cell is a kernel-confined child
//! process (namespaces, empty root, seccomp allowlist, Landlock, rlimits, cgroups).
conformance::conformance_main!(backend_process::ProcessBackend::new());
