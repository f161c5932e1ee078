//! The standard scenarios. Each gets a fresh cell (named after the scenario) under its policy.

use crate::Setup;
use crate::Transcript;
use crate::target::{Cell, Target};
use abi::{ErrorCode, Map, Value};
use std::time::Duration;

/// One scenario: a fresh cell under `setup`, driven by `run`, its transcript compared with
/// `snapshots/<name>.snap`.
pub struct Scenario {
    /// The scenario's name, its snapshot's and its cell's.
    pub name: &'static str,
    /// What the cell is allowed.
    pub setup: fn() -> Setup,
    /// Drives the cell and records what happens.
    pub run: fn(&Cell, &mut Transcript, &dyn Target),
}

fn default_policy() -> Setup {
    Setup::default()
}

/// The core scenarios every backend must pass with the same transcript.
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
        name: "float_math",
        setup: default_policy,
        run: float_math,
    },
    Scenario {
        name: "typed_methods",
        setup: default_policy,
        run: typed_methods,
    },
    Scenario {
        name: "engine_limits",
        setup: tight_engine,
        run: engine_limits,
    },
    Scenario {
        name: "collection_growth",
        setup: tight_engine,
        run: collection_growth,
    },
    Scenario {
        name: "stops_inside_callbacks",
        setup: tight_engine,
        run: stops_inside_callbacks,
    },
    Scenario {
        name: "wall_time_inside_a_callback",
        setup: short_wall_time,
        run: wall_time_inside_a_callback,
    },
    Scenario {
        name: "kill_running_cell",
        setup: unlimited_ops,
        run: kill_running_cell,
    },
    Scenario {
        name: "wall_time_limit",
        setup: short_wall_time,
        run: spin_past_limit,
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

/// Scenarios that need the backend's pipe itself (its interrupter), so they run where the
/// suite drives the pipe ([`crate::conformance_main!`]), not through another front end.
pub static PIPE_SCENARIOS: &[Scenario] = &[Scenario {
    name: "interrupt",
    setup: unlimited_ops,
    run: interrupt,
}];

/// Scenarios only a backend with a boundary can pass (`memory_mib`, `cpu_time_ms`): one that
/// reports no active confinement layer ([`Backend::host_layers`], as the stdio adapter, which
/// checks the protocol only) shows them as ignored with the reason, never as passed, and is
/// not made to allocate without bound.
///
/// [`Backend::host_layers`]: abi::backend::Backend::host_layers
pub const NEED_CONFINEMENT: &[&str] = &["limit_memory", "limit_cpu"];

/// Scenarios only a backend whose pipe has an interrupter can pass; one without shows them as
/// ignored with the reason (the API lets a backend offer only kills).
pub const NEED_INTERRUPTER: &[&str] = &["interrupt"];

fn int(i: i64) -> Value {
    Value::Int(i)
}

/// `post(40 + 2)` reaches `recv`; exec's own result is unit.
fn post_and_recv(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(cell, "post(40 + 2)");
    t.recv(cell);
    t.drain(cell);
}

fn exec_returns_value(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(cell, "40 + 2");
    let _ = t.exec(cell, "let x = 20; x * 2");
    let _ = t.exec(cell, "x + 2");
    let _ = t.exec(cell, "\"text\" + 1");
    let _ = t.exec(cell, "[1, 2.5, true, (), #{k: \"v\"}]");
    t.drain(cell);
}

fn call_functions(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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

fn events_in_order(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        r#"post(1); log("info", "hello", #{user: "ann"}); metric("latency_ms", 12.5, #{route: "/x"}); post(2); log("error", "bad"); metric("count", 3)"#,
    );
    t.drain(cell);
}

fn values_round_trip(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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

fn request_denied(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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

fn script_errors(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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

fn out_of_model(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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

/// Transcendental functions and powers, to the last bit: the microVM guest has no platform
/// libm, so every backend computes them with the same pure-Rust `libm` (upstream Rhai used the
/// platform's with `std`, and 3-30 % of inputs gave another last bit than the guest's).
fn float_math(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        "let r = []; for x in [0.1, 0.5, 1.0, 2.5, 7.3, -3.2] { r.push([sin(x), cos(x), tan(x), \
         exp(x), sinh(x), cosh(x), tanh(x), atan(x), asinh(x)]); } r",
    );
    let _ = t.exec(
        cell,
        "[ln(2.0), ln(10.0), log(1000.0), log(8.0, 2.0), log(41.93456652082264), asin(0.3), \
         acos(0.3), atanh(0.3), acosh(2.5), atan(1.0, 3.0), hypot(3.0, 4.5), exp(-3.6319285079915433)]",
    );
    let _ = t.exec(
        cell,
        "let x = 2.9874608671657414; [2.0 ** 0.5, 1.1 ** 7, 7.5 ** -3, 10.0 ** 22, x ** -9.144318252859634, 3 ** 0.5]",
    );
    let _ = t.exec(cell, "let y = 1.7; y **= 3.3; y");
    t.drain(cell);
}

/// Methods defined for one type (`fn int.twice()`) beside one for every type, called on values
/// of alternating types: each call finds its own type's method (the engine keeps the hash of
/// the last receiver type's name between method calls).
fn typed_methods(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        "fn int.twice() { this * 2 } fn string.twice() { this + this } fn twice() { \"any\" } \
         let r = []; for v in [1, \"a\", [1], 2, \"b\", 3.5, #{x: 1}, 'c'] { r.push(v.twice()); } r",
    );
    t.drain(cell);
}

fn host_modules(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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
    // A keyword is no function of any module (it used to be a syntax error of the call).
    let _ = t.call(cell, "math.if", vec![], Map::new());
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

fn engine_limits(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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

/// Operations inside the callbacks of native functions count against `max_operations`, and a
/// stop inside a callback whose error the native function discards (`sort`, `dedup`) is still
/// the answer: no script turns a limit into a success by running its loop in a callback.
fn stops_inside_callbacks(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    // `tight_engine`: 50,000 operations; 100 callbacks of about 3,000 each pass it. Then
    // nested: a callback inside a callback, inside a script function, and through `call`.
    for source in [
        "let a = []; a.pad(100, 0); a.map(|x| { let k = 0; while k < 1000 { k += 1; } k }).len()",
        "let a = [3, 1, 2]; a.sort(|x, y| { loop {} }); a",
        "let a = [1, 1, 2]; a.dedup(|x, y| { loop {} }); a.len()",
        "[1].map(|x| { let k = 0; while k < 1000 { k += 1; } k })",
        "[[3, 1], [2]].map(|x| { x.sort(|a, b| { loop {} }); x })",
        "fn spin(a) { a.dedup(|x, y| { loop {} }); a } spin([1, 1]).len()",
        "fn sorted() { let a = [2, 1]; a.sort(|x, y| { [x].map(|v| { loop {} }); 0 }); a }",
    ] {
        let _ = t.exec(cell, source);
    }
    let _ = t.call(cell, "sorted", vec![], Map::new());
    let _ = t.exec(cell, "\"the next exec runs\"");
    t.drain(cell);
}

/// The wall time stops a script spinning inside a `sort` callback, which discards the
/// callback's errors: the cell ends with `timed_out` as it does for a plain loop, never with
/// the sorted array.
fn wall_time_inside_a_callback(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        "post(\"before\"); let a = [3, 1, 2]; a.sort(|x, y| { loop {} }); a",
    );
    let _ = t.exec(cell, "1");
    t.drain(cell);
}

/// Every way a script can grow a string, an array (or BLOB) or a map past its limit, each
/// ending with a value that is not the grown collection, so only the check at the mutation can
/// catch it: each gives that limit's code. A limit counts one collection: a string's bytes, an
/// array's elements (a BLOB's bytes), a map's entries; nested collections are each their own.
fn collection_growth(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    // `tight_engine`: strings 1,000 bytes, arrays 100 elements, maps 100 entries.
    t.note("strings: each growth path past 1,000 bytes");
    for source in [
        r#"let s = "x"; for i in 0..20 { s += s; } 0"#,
        r#"let s = ""; for i in 0..2000 { s += 'x'; } 0"#,
        r#"let s = ""; for i in 0..200 { s += 1234567890; } 0"#,
        r#"let s = "x"; for i in 0..20 { s = s + s; } 0"#,
        r#"let s = "x"; for i in 0..20 { s = `${s}${s}`; } 0"#,
        r#"let s = ""; for i in 0..200 { s.append("0123456789"); } 0"#,
        r#"let s = "x"; s.pad(2000, '-'); 0"#,
        r#"let s = "xxxxxxxxxx"; for i in 0..3 { s.replace("x", "xxxxxxxxxx"); } 0"#,
        r#"let s = ""; s.pad(500, 'ŉ'); s.make_upper(); 0"#,
        r#"let s = ""; s.pad(500, 'ŉ'); let u = s.to_upper(); 0"#,
        r#"let s = ""; s.pad(1000, 'a'); s[0] = '😀'; 0"#,
        r#"let p = ""; p.pad(400, '-'); let a = [p, p, p]; let s = a.to_string(); 0"#,
        r#"let s = "x"; s[0..1] = "0123456789"; for i in 0..10 { s[0..1] = s; } 0"#,
        r#"let a = [""]; for i in 0..200 { a[0] += "0123456789"; } 0"#,
        r#"let m = #{s: ""}; for i in 0..200 { m.s += "0123456789"; } 0"#,
    ] {
        let _ = t.exec(cell, source);
    }
    t.note("arrays: each growth path past 100 elements");
    for source in [
        "let a = []; for i in 0..200 { a.push(i); } 0",
        "let a = []; for i in 0..200 { a += i; } 0",
        "let a = []; for i in 0..200 { a += [i, i]; } 0",
        "let a = []; for i in 0..200 { a.append([i, i]); } 0",
        "let a = []; for i in 0..200 { a = a + [i]; } 0",
        "let a = []; for i in 0..200 { a.insert(0, i); } 0",
        "let a = []; a.pad(200, 0); 0",
        "let a = []; for i in 0..200 { a.splice(0, 0, [i, i]); } 0",
        "let a = [[]]; for i in 0..200 { a[0].push(i); } 0",
        "let a = [[]]; for i in 0..200 { a[0] += [i]; } 0",
        "let m = #{a: []}; for i in 0..200 { m.a.push(i); } 0",
        "let a = []; let f = |x| a.push(x); for i in 0..200 { f.call(i); } 0",
        "fn grow() { for i in 0..200 { this.push(i); } } let a = []; a.grow(); 0",
        r#"let s = ""; s.pad(300, ','); let a = s.split(","); 0"#,
        r#"let s = ""; s.pad(300, 'x'); let a = s.to_chars(); 0"#,
        "let b = blob(); for i in 0..200 { b.push(i); } 0",
        "let b = blob(200); 0",
        "let b = blob(); for i in 0..200 { b += 1; } 0",
    ] {
        let _ = t.exec(cell, source);
    }
    let literal = format!("let a = [{}]; 0", vec!["0"; 101].join(", "));
    let r = cell.exec(&literal);
    t.line(format!(
        "exec <a 101-element array literal> -> {}",
        t.outcome(&r)
    ));
    t.note("maps: each growth path past 100 entries");
    for source in [
        r#"let m = #{}; for i in 0..200 { m["k" + i] = i; } 0"#,
        r#"let m = #{}; for i in 0..200 { m[`k${i}`] = [i]; } 0"#,
        r#"let m = #{inner: #{}}; for i in 0..200 { m.inner["k" + i] = i; } 0"#,
        r#"let m = #{inner: #{}}; for i in 0..200 { m["inner"]["k" + i] = i; } 0"#,
        r#"let a = [#{}]; for i in 0..200 { a[0]["k" + i] = i; } 0"#,
        r#"let m = #{}; let f = |i| m["k" + i] = i; for i in 0..200 { f.call(i); } 0"#,
        r#"let m = #{}; for i in 0..200 { let n = #{}; n["k" + i] = i; m += n; } 0"#,
        r#"let m = #{}; for i in 0..200 { let n = #{}; n["k" + i] = i; m.mixin(n); } 0"#,
        r#"let m = #{}; for i in 0..200 { let n = #{}; n["k" + i] = i; m.fill_with(n); } 0"#,
        r#"let m = #{}; for i in 0..200 { let n = #{}; n["k" + i] = i; m = m + n; } 0"#,
        r#"let j = "{"; for i in 0..101 { j += `"k${i}":1,`; } j += `"e":0}`; let m = parse_json(j); 0"#,
    ] {
        let _ = t.exec(cell, source);
    }
    let fields: String = (0..=100).map(|i| format!("m.f{i} = {i}; ")).collect();
    let r = cell.exec(&format!("let m = #{{}}; {fields}0"));
    t.line(format!(
        "exec <m.f0 = 0; ... m.f100 = 100> -> {}",
        t.outcome(&r)
    ));
    let literal = format!(
        "let m = #{{{}}}; 0",
        (0..=100)
            .map(|i| format!("f{i}: {i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let r = cell.exec(&literal);
    t.line(format!(
        "exec <a 101-entry map literal> -> {}",
        t.outcome(&r)
    ));
    t.note("each limit counts one collection: at the limit is fine, nesting is not summed");
    t.note("values nest at most 256 deep (`[]` is 1 deep): past it, limit_value");
    for source in [
        r#"let s = ""; s.pad(1000, 'x'); s.len()"#,
        "let a = []; for i in 0..100 { a.push(i); } a.len()",
        r#"let m = #{}; for i in 0..100 { m["k" + i] = i; } m.len()"#,
        r#"let p = ""; p.pad(900, '-'); let a = []; for i in 0..50 { a.push(p); } a.len()"#,
        "let a = []; for i in 0..50 { a.push([]); a[i].pad(100, i); } a.len()",
        r#"let m = #{}; for i in 0..20 { let n = #{}; m["k" + i] = n; for j in 0..100 { m["k" + i]["j" + j] = j; } } m.len()"#,
        "let a = []; for i in 1..256 { a = [a]; } a.to_string().len()",
        "let a = []; for i in 0..300 { a = [a]; } 0",
        "let a = []; for i in 0..300 { let b = []; b.push(a); a = b; } 0",
        "let m = #{}; for i in 0..300 { let n = #{}; n.x = m; m = n; } 0",
        r#""limits hold per mutation: still usable""#,
    ] {
        let _ = t.exec(cell, source);
    }
    t.drain(cell);
}

/// No operation limit and a minute of wall time: only the limit under test stops a loop.
pub(crate) fn unlimited_ops() -> Setup {
    let mut p = Setup::default();
    p.limits.max_operations = 0;
    p.wall_time = Some(Duration::from_secs(60));
    p
}

/// A cell spinning in `loop {}` is killed from another thread; the supervisor and later calls
/// see a dead cell, and events sent before the kill are still delivered.
fn kill_running_cell(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    // The kill is the front end's own act, worded its own way (the driver's `kill` names the
    // cell, the service's `DELETE` forgets it): what follows from it is compared by code.
    t.code_only(ErrorCode::Cancelled);
    t.code_only(ErrorCode::CellClosed);
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
            Err(e) => format!("err {}", t.error(e)),
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

/// A script that posts and spins until a limit stops it (the wall time here, CPU time in
/// `limit_cpu`): the limit's error, the cell gone after it, the post still delivered.
pub(crate) fn spin_past_limit(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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
fn event_queue_bound(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
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
fn frame_size_cap(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        "let s = \"\"; for i in 0..2000 { s += \"x\"; } post(s)",
    );
    let _ = t.exec(cell, "let r = (); try { let s = \"\"; for i in 0..2000 { s += \"y\"; } post(s) } catch (e) { r = e.name } r");
    let _ = t.exec(cell, "let b = blob(5000); b");
    let _ = t.exec(cell, "post(\"small is fine\")");
    t.drain(cell);
}

fn close_cell(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(cell, "post(\"bye\")");
    cell.close();
    t.line("close");
    let _ = t.exec(cell, "1");
    let _ = t.call(cell, "f", vec![], Map::new());
    t.drain(cell);
}

/// Variables and functions stay in one cell and never leak into another.
fn state_is_per_cell(cell: &Cell, t: &mut Transcript, h: &dyn Target) {
    let _ = t.exec(cell, "let secret = 42; fn peek() { 7 }");
    let _ = t.exec(cell, "secret + peek()");
    t.note("a second cell of the same backend");
    t.line(format!(
        "other cell: {}",
        crate::harness::in_fresh_cell(h, "secret")
    ));
    t.line(format!(
        "other cell: {}",
        crate::harness::in_fresh_cell(h, "peek()")
    ));
    t.drain(cell);
}

/// An interrupt ends the running exec (or call) with `cancelled`, in the host's words, and the
/// cell lives on with its state; one sent while nothing runs ends nothing, not even the next
/// exec.
fn interrupt(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        "let kept = 42; fn spin() { post(\"spinning\"); loop {} }",
    );
    for how in ["exec", "call"] {
        let runner = cell.clone();
        let spinning = std::thread::spawn(move || match how {
            "exec" => runner.exec("post(\"spinning\"); loop {}"),
            _ => runner.call("spin", vec![], Map::new()),
        });
        // Wait until the guest is provably inside the loop: its post has arrived.
        t.recv(cell);
        let interrupted = cell.interrupt();
        if !interrupted {
            // Nothing else would end the loop before the wall time: the transcript fails.
            cell.kill();
        }
        t.line(format!("interrupt -> {interrupted}"));
        let result = spinning.join().expect("exec thread panicked");
        t.line(format!(
            "{how} (spinning, interrupted) -> {}",
            t.outcome(&result)
        ));
        let _ = t.exec(cell, "kept");
    }
    t.line(format!("interrupt (idle) -> {}", cell.interrupt()));
    let _ = t.exec(cell, "kept + 1");
    t.drain(cell);
}
