//! The suite as a test binary: one libtest trial per scenario and property, for one backend.
//! A backend that cannot run on this host shows every trial as ignored with its reason, never as
//! passed.

use crate::Harness;
use abi::backend::Backend;
use libtest_mimic::{Arguments, Completion, Conclusion, Trial};
use std::process::ExitCode;
use std::sync::Arc;

/// Property cases per run: enough to find a mismatch, few enough for CI.
const VALUE_CASES: u32 = 48;
const SOURCE_CASES: u32 = 32;

fn trial(harness: &Harness, name: String, body: impl FnOnce(Harness) + Send + 'static) -> Trial {
    trial_or_ignored(harness, name, |h| {
        body(h);
        Completion::Completed
    })
}

/// A trial whose body may find it cannot run on this backend by design (and says why).
fn trial_or_ignored(
    harness: &Harness,
    name: String,
    body: impl FnOnce(Harness) -> Completion + Send + 'static,
) -> Trial {
    let h = harness.clone();
    Trial::ignorable_test(name, move || match h.backend().available() {
        Ok(()) => Ok(body(h)),
        Err(reason) => Ok(Completion::ignored_with(format!(
            "backend `{}` cannot run here: {reason}",
            h.name()
        ))),
    })
}

/// Every trial of the suite for `backend`: the protocol vectors, the Rhai-tier scenarios and
/// properties.
pub fn trials(backend: Arc<dyn Backend>) -> Vec<Trial> {
    let harness = Harness::new(backend);
    let mut trials: Vec<Trial> = crate::protocol::vectors()
        .into_iter()
        .map(
            |(name, _, _)| match crate::protocol::known_defect(harness.name(), name) {
                Some(why) => Trial::ignorable_test(format!("protocol::{name}"), move || {
                    Ok(Completion::ignored_with(why))
                }),
                None => trial(&harness, format!("protocol::{name}"), move |h| {
                    crate::protocol::check(h.backend(), name)
                }),
            },
        )
        .collect();
    trials.extend(
        crate::all_scenarios()
            .chain(crate::PIPE_SCENARIOS)
            .map(|s| {
                trial_or_ignored(&harness, format!("rhai::{}", s.name), move |h| {
                    match h.cannot_run(s.name) {
                        Some(why) => Completion::ignored_with(why),
                        None => {
                            h.check(s.name);
                            Completion::Completed
                        }
                    }
                })
            }),
    );
    trials.push(trial(
        &harness,
        "rhai::property_posted_values_arrive_identical".into(),
        |h| h.property_values_round_trip(VALUE_CASES),
    ));
    trials.push(trial(
        &harness,
        "rhai::property_arbitrary_sources_never_break_the_cell".into(),
        |h| h.property_arbitrary_sources(SOURCE_CASES),
    ));
    trials
}

/// Runs the whole suite against `backend` as a test binary (command-line arguments as `cargo
/// test` passes them) and returns the exit code. What [`crate::conformance_main!`] calls.
pub fn run(backend: Arc<dyn Backend>) -> ExitCode {
    let args = Arguments::from_args();
    // `cargo xtask` counts each backend's results after this line; a backend may have several
    // suites (one per way it starts cells), told apart by their test binary.
    let suite = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, _hash)) => name.to_string(),
            None => stem,
        })
        .unwrap_or_default();
    eprintln!(
        "conformance suite: backend `{}` in `{suite}`",
        backend.name()
    );
    if let Err(reason) = backend.available() {
        eprintln!(
            "SKIPPED: conformance of backend `{}`: {reason} (every trial shows as ignored)",
            backend.name()
        );
    }
    conclusion_code(libtest_mimic::run(&args, trials(backend)))
}

fn conclusion_code(c: Conclusion) -> ExitCode {
    if c.has_failed() {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}
