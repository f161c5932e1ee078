//! The standard scenarios. Each gets a fresh cell (named after the scenario) under its policy.

use crate::Setup;
use crate::driver::TestCell as Cell;
use crate::{Harness, Transcript};
use abi::{Map, Value};
use std::time::Duration;

/// One scenario: a fresh cell under `setup`, driven by `run`, its transcript compared with
/// `snapshots/<name>.snap`.
pub struct Scenario {
    /// The scenario's name, its snapshot's and its cell's.
    pub name: &'static str,
    /// What the cell is allowed.
    pub setup: fn() -> Setup,
    /// Drives the cell and records what happens.
    pub run: fn(&Cell, &mut Transcript, &Harness),
}

fn default_policy() -> Setup {
    Setup::default()
}

pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "post_and_recv",
        setup: default_policy,
        run: post_and_recv,
    },
    Scenario {
        name: "exec_returns_value",
        setup: default_policy,
        run: exec_returns_value,
    },
    Scenario {
        name: "call_functions",
        setup: default_policy,
        run: call_functions,
    },
    Scenario {
        name: "events_in_order",
        setup: default_policy,
        run: events_in_order,
    },
    Scenario {
        name: "values_round_trip",
        setup: default_policy,
        run: values_round_trip,
    },
    Scenario {
        name: "request_denied",
        setup: default_policy,
        run: request_denied,
    },
    Scenario {
        name: "script_errors",
        setup: default_policy,
        run: script_errors,
    },
    Scenario {
        name: "out_of_model",
        setup: only_math,
        run: out_of_model,
    },
    Scenario {
        name: "host_modules",
        setup: only_math,
        run: host_modules,
    },
    Scenario {
        name: "engine_limits",
        setup: tight_engine,
        run: engine_limits,
    },
    Scenario {
        name: "kill_running_cell",
        setup: unlimited_ops,
        run: kill_running_cell,
    },
    Scenario {
        name: "wall_time_limit",
        setup: short_wall_time,
        run: wall_time_limit,
    },
    Scenario {
        name: "event_queue_bound",
        setup: small_queue,
        run: event_queue_bound,
    },
    Scenario {
        name: "frame_size_cap",
        setup: small_frames,
        run: frame_size_cap,
    },
    Scenario {
        name: "close_cell",
        setup: default_policy,
        run: close_cell,
    },
    Scenario {
        name: "state_is_per_cell",
        setup: default_policy,
        run: state_is_per_cell,
    },
];

fn int(i: i64) -> Value {
    Value::Int(i)
}

/// `post(40 + 2)` reaches `recv`; exec's own result is unit.
fn post_and_recv(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "post(40 + 2)");
    t.recv(cell);
    t.drain(cell);
}

fn exec_returns_value(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "40 + 2");
    let _ = t.exec(cell, "let x = 20; x * 2");
    let _ = t.exec(cell, "x + 2");
    let _ = t.exec(cell, "\"text\" + 1");
    let _ = t.exec(cell, "[1, 2.5, true, (), #{k: \"v\"}]");
    t.drain(cell);
}

fn call_functions(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(
        cell,
        "fn add(a, b) { a + b } fn greet(name, opts) { opts.greeting + \", \" + name }",
    );
    let _ = t.call(cell, "add", vec![int(40), int(2)], Map::new());
    let _ = t.call(cell, "main.add", vec![int(1), int(2)], Map::new());
    let mut kwargs = Map::new();
    kwargs.insert("greeting".into(), Value::Str("hello".into()));
    let _ = t.call(cell, "greet", vec![Value::Str("cell".into())], kwargs);
    let _ = t.call(cell, "add", vec![int(1)], Map::new());
    let _ = t.call(cell, "missing", vec![], Map::new());
    let _ = t.call(cell, "not a path", vec![], Map::new());
    let _ = t.exec(cell, "fn add(a, b) { a * b }");
    let _ = t.call(cell, "add", vec![int(6), int(7)], Map::new());
    // A call's result is never confused with a post: both arrive, each where it belongs.
    let _ = t.exec(cell, "fn both() { post(\"posted\"); \"returned\" }");
    let _ = t.call(cell, "both", vec![], Map::new());
    t.drain(cell);
}

fn events_in_order(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(
        cell,
        r#"post(1); log("info", "hello", #{user: "ann"}); metric("latency_ms", 12.5, #{route: "/x"}); post(2); log("error", "bad"); metric("count", 3)"#,
    );
    t.drain(cell);
}

fn values_round_trip(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(
        cell,
        r#"post(()); post(true); post(-9223372036854775807 - 1); post(1.5); post("ünïcode"); post(blob(3, 255)); post([1, [2, [3]]]); post(#{b: 1, a: #{c: [()]}}); post('x')"#,
    );
    t.drain(cell);
    let mut map = Map::new();
    map.insert("k".into(), Value::Bytes(vec![0, 1, 2]));
    let _ = t.exec(cell, "fn echo(v) { post(v); v }");
    let _ = t.call(
        cell,
        "echo",
        vec![Value::List(vec![
            Value::Float(-0.0),
            Value::Map(map),
            Value::Unit,
        ])],
        Map::new(),
    );
    t.drain(cell);
}

fn request_denied(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, r#"request("fs", "read", "/etc/passwd")"#);
    let _ = t.exec(cell, r#"let r = (); try { request("net", "connect", #{host: "example.org"}) } catch (e) { r = e.name } post(r); r"#);
    let _ = t.exec(
        cell,
        "fn sneaky() { request(\"secret\", \"get\", \"token\") }",
    );
    let _ = t.call(cell, "sneaky", vec![], Map::new());
    let _ = t.exec(cell, "request(\"clock\")");
    t.drain(cell);
    let _ = t.exec(cell, "\"still usable\"");
}

fn script_errors(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "let x = ;");
    let _ = t.exec(cell, "throw \"boom\"");
    let _ = t.exec(cell, "no_such_function(1)");
    let _ = t.exec(cell, "1 / 0");
    let _ = t.exec(cell, "log(\"loud\", \"x\")");
    let _ = t.exec(cell, "metric(\"m\", \"not a number\")");
    let _ = t.exec(cell, "post(Fn(\"f\"))");
    let _ = t.exec(cell, "let a = [1]; a[5]");
    let _ = t.exec(cell, "\"the cell is still usable\"");
    t.drain(cell);
}

fn only_math() -> Setup {
    Setup {
        modules: vec!["math".into()],
        ..Setup::default()
    }
}

fn out_of_model(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "print(\"hi\")");
    let _ = t.exec(cell, "debug(1)");
    let _ = t.exec(cell, "eval(\"40 + 2\")");
    let _ = t.exec(cell, "import \"fs\" as fs;");
    let _ = t.exec(cell, "import \"text\" as t;");
    let _ = t.exec(cell, "sleep(1)");
    let _ = t.exec(cell, "timestamp()");
    let _ = t.call(cell, "text.upper", vec![Value::Str("x".into())], Map::new());
    let _ = t.exec(cell, "42");
    t.drain(cell);
}

fn host_modules(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "import \"math\" as m; m::clamp(15, 0, 10)");
    let _ = t.exec(cell, "math::sum([1, 2, 3.5])");
    let _ = t.call(cell, "math.sqrt", vec![Value::Float(16.0)], Map::new());
    let _ = t.call(
        cell,
        "math.mean",
        vec![Value::List(vec![int(1), int(2)])],
        Map::new(),
    );
    let _ = t.call(cell, "math.mean", vec![Value::List(vec![])], Map::new());
    let _ = t.call(cell, "math.nope", vec![], Map::new());
    t.drain(cell);
}

fn tight_engine() -> Setup {
    let mut p = Setup::default();
    p.limits.max_operations = 50_000;
    p.limits.max_string_len = 1_000;
    p.limits.max_array_len = 100;
    p.limits.max_map_len = 100;
    p.limits.max_call_depth = 16;
    p.limits.max_expr_depth = 32;
    p
}

fn engine_limits(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "loop {}");
    let _ = t.exec(cell, "let s = \"x\"; for i in 0..20 { s += s; }");
    let _ = t.exec(cell, "let a = []; for i in 0..200 { a.push(i); }");
    let _ = t.exec(cell, "let m = #{}; for i in 0..200 { m[`k${i}`] = i; } m");
    let _ = t.exec(cell, "fn r(n) { r(n + 1) } r(0)");
    let deep = format!("{}1{}", "(".repeat(64), ")".repeat(64));
    let _ = t.exec(cell, &deep);
    let _ = t.exec(cell, "\"limits are per exec: still usable\"");
    t.drain(cell);
}

fn unlimited_ops() -> Setup {
    let mut p = Setup::default();
    p.limits.max_operations = 0;
    p.wall_time = Some(Duration::from_secs(60));
    p
}

/// A cell spinning in `loop {}` is killed from another thread; the supervisor and later calls
/// see a dead cell, and events sent before the kill are still delivered.
fn kill_running_cell(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let runner = cell.clone();
    let spinning = std::thread::spawn(move || runner.exec("post(\"spinning\"); loop {}"));
    // Wait until the guest is provably inside the loop: its post has arrived.
    t.recv(cell);
    cell.kill();
    let result = spinning.join().expect("exec thread panicked");
    t.line(format!(
        "exec (spinning, killed) -> {}",
        match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("err {}", e.code.name()),
        }
    ));
    let _ = t.exec(cell, "1");
    t.drain(cell);
}

fn short_wall_time() -> Setup {
    let mut p = unlimited_ops();
    p.wall_time = Some(Duration::from_millis(200));
    p
}

fn wall_time_limit(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "post(\"before\"); loop {}");
    let _ = t.exec(cell, "1");
    t.drain(cell);
}

fn small_queue() -> Setup {
    let mut p = Setup::default();
    p.channel.max_queued_events = 5;
    p
}

/// A guest that floods its channel is stopped; what was accepted is still delivered.
fn event_queue_bound(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "for i in 0..3 { post(i) }");
    t.drain(cell);
    let _ = t.exec(cell, "for i in 0..100 { post(i) }");
    t.drain(cell);
    let _ = t.exec(cell, "1");
}

fn small_frames() -> Setup {
    let mut p = Setup::default();
    p.channel.max_frame_bytes = 1024;
    p
}

/// A value too large for a frame is refused where it is sent, as a script error; the cell lives.
fn frame_size_cap(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(
        cell,
        "let s = \"\"; for i in 0..2000 { s += \"x\"; } post(s)",
    );
    let _ = t.exec(cell, "let r = (); try { let s = \"\"; for i in 0..2000 { s += \"y\"; } post(s) } catch (e) { r = e.name } r");
    let _ = t.exec(cell, "let b = blob(5000); b");
    let _ = t.exec(cell, "post(\"small is fine\")");
    t.drain(cell);
}

fn close_cell(cell: &Cell, t: &mut Transcript, _h: &Harness) {
    let _ = t.exec(cell, "post(\"bye\")");
    cell.close();
    t.line("close");
    let _ = t.exec(cell, "1");
    let _ = t.call(cell, "f", vec![], Map::new());
    t.drain(cell);
}

/// Variables and functions stay in one cell and never leak into another.
fn state_is_per_cell(cell: &Cell, t: &mut Transcript, h: &Harness) {
    let _ = t.exec(cell, "let secret = 42; fn peek() { 7 }");
    let _ = t.exec(cell, "secret + peek()");
    t.note("a second cell of the same backend");
    t.line(format!("other cell: {}", h.in_fresh_cell("secret")));
    t.line(format!("other cell: {}", h.in_fresh_cell("peek()")));
    t.drain(cell);
}
