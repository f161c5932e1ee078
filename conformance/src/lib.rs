//! The conformance suite every cell backend must pass, ours or a third party's.
//!
//! It depends on the protocol (`cell-abi`), the host side (`cell-host`) and the broker only:
//! a backend is certified without the supervisor or any built-in backend. Run it against a
//! backend with one line in a test target that has `harness = false`:
//!
//! ```text
//! // tests/conformance.rs, with `[[test]] name = "conformance" harness = false` in Cargo.toml
//! cell_conformance::conformance_main!(my_backend::MyBackend::default());
//! ```
//!
//! Each scenario is one test: a fresh cell driven through [`host::CellHost`] over the backend's
//! pipe, its transcript (every operation, its value or error (code and message), every event `recv`
//! returns) compared with the **same** snapshot file in `snapshots/` for every backend, so
//! backends cannot drift apart. Property tests check that any value survives the boundary
//! bit-exactly and that no source text breaks a cell. A backend whose
//! [`Backend::available`](abi::backend::Backend::available) says it cannot run here shows each
//! test as ignored with the reason, never as passed.
#![forbid(unsafe_code)]

mod broker_scenarios;
pub mod driver;
mod harness;
pub mod json;
mod limit_scenarios;
pub mod protocol;
mod runner;
mod scenarios;
mod setup;
pub mod soak;
pub mod stdio;
mod target;
mod transcript;

pub use broker_scenarios::BROKER_SCENARIOS;
pub use driver::{RecvError, TestCell};
pub use harness::{Harness, check_scenario, in_fresh_cell, scenario_transcript, value_strategy};
pub use limit_scenarios::LIMIT_SCENARIOS;
pub use runner::{run, trials};
pub use scenarios::{NEED_CONFINEMENT, NEED_INTERRUPTER, PIPE_SCENARIOS, SCENARIOS, Scenario};
pub use setup::Setup;
pub use stdio::StdioBackend;
pub use target::{Cell, ScenarioCell, Target};
pub use transcript::Transcript;

/// Every Rhai-tier scenario, in the order they run.
pub fn all_scenarios() -> impl Iterator<Item = &'static Scenario> {
    SCENARIOS
        .iter()
        .chain(BROKER_SCENARIOS)
        .chain(LIMIT_SCENARIOS)
}

/// Defines `main` for a test target (`harness = false`) that runs the whole suite against the
/// backend `$backend` (an expression of a type implementing
/// [`Backend`](abi::backend::Backend)).
///
/// In `tests/conformance.rs` of a backend crate (a test target with `harness = false`):
///
/// ```no_run
/// # use cell_conformance::StdioBackend as MyBackend;
/// # fn backend() -> MyBackend { MyBackend::new("mine", "./my-backend", vec![]) }
/// cell_conformance::conformance_main!(backend());
/// ```
#[macro_export]
macro_rules! conformance_main {
    ($backend:expr) => {
        fn main() -> ::std::process::ExitCode {
            $crate::run(::std::sync::Arc::new($backend))
        }
    };
}
