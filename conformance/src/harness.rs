//! Runs scenarios and property tests against one backend.

use crate::driver::TestCell;
use crate::target::{Cell, Target};
use crate::{Setup, Transcript, json};
use abi::backend::Backend;
use abi::{CellError, Map, Value};
use host::Event;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// One backend under test.
#[derive(Clone)]
pub struct Harness {
    backend: Arc<dyn Backend>,
}

static FRESH: AtomicU32 = AtomicU32::new(0);

impl Harness {
    /// The suite for `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Harness { backend }
    }

    /// The backend under test.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// Spawns a cell of the backend under test.
    pub fn spawn(&self, name: &str, setup: &Setup) -> TestCell {
        TestCell::spawn(&*self.backend, name, setup)
            .unwrap_or_else(|e| panic!("spawn of `{name}` on {} failed: {e}", self.name()))
    }

    /// Runs the scenario `name` on a fresh cell and returns its transcript.
    pub fn transcript(&self, name: &str) -> String {
        scenario_transcript(self, name)
    }

    /// Runs a scenario and compares its transcript with the snapshot every backend shares.
    pub fn check(&self, name: &str) {
        check_scenario(self, name)
    }

    /// Why the backend cannot pass scenario `name` by design, if it cannot: it has no boundary
    /// for a scenario in [`NEED_CONFINEMENT`](crate::NEED_CONFINEMENT), no interrupter for one
    /// in [`NEED_INTERRUPTER`](crate::NEED_INTERRUPTER).
    pub fn cannot_run(&self, name: &str) -> Option<String> {
        let backend = self.name();
        if crate::NEED_CONFINEMENT.contains(&name)
            && !self.backend.host_layers().iter().any(|l| l.active)
        {
            return Some(format!(
                "backend `{backend}` reports no active confinement layer (Backend::host_layers): \
                 memory_mib and cpu_time_ms need a boundary that enforces them"
            ));
        }
        if crate::NEED_INTERRUPTER.contains(&name) {
            let probe = self.spawn("interrupter-probe", &Setup::default());
            let can = probe.can_interrupt();
            probe.close();
            if !can {
                return Some(format!(
                    "backend `{backend}` has no interrupter (its pipe's `interrupter()` is None): \
                     a running script can only be killed"
                ));
            }
        }
        None
    }

    /// Runs `source` in a new cell of the same backend and describes the outcome.
    pub fn in_fresh_cell(&self, source: &str) -> String {
        in_fresh_cell(self, source)
    }

    /// Any value sent into the cell and posted back arrives bit-identical, as event and result.
    pub fn property_values_round_trip(&self, cases: u32) {
        let cell = self.spawn("prop-values", &Setup::default());
        cell.exec("fn echo(v) { post(v); v }").expect("define echo");
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&value_strategy(), |v| {
                let back = cell
                    .call("echo", vec![v.clone()], Map::new())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(back.bit_eq(&v), "result {back:?} != {v:?}");
                match cell.recv(Some(std::time::Duration::from_secs(5))) {
                    Ok(Event::Post(posted)) => {
                        prop_assert!(posted.bit_eq(&v), "post {posted:?} != {v:?}")
                    }
                    other => {
                        return Err(TestCaseError::fail(format!(
                            "expected the post, got {other:?}"
                        )));
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", self.name()));
        cell.close();
    }

    /// Arbitrary source text yields a value or a typed error, and the cell stays usable.
    pub fn property_arbitrary_sources(&self, cases: u32) {
        let mut setup = Setup::default();
        setup.limits.max_operations = 100_000;
        let cell = self.spawn("prop-sources", &setup);
        let source = prop_oneof![
            "[ -~]{0,40}",
            proptest::collection::vec(
                prop_oneof![
                    Just("post("),
                    Just(")"),
                    Just("log(\"info\", "),
                    Just("request(\"x\", \"y\")"),
                    Just("fn f(a) {"),
                    Just("}"),
                    Just("let x = "),
                    Just("1"),
                    Just("\"s\""),
                    Just("["),
                    Just("]"),
                    Just("#{"),
                    Just(";"),
                    Just("+"),
                    Just("import \"m\" as m;"),
                    Just("eval("),
                    Just("print("),
                    Just("f(x)"),
                    Just("throw "),
                    Just("blob(3)"),
                ],
                0..12
            )
            .prop_map(|parts| parts.concat()),
        ];
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&source, |src| {
                let _ = cell.exec(&src);
                while cell.recv(Some(std::time::Duration::ZERO)).is_ok() {}
                let alive = cell
                    .exec("40 + 2")
                    .map_err(|e| TestCaseError::fail(format!("after {src:?}: {e}")))?;
                prop_assert_eq!(alive, Value::Int(42));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", self.name()));
        cell.close();
    }
}

impl Target for Harness {
    fn name(&self) -> &str {
        self.backend.name()
    }

    fn spawn(&self, name: &str, setup: &Setup) -> Result<Cell, CellError> {
        Ok(Arc::new(TestCell::spawn(&*self.backend, name, setup)?))
    }
}

/// Runs the scenario `name` on a fresh cell of `target` and returns its transcript.
pub fn scenario_transcript(target: &dyn Target, name: &str) -> String {
    let scenario = crate::all_scenarios()
        .chain(crate::PIPE_SCENARIOS)
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario `{name}`"));
    let cell = target
        .spawn(name, &(scenario.setup)())
        .unwrap_or_else(|e| panic!("spawn of `{name}` on {} failed: {e}", target.name()));
    let mut t = Transcript::default();
    (scenario.run)(&cell, &mut t, target);
    cell.close();
    t.into_string()
}

/// Runs the scenario `name` on `target` and compares its transcript with the snapshot every
/// backend shares (`snapshots/<name>.snap`), whatever front end drives the cell.
pub fn check_scenario(target: &dyn Target, name: &str) {
    let text = scenario_transcript(target, name);
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, text);
    });
}

/// Runs `source` in a new cell of `target` and describes the outcome.
pub fn in_fresh_cell(target: &dyn Target, source: &str) -> String {
    let name = format!("fresh-{}", FRESH.fetch_add(1, Ordering::Relaxed));
    let cell = target
        .spawn(&name, &Setup::default())
        .unwrap_or_else(|e| panic!("spawn of `{name}` on {} failed: {e}", target.name()));
    let outcome = match cell.exec(source) {
        Ok(v) => format!("ok {}", json::value(&v)),
        Err(e) => format!("err {}", e.code.name()),
    };
    cell.close();
    outcome
}

/// Every kind of value, nested.
pub fn value_strategy() -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Unit),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
            proptest::collection::btree_map(".{0,6}", inner, 0..5).prop_map(Value::Map),
        ]
    })
}
