//! The guest runtime against an in-memory transport: the script API, exec/call, limits,
//! out-of-model names, cancellation and the agent loop.

use abi::{CellError, EngineLimits, ErrorCode, GuestFrame, Hello, HostFrame, Level, Map, Value};
use cell_runtime::{Cell, Interrupt, NeverInterrupt, Transport, TransportError, agent};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Records what the guest sends; answers requests from a script of host frames.
#[derive(Clone, Default)]
struct Recorder {
    sent: Arc<Mutex<Vec<GuestFrame>>>,
    inbox: Arc<Mutex<VecDeque<HostFrame>>>,
}

impl Transport for Recorder {
    fn send(&mut self, frame: GuestFrame) -> Result<(), TransportError> {
        if let GuestFrame::Request { id, capability, .. } = &frame {
            let result = if capability == "echo" {
                Ok(Value::Str("granted".into()))
            } else {
                Err(CellError::new(
                    ErrorCode::Denied,
                    format!("capability {capability} not granted"),
                ))
            };
            self.inbox
                .lock()
                .unwrap()
                .push_front(HostFrame::Reply { id: *id, result });
        }
        self.sent.lock().unwrap().push(frame);
        Ok(())
    }
    fn recv(&mut self) -> Result<HostFrame, TransportError> {
        self.inbox
            .lock()
            .unwrap()
            .pop_front()
            .ok_or(TransportError::Closed)
    }
}

impl Recorder {
    fn take(&self) -> Vec<GuestFrame> {
        std::mem::take(&mut self.sent.lock().unwrap())
    }
}

fn hello(modules: &[&str]) -> Hello {
    Hello::new(
        "test",
        EngineLimits::default(),
        modules.iter().map(|m| m.to_string()).collect(),
    )
}

fn cell_with(limits: EngineLimits, modules: &[&str]) -> (Cell, Recorder) {
    let rec = Recorder::default();
    let mut h = hello(modules);
    h.limits = limits;
    (
        Cell::new(&h, Box::new(rec.clone()), Arc::new(NeverInterrupt)).unwrap(),
        rec,
    )
}

fn cell() -> (Cell, Recorder) {
    cell_with(EngineLimits::default(), &["math", "text", "json"])
}

#[test]
fn guest_operations_reach_the_transport() {
    let (mut c, rec) = cell();
    let v = c
        .exec(r#"post(40 + 2); log("warn", "careful", #{n: 1}); metric("x", 1.5, #{k: "v"}); request("echo", "go", [1])"#)
        .unwrap();
    assert_eq!(v, Value::Str("granted".into()));
    let sent = rec.take();
    assert_eq!(sent[0], GuestFrame::Post(Value::Int(42)));
    let GuestFrame::Log {
        level,
        message,
        fields,
    } = &sent[1]
    else {
        panic!("{sent:?}")
    };
    assert_eq!(
        (*level, message.as_str(), fields.get("n")),
        (Level::Warn, "careful", Some(&Value::Int(1)))
    );
    let GuestFrame::Metric { name, value, tags } = &sent[2] else {
        panic!("{sent:?}")
    };
    assert_eq!((name.as_str(), *value, tags["k"].as_str()), ("x", 1.5, "v"));
    assert!(
        matches!(&sent[3], GuestFrame::Request { capability, action, payload, .. }
        if capability == "echo" && action == "go" && *payload == Value::List(vec![Value::Int(1)]))
    );
}

#[test]
fn a_thrown_value_is_the_scripts_own_error_whatever_code_it_names() {
    let (mut c, _) = cell();
    for src in [
        r#"throw #{code: 42, message: "forged crash"}"#,
        r#"throw #{code: 31, name: "timed_out", message: "forged"}"#,
        r#"throw #{code: 5, message: "forged denial"}"#,
        "throw 60",
        r#"throw "plain""#,
        // A caught host error, altered into a map first, is a plain value too.
        r#"let m = (); try { request("fs", "read", ()) } catch (e) { m = #{code: 42, message: e.message} } throw m"#,
    ] {
        let err = c.exec(src).unwrap_err();
        assert_eq!(err.code, ErrorCode::Runtime, "{src}: {err}");
        assert!(err.message.starts_with("Runtime error: "), "{err}");
    }
    let err = c.exec(r#"throw #{code: 42, message: "x"}"#).unwrap_err();
    assert!(
        err.message.contains("42"),
        "the value is kept as data: {err}"
    );
    // A caught host error may be thrown on unchanged, and crosses as a map when posted.
    let err = c
        .exec(r#"try { request("fs", "read", ()) } catch (e) { throw e }"#)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    let caught = c
        .exec(r#"let r = (); try { request("fs", "read", ()) } catch (e) { r = e } r"#)
        .unwrap();
    let Value::Map(m) = caught else {
        panic!("{caught:?}")
    };
    assert_eq!(m["code"], Value::Int(ErrorCode::Denied.as_u16().into()));
    assert_eq!(m["name"], Value::Str("denied".into()));
}

#[test]
fn denied_requests_raise_a_catchable_typed_error() {
    let (mut c, _) = cell();
    let err = c
        .exec(r#"request("fs", "read", "/etc/passwd")"#)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("fs"));
    let caught = c
        .exec(r#"let r = (); try { request("fs", "read", ()) } catch (e) { r = e.name } r"#)
        .unwrap();
    assert_eq!(caught, Value::Str("denied".into()));
    // The code survives a function boundary.
    c.exec(r#"fn sneaky() { request("net", "get", ()) }"#)
        .unwrap();
    assert_eq!(
        c.call("sneaky", vec![], Map::new()).unwrap_err().code,
        ErrorCode::Denied
    );
}

#[test]
fn functions_and_variables_persist_across_execs() {
    let (mut c, _) = cell();
    c.exec("fn add(a, b) { a + b } let base = 10;").unwrap();
    assert_eq!(c.exec("add(base, 5)").unwrap(), Value::Int(15));
    assert_eq!(
        c.call("add", vec![Value::Int(1), Value::Int(2)], Map::new())
            .unwrap(),
        Value::Int(3)
    );
    assert_eq!(
        c.call("main.add", vec![Value::Int(1), Value::Int(2)], Map::new())
            .unwrap(),
        Value::Int(3)
    );
    c.exec("fn add(a, b) { a * b }").unwrap();
    assert_eq!(
        c.call("add", vec![Value::Int(3), Value::Int(4)], Map::new())
            .unwrap(),
        Value::Int(12)
    );
}

#[test]
fn kwargs_arrive_as_a_trailing_map() {
    let (mut c, _) = cell();
    c.exec("fn greet(name, opts) { opts.greeting + \", \" + name }")
        .unwrap();
    let mut kw = Map::new();
    kw.insert("greeting".into(), Value::Str("hi".into()));
    assert_eq!(
        c.call("greet", vec![Value::Str("ann".into())], kw).unwrap(),
        Value::Str("hi, ann".into())
    );
}

#[test]
fn host_modules_only_when_allowed() {
    let (mut c, _) = cell_with(EngineLimits::default(), &["math"]);
    assert_eq!(
        c.call("math.sqrt", vec![Value::Float(9.0)], Map::new())
            .unwrap(),
        Value::Float(3.0)
    );
    assert_eq!(
        c.exec("import \"math\" as m; m::clamp(15, 0, 10)").unwrap(),
        Value::Int(10)
    );
    assert_eq!(c.exec("math::sum([1, 2.5])").unwrap(), Value::Float(3.5));
    let err = c.exec("import \"text\" as t; t::upper(\"x\")").unwrap_err();
    assert_eq!(err.code, ErrorCode::OutOfModel);
    assert!(err.message.contains("not allowed"), "{}", err.message);
    assert_eq!(
        c.call("text.upper", vec![Value::Str("x".into())], Map::new())
            .unwrap_err()
            .code,
        ErrorCode::OutOfModel
    );
    let err = c.call("math.nope", vec![], Map::new()).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    // No position: the call expression is the cell's, not the caller's.
    assert!(!err.message.contains("line"), "{}", err.message);
    for keyword in ["if", "fn", "match", "this"] {
        let err = c
            .call(&format!("math.{keyword}"), vec![], Map::new())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{keyword}: {err:?}");
    }
    assert_eq!(
        c.call("math.sqrt(1)); evil(", vec![], Map::new())
            .unwrap_err()
            .code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn json_and_text_modules_work() {
    let (mut c, _) = cell();
    assert_eq!(
        c.exec(r#"json::encode(#{a: [1, 2.5, ()], b: "x"})"#)
            .unwrap(),
        Value::Str(r#"{"a":[1,2.5,null],"b":"x"}"#.into())
    );
    assert_eq!(
        c.exec(r#"json::decode("{\"k\": [true, 3]}").k[1]"#)
            .unwrap(),
        Value::Int(3)
    );
    assert_eq!(
        c.exec(r#"json::decode("{bad")"#).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        c.exec(r#"text::join(text::words(" a  b "), "-")"#).unwrap(),
        Value::Str("a-b".into())
    );
}

#[test]
fn out_of_model_names_fail_with_a_hint() {
    let (mut c, _) = cell();
    for src in [
        "print(1)",
        "debug(1)",
        "eval(\"1\")",
        "timestamp()",
        "sleep(1)",
    ] {
        let err = c.exec(src).expect_err(src);
        assert_eq!(err.code, ErrorCode::OutOfModel, "{src}: {err}");
        assert!(
            err.message.contains("out of model"),
            "{src}: {}",
            err.message
        );
    }
    assert!(c.exec("print(1)").unwrap_err().message.contains("post"));
}

#[test]
fn errors_are_typed_and_the_cell_stays_usable() {
    let (mut c, _) = cell();
    assert_eq!(c.exec("let x = ;").unwrap_err().code, ErrorCode::Syntax);
    assert_eq!(
        c.exec("throw \"boom\"").unwrap_err().code,
        ErrorCode::Runtime
    );
    assert_eq!(
        c.exec("no_such_fn(1)").unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.call("missing", vec![], Map::new()).unwrap_err().code,
        ErrorCode::NotFound
    );
    // A call with the wrong number of arguments says what the cell's function takes.
    c.exec("fn add(a, b) { a + b } fn one(x) { x } fn many() { 0 } fn many(a, b, c) { a }")
        .unwrap();
    for (name, given, says) in [
        (
            "add",
            1,
            "Function not found: add with 1 argument: the cell's `add` takes 2 arguments",
        ),
        (
            "one",
            0,
            "Function not found: one with 0 arguments: the cell's `one` takes 1 argument",
        ),
        ("many", 2, "the cell's `many` takes 0 or 3 arguments"),
        ("main.add", 3, "the cell's `add` takes 2 arguments"),
    ] {
        let args = (0..given).map(Value::Int).collect();
        let err = c.call(name, args, Map::new()).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{err}");
        assert!(err.message.contains(says), "{name}: {}", err.message);
    }
    // A function of the right arity that fails inside keeps its own error.
    c.exec("fn inner(a) { no_such_fn(a) }").unwrap();
    let err = c
        .call("inner", vec![Value::Int(1)], Map::new())
        .unwrap_err();
    assert!(err.message.contains("no_such_fn"), "{}", err.message);
    assert!(!err.message.contains("takes"), "{}", err.message);
    // A call that matches no function names its arguments' types as a script knows them, also
    // inside a function of the script's.
    for source in [
        "no_such_fn(\"a\", 1)",
        "fn f(s) { no_such_fn(s, 1) } f(\"a\")",
    ] {
        let err = c.exec(source).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(
            err.message.contains("no_such_fn (string, i64)"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("ImmutableString"), "{}", err.message);
    }
    // A script's own text is never rewritten, even one that reads like the engine's.
    let thrown = "&str | ImmutableString | String";
    let err = c.exec(&format!("throw \"{thrown}\"")).unwrap_err();
    assert!(err.message.contains(thrown), "{}", err.message);
    assert_eq!(
        c.exec("log(\"loud\", \"x\")").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        c.exec("metric(\"m\", \"NaN\")").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        c.exec("post(Fn(\"f\"))").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(c.exec("1 + 1").unwrap(), Value::Int(2));
}

#[test]
fn engine_limits_apply() {
    let limits = EngineLimits {
        max_operations: 10_000,
        max_string_len: 100,
        max_array_len: 10,
        max_map_len: 10,
        max_call_depth: 8,
        max_expr_depth: 16,
    };
    let (mut c, _) = cell_with(limits, &[]);
    assert_eq!(
        c.exec("loop {}").unwrap_err().code,
        ErrorCode::LimitOperations
    );
    assert_eq!(
        c.exec("let s = \"x\"; for i in 0..10 { s += s; }")
            .unwrap_err()
            .code,
        ErrorCode::LimitStringSize
    );
    assert_eq!(
        c.exec("let a = []; for i in 0..20 { a.push(i); }")
            .unwrap_err()
            .code,
        ErrorCode::LimitArraySize
    );
    assert_eq!(
        c.exec("fn r(n) { r(n + 1) } r(0)").unwrap_err().code,
        ErrorCode::LimitCallDepth
    );
    let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    assert_eq!(c.exec(&deep).unwrap_err().code, ErrorCode::LimitExprDepth);
    assert_eq!(c.exec("40 + 2").unwrap(), Value::Int(42));
}

#[test]
fn each_collection_limit_counts_one_collection_and_every_growth_path_is_checked() {
    let limits = EngineLimits {
        max_string_len: 100,
        max_array_len: 10,
        max_map_len: 10,
        ..EngineLimits::default()
    };
    let (mut c, _) = cell_with(limits, &[]);
    for (src, code) in [
        // A map grown by assignment (index or property) is held to its limit.
        (
            r#"let m = #{}; for i in 0..20 { m["k" + i] = i; } 0"#,
            ErrorCode::LimitMapSize,
        ),
        (
            "let m = #{}; m.a = 1; m.b = 2; m.c = 3; m.d = 4; m.e = 5; m.f = 6; m.g = 7; m.h = 8; m.i = 9; m.j = 10; m.k = 11; 0",
            ErrorCode::LimitMapSize,
        ),
        // `array += array` is checked after appending.
        (
            "let a = []; a += [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]; 0",
            ErrorCode::LimitArraySize,
        ),
        // A string grown through one of its characters.
        (
            r#"let s = ""; s.pad(100, 'a'); s[0] = '😀'; 0"#,
            ErrorCode::LimitStringSize,
        ),
        // A literal past a limit gives that limit's code.
        (
            "let a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]; 0",
            ErrorCode::LimitArraySize,
        ),
    ] {
        assert_eq!(c.exec(src).unwrap_err().code, code, "{src}");
    }
    for (src, value) in [
        // Limits count one collection: the strings and arrays inside are not summed.
        (
            r#"let p = ""; p.pad(90, '-'); let a = []; for i in 0..10 { a.push(p); } a.len()"#,
            10,
        ),
        (
            "let a = []; for i in 0..10 { a.push([]); a[i].pad(10, i); } a.len()",
            10,
        ),
        // A literal of exactly the limit is fine.
        ("let a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]; a.len()", 10),
    ] {
        assert_eq!(c.exec(src).unwrap(), Value::Int(value), "{src}");
    }
}

/// A value nested as deep as scripts may nest one is printed, copied and dropped on
/// the stack every backend gives the engine; one level deeper is a `limit_value` error, however
/// it is nested.
#[test]
fn values_nest_up_to_the_bound_and_no_deeper() {
    use cell_runtime::limits::{ENGINE_STACK_BYTES, MAX_VALUE_NESTING};
    let n = MAX_VALUE_NESTING;
    let run = move || {
        let (mut c, _) = cell_with(EngineLimits::default(), &[]);
        let build = format!("let a = []; for i in 1..{n} {{ a = [a]; }} ");
        let len = c
            .exec(&format!(
                "{build} let b = a; let s = b.to_string(); s.len()"
            ))
            .unwrap();
        assert_eq!(len, Value::Int(2 * n as i64), "[[...]] at the bound");
        for src in [
            format!("{build} a = [a]; 0"),
            format!("{build} let b = []; b.push(a); 0"),
            format!("{build} let b = [0]; b[0] = a; 0"),
            format!("{build} let m = #{{}}; m.x = a; m.y = [a]; 0"),
            format!("{build} let m = #{{x: a}}; 0"),
            format!("{build} let b = [1]; b.insert(0, a); 0"),
            format!("{build} fn wrap(x) {{ [x] }} wrap(a); 0"),
            format!("{build} [1].map(|x| a).map(|x| [x]); 0"),
        ] {
            let Err(e) = c.exec(&src) else {
                panic!("{src}: no error")
            };
            assert_eq!(e.code, ErrorCode::LimitValue, "{src}: {e}");
        }
    };
    // Tests build without optimisation, so frames are larger here than in the guests.
    std::thread::Builder::new()
        .stack_size(ENGINE_STACK_BYTES)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
}

struct Flag(AtomicBool);
impl Interrupt for Flag {
    fn check(&self, _: u64) -> Option<ErrorCode> {
        self.0
            .load(Ordering::Relaxed)
            .then_some(ErrorCode::Cancelled)
    }
}

#[test]
fn interrupt_stops_a_spinning_script() {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let limits = EngineLimits {
        max_operations: 0,
        ..EngineLimits::default()
    };
    let mut h = hello(&[]);
    h.limits = limits;
    let mut c = Cell::new(&h, Box::new(Recorder::default()), flag.clone()).unwrap();
    let f = flag.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        f.0.store(true, Ordering::Relaxed);
    });
    assert_eq!(c.exec("loop {}").unwrap_err().code, ErrorCode::Cancelled);
    t.join().unwrap();
}

/// A stop reaches a parse too, and the exec answers with it: the parser runs no operations, so
/// on subinterp (whose host can only ask the engine to stop) a slow parse ran on past the wall
/// time and a kill. A script whose parse fails would otherwise answer with its syntax error.
#[test]
fn a_stop_reaches_the_parser() {
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let mut c = Cell::new(&hello(&[]), Box::new(Recorder::default()), flag.clone()).unwrap();
    let err = c.exec("let x = 1; x +").unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
    flag.0.store(false, Ordering::Relaxed);
    let err = c.exec("let x = 1; x +").unwrap_err();
    assert_eq!(err.code, ErrorCode::Syntax, "{err}");
    assert_eq!(c.exec("40 + 2"), Ok(Value::Int(42)));
}

/// Limits of 50,000 operations per transaction, the rest the defaults.
fn fifty_thousand_operations() -> EngineLimits {
    EngineLimits {
        max_operations: 50_000,
        ..EngineLimits::default()
    }
}

/// Operations run inside callbacks of native functions (`map`, `sort`, ...) count against
/// `max_operations` like any others; the engine's own count lost them when the callback
/// returned, so a script could loop without bound inside `map`.
#[test]
fn operations_inside_callbacks_count() {
    let (mut c, _) = cell_with(fifty_thousand_operations(), &[]);
    // 100 callbacks of about 3,000 operations each: 300,000 in all.
    let err = c
        .exec("let a = []; a.pad(100, 0); a.map(|x| { let k = 0; while k < 1000 { k += 1; } k }).len()")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitOperations, "{err}");
    // The same work under the limit in one callback still runs.
    let ok = c.exec("[1].map(|x| { let k = 0; while k < 1000 { k += 1; } k })[0]");
    assert_eq!(ok, Ok(Value::Int(1000)));
}

/// A stop inside a callback whose error the native function discards (`sort`, `dedup`) is
/// still the transaction's answer: the script cannot turn a limit or a kill into a success.
#[test]
fn a_stop_a_native_function_discards_is_still_the_answer() {
    let (mut c, _) = cell_with(fifty_thousand_operations(), &[]);
    for src in [
        "let a = [3, 1, 2]; a.sort(|x, y| { loop {} }); \"sorted\"",
        "let a = [1, 1, 2]; a.dedup(|x, y| { loop {} }); a.len()",
    ] {
        let err = c.exec(src).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitOperations, "{src}: {err}");
        assert!(
            err.message.starts_with("Too many operations"),
            "{src}: {err}"
        );
    }
    assert_eq!(
        c.exec("\"still usable\""),
        Ok(Value::Str("still usable".into()))
    );

    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let mut h = hello(&[]);
    h.limits.max_operations = 0;
    let mut c = Cell::new(&h, Box::new(Recorder::default()), flag).unwrap();
    let err = c
        .exec("let a = []; a.pad(100, 0); a.sort(|x, y| { loop {} }); \"sorted\"")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
}

#[test]
fn version_mismatch_is_refused() {
    let mut h = hello(&[]);
    h.abi_version = 99;
    let err = Cell::new(&h, Box::new(Recorder::default()), Arc::new(NeverInterrupt))
        .err()
        .unwrap();
    assert_eq!(err.code, ErrorCode::VersionMismatch);
    assert!(err.message.contains("99"));
}

#[test]
fn agent_loop_handshakes_serves_and_shuts_down() {
    let rec = Recorder::default();
    rec.inbox.lock().unwrap().extend([
        HostFrame::Hello(hello(&[])),
        HostFrame::Exec {
            id: 1,
            source: "fn f(x) { post(x); x * 2 }".into(),
        },
        HostFrame::Call {
            id: 2,
            function: "f".into(),
            args: vec![Value::Int(21)],
            kwargs: Map::new(),
        },
        HostFrame::Shutdown,
    ]);
    agent::serve(Box::new(rec.clone()), Arc::new(NeverInterrupt)).unwrap();
    let sent = rec.take();
    assert!(matches!(&sent[0], GuestFrame::Ready(r) if r.engine == "rhai"));
    assert_eq!(
        sent[1],
        GuestFrame::Done {
            id: 1,
            result: Ok(Value::Unit)
        }
    );
    assert_eq!(sent[2], GuestFrame::Post(Value::Int(21)));
    assert_eq!(
        sent[3],
        GuestFrame::Done {
            id: 2,
            result: Ok(Value::Int(42))
        }
    );
}

#[test]
fn agent_refuses_a_bad_handshake() {
    let rec = Recorder::default();
    rec.inbox.lock().unwrap().push_back(HostFrame::Exec {
        id: 1,
        source: "1".into(),
    });
    let err = agent::serve(Box::new(rec.clone()), Arc::new(NeverInterrupt)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    assert!(
        matches!(&rec.take()[0], GuestFrame::Refused(e) if e.code == ErrorCode::ProtocolViolation)
    );
}

#[test]
fn a_repeated_source_sees_the_cells_current_state() {
    // Repeated text runs from the compile cache; it must read the state as it is now,
    // not constants or functions as they were when the text was first compiled.
    let (mut c, _) = cell();
    c.exec("const K = 1; fn f() { 10 }").unwrap();
    assert_eq!(c.exec("K + f()").unwrap(), Value::Int(11));
    c.exec("const K = 5; fn f() { 20 }").unwrap();
    assert_eq!(c.exec("K + f()").unwrap(), Value::Int(25));
    c.exec("let n = 0;").unwrap();
    for expected in 1..=3 {
        assert_eq!(c.exec("n += 1; n").unwrap(), Value::Int(expected));
    }
    let err = c.exec("let = ;").unwrap_err();
    assert_eq!(err.code, c.exec("let = ;").unwrap_err().code);
}
