//! The conformance suite every backend must pass, ours or a third party's.
//!
//! Run it against a backend with one macro in an integration test:
//!
//! ```ignore
//! cell_conformance::conformance_tests!(|| {
//!     let supervisor = cell_supervisor::Supervisor::new();
//!     supervisor.register_backend(std::sync::Arc::new(MyBackend::default()));
//!     supervisor
//! }, "my-backend");
//! ```
//!
//! Each scenario drives a fresh cell through the supervisor's public API and records a
//! transcript — every operation, its result code or value, every event `recv` returns. All
//! backends compare against the **same** snapshot file in `snapshots/`, so they cannot drift
//! apart. Property tests check that any value survives the boundary bit-exactly.

mod broker_scenarios;
mod harness;
mod scenarios;
mod transcript;

pub use broker_scenarios::BROKER_SCENARIOS;
pub use harness::{Harness, value_strategy};
pub use scenarios::{SCENARIOS, Scenario};
/// The supervisor API the suite drives, re-exported for backends under test.
pub use supervisor;
pub use transcript::Transcript;

/// Generates one `#[test]` per scenario plus the property tests, for the backend that
/// `$supervisor` (an expression building a [`cell_supervisor::Supervisor`]) registers as `$backend`.
#[macro_export]
macro_rules! conformance_tests {
    ($supervisor:expr, $backend:expr) => {
        $crate::conformance_tests!(@tests $supervisor, $backend;
            post_and_recv, exec_returns_value, call_functions, events_in_order, values_round_trip,
            request_denied, script_errors, out_of_model, host_modules, engine_limits,
            kill_running_cell, wall_time_limit, event_queue_bound, frame_size_cap, close_cell,
            state_is_per_cell, broker_granted, broker_denied, broker_out_of_scope
        );

        #[test]
        fn property_posted_values_arrive_identical() {
            $crate::Harness::new($supervisor(), $backend).property_values_round_trip(48);
        }

        #[test]
        fn property_arbitrary_sources_never_break_the_cell() {
            $crate::Harness::new($supervisor(), $backend).property_arbitrary_sources(32);
        }
    };
    (@tests $supervisor:expr, $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::Harness::new($supervisor(), $backend).check(stringify!($name));
            }
        )*
    };
}
