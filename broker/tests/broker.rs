//! The capability model, audit, quotas and faults: deny by default, denies win, third-party
//! capabilities, JSON-lines audit, rate and byte quotas, failing and panicking handlers,
//! timeouts, and cancellation of a request blocked in flight.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::{
    AuditSink, Broker, Call, Capability, CapabilityError, Decision, JsonLinesAudit, MemoryAudit,
    Payload, Rule, RuleKind, Rules,
};
use common::{cell, map, s};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const B: &str = "subinterp";

/// A third-party capability: `greet {name}` → Str, `fail`, `panic`, and `block` (waits for a
/// message that never comes, signalling `started` first). Its scope is `params.prefix`.
struct Greeter {
    started: Mutex<Option<mpsc::Sender<()>>>,
    never: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Greeter {
    fn new() -> (Arc<Self>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let (_keep, never) = mpsc::channel::<()>();
        std::mem::forget(_keep); // the sender lives forever: `block` never wakes on its own
        (
            Arc::new(Greeter {
                started: Mutex::new(Some(tx)),
                never: Mutex::new(Some(never)),
            }),
            rx,
        )
    }
}

impl Capability for Greeter {
    fn name(&self) -> &str {
        "greeter"
    }
    fn actions(&self) -> &[&str] {
        &["greet", "fail", "panic", "block"]
    }
    fn scope_fields(&self) -> &[&str] {
        &["params"]
    }
    fn check_rule(&self, rule: &Rule, _: RuleKind) -> Result<(), String> {
        match rule.params.keys().find(|k| *k != "prefix") {
            Some(k) => Err(format!("greeter has no param `{k}`")),
            None => Ok(()),
        }
    }
    fn covers(
        &self,
        rule: &Rule,
        _: RuleKind,
        _: &str,
        payload: &Value,
    ) -> Result<bool, CapabilityError> {
        let name = Payload::new(payload, "greeter")?
            .opt_str("name")?
            .unwrap_or("");
        Ok(rule
            .params
            .get("prefix")
            .is_none_or(|p| name.starts_with(p.as_str())))
    }
    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        match call.action.as_str() {
            "greet" => {
                let name = Payload::new(&call.payload, "greeter")?.str("name")?;
                Ok(Value::Str(format!("hello, {name}")))
            }
            "fail" => Err(CapabilityError::failed("the greeter is out of greetings")),
            "panic" => panic!("greeter exploded"),
            _ => {
                if let Some(tx) = self.started.lock().unwrap().take() {
                    tx.send(()).unwrap();
                }
                let rx = self.never.lock().unwrap().take().expect("block once");
                let _ = rx.recv();
                Ok(Value::Unit)
            }
        }
    }
}

fn greeter_broker(audit: Arc<dyn AuditSink>) -> (Broker, mpsc::Receiver<()>) {
    let (g, started) = Greeter::new();
    (
        Broker::builder().audit(audit).register(g).build().unwrap(),
        started,
    )
}

#[test]
fn third_party_capabilities_plug_in_with_scope() {
    let (broker, _) = greeter_broker(Arc::new(MemoryAudit::default()));
    assert!(broker.capabilities().contains(&"greeter".to_string()));
    let c = cell(
        &broker,
        "g",
        "[[grants]]\ncapability = \"greeter\"\nactions = [\"greet\"]\nparams = { prefix = \"a\" }",
    );
    assert_eq!(
        c.request(B, "greeter", "greet", map(&[("name", s("ann"))])),
        Ok(s("hello, ann"))
    );
    let err = c
        .request(B, "greeter", "greet", map(&[("name", s("bob"))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("outside the scope"));
    let err = broker
        .for_cell("bad", &common::rules("[[grants]]\ncapability = \"greeter\"\nactions = [\"greet\"]\nparams = { x = \"1\" }"))
        .unwrap_err();
    assert!(err.to_string().contains("no param `x`"), "{err}");
    // A name cannot be registered twice.
    let (g2, _) = Greeter::new();
    let (g3, _) = Greeter::new();
    assert!(Broker::builder().register(g2).register(g3).build().is_err());
}

#[test]
fn deny_by_default_and_deny_wins_with_the_rule_named() {
    let audit = Arc::new(MemoryAudit::default());
    let (broker, _) = greeter_broker(audit.clone());
    let c = cell(
        &broker,
        "d",
        "[[grants]]\ncapability = \"greeter\"\nactions = [\"*\"]\n\
         [[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\n\
         [[denies]]\ncapability = \"greeter\"\nactions = [\"greet\"]\nparams = { prefix = \"root\" }",
    );
    assert!(
        c.request(B, "greeter", "greet", map(&[("name", s("ann"))]))
            .is_ok()
    );
    let err = c
        .request(B, "greeter", "greet", map(&[("name", s("rooty"))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(
        err.message.contains("`greeter`") && err.message.contains("`denies[0]`"),
        "{err}"
    );
    let err = c.request(B, "nosuch", "x", Value::Unit).unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("default-deny"));
    let records = audit.records();
    let decided: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.capability.as_str(),
                r.decision,
                r.rule.as_str(),
                r.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        vec![
            ("greeter", Decision::Allow, "grants[0]", "ok"),
            ("greeter", Decision::Deny, "denies[0]", "denied"),
            ("nosuch", Decision::Deny, "default-deny", "denied"),
        ]
    );
    assert!(records.iter().all(|r| r.cell == "d" && r.backend == B));
}

#[test]
fn audit_goes_to_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = Arc::new(JsonLinesAudit::open(&path).unwrap());
    let broker = Broker::builder().audit(sink).build().unwrap();
    let c = cell(
        &broker,
        "j",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]",
    );
    c.request(B, "clock", "wall", Value::Unit).unwrap();
    c.request(B, "clock", "monotonic", Value::Unit).unwrap_err();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["cell"], "j");
    assert_eq!(lines[0]["capability"], "clock");
    assert_eq!(lines[0]["action"], "wall");
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["rule"], "grants[0]");
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["rule"], "default-deny");
    assert_eq!(lines[1]["outcome"], "denied");
}

#[test]
fn request_and_byte_quotas_refuse_with_limit_quota() {
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "q",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nquota = { requests = 2 }\n\
         [[grants]]\ncapability = \"random\"\nactions = [\"bytes\"]\nquota = { bytes = 100 }",
    );
    c.request(B, "clock", "wall", Value::Unit).unwrap();
    c.request(B, "clock", "wall", Value::Unit).unwrap();
    let err = c.request(B, "clock", "wall", Value::Unit).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota);
    assert!(
        err.message.contains("grants[0]") && err.message.contains("2 requests"),
        "{err}"
    );
    // Quotas are per cell: another cell with the same rules starts fresh.
    let other = cell(
        &broker,
        "q2",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]\nquota = { requests = 2 }",
    );
    assert!(other.request(B, "clock", "wall", Value::Unit).is_ok());
    // Bytes: 60 fit, the next 60 bring the total past 100 and are withheld.
    let len = |n| map(&[("len", Value::Int(n))]);
    assert!(c.request(B, "random", "bytes", len(60)).is_ok());
    let err = c.request(B, "random", "bytes", len(60)).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota);
    assert!(err.message.contains("byte quota"), "{err}");
    let err = c.request(B, "random", "bytes", len(1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitQuota);
}

#[test]
fn failing_and_panicking_handlers_fail_only_their_request() {
    let audit = Arc::new(MemoryAudit::default());
    let (broker, _) = greeter_broker(audit.clone());
    let c = cell(
        &broker,
        "f",
        "[[grants]]\ncapability = \"greeter\"\nactions = [\"*\"]",
    );
    let err = c.request(B, "greeter", "fail", Value::Unit).unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed);
    assert!(err.message.contains("out of greetings"));
    let err = c.request(B, "greeter", "panic", Value::Unit).unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed);
    assert!(
        err.message.contains("panicked") && err.message.contains("greeter exploded"),
        "{err}"
    );
    // The broker and the cell carry on.
    assert_eq!(
        c.request(B, "greeter", "greet", map(&[("name", s("z"))])),
        Ok(s("hello, z"))
    );
    let outcomes: Vec<_> = audit.records().iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(outcomes, ["capability_failed", "capability_failed", "ok"]);
}

#[test]
fn a_blocked_request_times_out() {
    let (broker, started) = greeter_broker(Arc::new(MemoryAudit::default()));
    let c = cell(
        &broker,
        "t",
        "[[grants]]\ncapability = \"greeter\"\nactions = [\"block\"]\ntimeout_ms = 100",
    );
    let err = c.request(B, "greeter", "block", Value::Unit).unwrap_err();
    started.recv().unwrap();
    assert_eq!(err.code, ErrorCode::CapabilityFailed);
    assert!(err.message.contains("timed out"), "{err}");
    assert!(err.message.contains("no result within 100 ms"), "{err}");
}

#[test]
fn the_grants_timeout_holds_when_the_cells_deadline_is_later() {
    let (broker, started) = greeter_broker(Arc::new(MemoryAudit::default()));
    let c = cell(
        &broker,
        "t",
        "[[grants]]\ncapability = \"greeter\"\nactions = [\"block\"]\ntimeout_ms = 100",
    );
    let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    let err = c
        .request_with_deadline(B, "greeter", "block", Value::Unit, Some(far))
        .unwrap_err();
    started.recv().unwrap();
    assert_eq!(err.code, ErrorCode::CapabilityFailed);
    assert!(err.message.contains("no result within 100 ms"), "{err}");
}

#[test]
fn cancel_unblocks_a_request_in_flight() {
    let audit = Arc::new(MemoryAudit::default());
    let (broker, started) = greeter_broker(audit.clone());
    let c = Arc::new(cell(
        &broker,
        "k",
        "[[grants]]\ncapability = \"greeter\"\nactions = [\"*\"]",
    ));
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.request(B, "greeter", "block", Value::Unit))
    };
    // Once the capability is inside its blocking call, kill the cell from this thread.
    started.recv().unwrap();
    c.cancel();
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    // Later requests are refused too.
    let err = c
        .request(B, "greeter", "greet", map(&[("name", s("x"))]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    let rules: Vec<_> = audit
        .records()
        .iter()
        .map(|r| (r.rule.clone(), r.outcome.clone()))
        .collect();
    assert_eq!(
        rules,
        [
            ("grants[0]".to_string(), "cancelled".to_string()),
            ("cell-killed".to_string(), "cancelled".to_string())
        ]
    );
}

#[test]
fn empty_rules_grant_nothing() {
    let broker = Broker::builder().build().unwrap();
    let c = broker.for_cell("e", &Rules::default()).unwrap();
    assert!(c.grants_nothing());
    assert_eq!(c.cell(), "e");
    assert_eq!(
        format!("{c:?}"),
        "CellBroker { cell: \"e\", grants: 0, denies: 0 }"
    );
    let granted = common::cell(
        &broker,
        "g",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]",
    );
    assert!(!granted.grants_nothing());
    assert_eq!(granted.cell(), "g");
    for (cap, action) in [
        ("clock", "wall"),
        ("random", "int"),
        ("fs", "read"),
        ("http", "get"),
    ] {
        let err = c.request(B, cap, action, Value::Unit).unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied, "{cap}.{action}");
        assert!(err.message.contains(&format!("`{cap}`")) && err.message.contains("default-deny"));
    }
}

#[test]
fn a_deny_rule_covers_only_its_own_capability() {
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "d",
        "[[grants]]\ncapability = \"clock\"\nactions = [\"*\"]\n\
         [[grants]]\ncapability = \"random\"\nactions = [\"*\"]\n\
         [[denies]]\ncapability = \"random\"\nactions = [\"*\"]",
    );
    assert!(matches!(
        c.request(B, "clock", "wall", Value::Unit),
        Ok(Value::Int(_))
    ));
    let err = c.request(B, "random", "int", Value::Unit).unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("denies[0]"), "{err}");
}

#[test]
fn the_audit_counts_the_bytes_of_payload_and_result() {
    let audit = Arc::new(MemoryAudit::default());
    let broker = Broker::builder().audit(audit.clone()).build().unwrap();
    let c = cell(
        &broker,
        "bytes",
        "[[grants]]\ncapability = \"random\"\nactions = [\"bytes\"]",
    );
    let payload = map(&[("len", Value::Int(8))]);
    let result = c.request(B, "random", "bytes", payload.clone()).unwrap();
    let records = audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].bytes,
        cell_broker::value_bytes(&payload) + cell_broker::value_bytes(&result)
    );
}
