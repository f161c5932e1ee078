//! The conformance suite on the subinterp backend: a Rhai interpreter per cell, in process.
conformance::conformance_main!(backend_subinterp::Subinterp);
