//! The conformance suite on the subinterp backend: a Rhai interpreter per cell, in process.
// As a program running subinterp cells does: `memory_mib` binds.
#[global_allocator]
static ALLOCATOR: backend_subinterp::AccountingAllocator = backend_subinterp::AccountingAllocator;

conformance::conformance_main!(backend_subinterp::Subinterp);
