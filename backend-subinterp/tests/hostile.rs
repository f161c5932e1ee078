//! Hostile scripts against subinterp cells: none may harm the host (this test process), and
//! each ends in the limit error every backend gives for it.

mod common;

use abi::{EngineLimits, ErrorCode, Value};
use common::{cell, spawn};
use runtime::limits::{MAX_CALL_DEPTH, MAX_EXPR_DEPTH};

fn code(r: Result<abi::Value, abi::CellError>) -> ErrorCode {
    r.expect_err("a hostile script cannot succeed").code
}

fn deepest() -> EngineLimits {
    EngineLimits {
        max_call_depth: MAX_CALL_DEPTH,
        max_expr_depth: MAX_EXPR_DEPTH,
        max_operations: 0,
        ..EngineLimits::default()
    }
}

#[test]
fn deep_recursion_is_a_call_depth_error_and_the_cell_lives() {
    let mut c = spawn(deepest(), Default::default());
    let e = code(c.exec("fn f(n) { if n == 0 { 0 } else { 1 + f(n - 1) } } f(100000)"));
    assert_eq!(e, ErrorCode::LimitCallDepth);
    // Mutual recursion, and recursion whose every level nests expressions: the stack budget
    // stops what the call-depth limit alone would let overflow.
    let e = code(c.exec("fn a(n) { b(n) } fn b(n) { a(n) } a(1)"));
    assert_eq!(e, ErrorCode::LimitCallDepth);
    let nested = format!("{}f(n - 1){}", "(1 + ".repeat(100), ")".repeat(100));
    let src = format!("fn f(n) {{ if n == 0 {{ 0 }} else {{ {nested} }} }} f(100000)");
    assert_eq!(code(c.exec(&src)), ErrorCode::LimitCallDepth);
    assert!(c.alive());
}

#[test]
fn recursion_within_the_bound_runs() {
    let mut c = spawn(deepest(), Default::default());
    let depth = MAX_CALL_DEPTH - 2;
    let src = format!("fn f(n) {{ if n == 0 {{ 0 }} else {{ f(n - 1) + 1 }} }} f({depth})");
    assert_eq!(c.exec(&src), Ok(abi::Value::Int(depth.into())));
}

#[test]
fn deeply_nested_source_is_an_expression_depth_error() {
    let mut c = spawn(deepest(), Default::default());
    let k = 20_000;
    for src in [
        format!("{}1{}", "(".repeat(k), ")".repeat(k)),
        format!("{}1{}", "[".repeat(k), "]".repeat(k)),
        format!("{}1{}", "{".repeat(k), "}".repeat(k)),
        format!("{}1{}", "#{a: ".repeat(k), "}".repeat(k)),
        format!("{}true", "!".repeat(k)),
        format!("let f = {}1; 0", "|| ".repeat(k)),
        format!("fn f(x) {{ x }} {}1{}", "f(".repeat(k), ")".repeat(k)),
        format!("{}1{}", "if true { ".repeat(k), " }".repeat(k)),
        vec!["1"; k].join(" + "),
    ] {
        let e = code(c.exec(&src));
        assert_eq!(e, ErrorCode::LimitExprDepth, "{}", &src[..40]);
    }
    assert!(c.alive());
}

#[test]
fn deep_values_built_at_run_time_end_in_a_limit_not_a_crash() {
    // The collection limits count one collection each, so depth has a bound of its own
    // (`MAX_VALUE_NESTING`); the engine's stack holds a value as deep as it allows.
    let limits = EngineLimits {
        max_array_len: 1_000,
        max_map_len: 1_000,
        ..EngineLimits::default()
    };
    let mut c = spawn(limits, Default::default());
    for src in [
        "let a = []; for i in 0..2000 { a = [a]; } 1",
        "let a = #{}; for i in 0..2000 { a = #{x: a}; } 1",
        "let a = []; for i in 0..2000 { let b = []; b.push(a); a = b; } 1",
        "let a = [0]; for i in 0..2000 { let b = [0]; b[0] = a; a = b; } 1",
        "let a = #{}; for i in 0..2000 { let b = #{}; b.x = a; a = b; } 1",
    ] {
        let e = code(c.exec(src));
        assert_eq!(e, ErrorCode::LimitValue, "{src}");
    }
    // Deep, but within the bound: it exists, prints and is dropped; it cannot cross.
    let src = "let a = []; for i in 1..256 { a = [a]; } a.to_string().len()";
    assert_eq!(c.exec(src), Ok(Value::Int(512)));
    let e = code(c.exec("let a = []; for i in 1..256 { a = [a]; } a"));
    assert_eq!(e, ErrorCode::LimitValue);
    assert!(c.alive());
}

#[test]
fn huge_strings_arrays_and_maps_are_size_errors() {
    let mut c = cell();
    for (src, want) in [
        (
            r#"let s = "x"; loop { s += s; }"#,
            ErrorCode::LimitStringSize,
        ),
        ("let a = [1]; loop { a += a; }", ErrorCode::LimitArraySize),
        (
            "let a = []; a.pad(1000000000, 0); 1",
            ErrorCode::LimitArraySize,
        ),
        (r#""x".pad(2000000000, "y")"#, ErrorCode::LimitStringSize),
    ] {
        assert_eq!(code(c.exec(src)), want, "{src}");
    }
    assert!(c.alive());
}
