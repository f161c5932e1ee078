//! Nothing to build: this package only holds the conformance test targets of the built-in
//! backends (`tests/<backend>.rs`), so that the suite itself depends on no backend.
#![forbid(unsafe_code)]
