//! Limits the host side enforces, in both directions, and the codes only the host may give.
//! The host words these errors itself, so the transcripts record the whole message, not just
//! the code (as for every error but the engine's own, see `transcript`): every backend must
//! produce them to the byte.

use crate::scenarios::{Scenario, spin_past_limit, unlimited_ops};
use crate::target::{Cell, Target};
use crate::{Setup, Transcript};
use abi::{Map, Value};
use host::Event;

/// Scenarios for the limits: frame caps, engine limits and resources, as every backend must enforce
/// them.
pub static LIMIT_SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "host_frame_limits",
        setup: small_frames_with_random,
        run: host_frame_limits,
    },
    Scenario {
        name: "deep_arguments",
        setup: Setup::default,
        run: deep_arguments,
    },
    Scenario {
        name: "forged_host_codes",
        setup: Setup::default,
        run: forged_host_codes,
    },
    Scenario {
        name: "unknown_module_refused",
        setup: Setup::default,
        run: unknown_module_refused,
    },
    Scenario {
        name: "limit_memory",
        setup: small_memory,
        run: limit_memory,
    },
    Scenario {
        name: "limit_cpu",
        setup: short_cpu_time,
        run: spin_past_limit,
    },
    Scenario {
        name: "event_queue_bytes",
        setup: few_queued_bytes,
        run: event_queue_bytes,
    },
];

fn small_memory() -> Setup {
    let mut s = unlimited_ops();
    s.resources.memory_bytes = 64 << 20;
    s
}

/// A script that keeps allocating is stopped at `memory_mib` with `limit_memory`, worded by the
/// host with the limit, and the cell is gone; what it posted before is still delivered.
fn limit_memory(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    // Bounded at four times the limit, so a backend that does not enforce it fails the
    // scenario (`ok 4096`) without taking the host's memory.
    t.note("64 KiB BLOBs kept in an array until the 64 MiB limit stops the script");
    let _ = t.exec(
        cell,
        "post(\"before\"); let a = []; for i in 0..4096 { a.push(blob(65536, 1)); } a.len()",
    );
    let _ = t.exec(cell, "1");
    t.drain(cell);
}

/// A script spinning past `cpu_time_ms` (300 ms) is stopped with `limit_cpu`, never
/// `timed_out` (the wall time is 200 times longer) or a crash, and the cell is gone.
fn short_cpu_time() -> Setup {
    let mut s = unlimited_ops();
    s.resources.cpu_time_ms = 300;
    s
}

fn few_queued_bytes() -> Setup {
    let mut s = Setup::default();
    s.channel.max_queued_bytes = 8 * 1024;
    s
}

/// The event queue's byte bound, with the event count far away: events that fit are
/// delivered; a flood of large posts stops the cell with `limit_event_queue`, the message
/// naming the bytes held, and what was accepted is still delivered.
fn event_queue_bytes(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(cell, "for i in 0..3 { post(blob(1000, i)) } 0");
    t.drain_shown(cell, blob_post);
    let _ = t.exec(cell, "for i in 0..100 { post(blob(1000, i)) } 0");
    t.drain_shown(cell, blob_post);
    let _ = t.exec(cell, "1");
}

/// A post of a BLOB as its length and first byte; anything else as it is.
fn blob_post(e: &Event) -> String {
    match e {
        Event::Post(Value::Bytes(b)) => {
            format!(
                "post <{} bytes of {}>",
                b.len(),
                b.first().copied().unwrap_or(0)
            )
        }
        other => format!("{other:?}"),
    }
}

fn small_frames_with_random() -> Setup {
    let mut s = Setup::default().with_rules_toml(
        r#"
        [[grants]]
        capability = "random"
        actions = ["bytes"]
        "#,
    );
    s.channel.max_frame_bytes = 1024;
    s
}

/// The frame cap holds for what the host sends (source, arguments, a broker reply) and what the
/// cell sends (posts, results); each excess is a typed error where it happens, and the cell lives.
fn host_frame_limits(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    t.note("host → cell: an exec's source and a call's arguments over the 1024-byte cap");
    let long = format!("let s = \"{}\"; 1", "x".repeat(2000));
    let r = cell.exec(&long);
    t.line(format!("exec <2000-byte source> -> {}", t.outcome(&r)));
    let _ = t.exec(cell, "fn echo(v) { v }");
    let r = cell.call("echo", vec![Value::Str("y".repeat(2000))], Map::new());
    t.line(format!(
        "call echo(<2000-byte string>) -> {}",
        t.outcome(&r)
    ));
    let mut kwargs = Map::new();
    kwargs.insert("k".into(), Value::Bytes(vec![7; 2000]));
    let r = cell.call("echo", vec![], kwargs);
    t.line(format!("call echo(k: <2000 bytes>) -> {}", t.outcome(&r)));
    t.note("host → cell: a broker reply over the cap fails the request, not the cell");
    let _ = t.exec(
        cell,
        r#"let r = (); try { request("random", "bytes", #{len: 2000}) } catch (e) { r = e.name } r"#,
    );
    let _ = t.exec(cell, r#"request("random", "bytes", #{len: 16}).len()"#);
    t.note("cell → host: a post and a result over the cap");
    let _ = t.exec(cell, "post(blob(2000, 1))");
    let _ = t.exec(cell, "blob(2000, 1)");
    let _ = t.call(cell, "echo", vec![Value::Str("fits".into())], Map::new());
    t.drain(cell);
}

/// A value nested `depth` lists deep around an integer.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Int(1), |v, _| Value::List(vec![v]))
}

/// Values nested past the ABI's depth are refused before they cross, in either direction.
fn deep_arguments(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let _ = t.exec(
        cell,
        "fn depth(v) { let d = 0; while type_of(v) == \"array\" { v = v[0]; d += 1; } d }",
    );
    for depth in [8, 63, 64, 65, 200] {
        let r = cell.call("depth", vec![nested(depth)], Map::new());
        t.line(format!(
            "call depth(<{depth} lists deep>) -> {}",
            t.outcome(&r)
        ));
    }
    let mut kwargs = Map::new();
    kwargs.insert("deep".into(), nested(100));
    let r = cell.call("depth", vec![], kwargs);
    t.line(format!(
        "call depth(deep: <100 lists deep>) -> {}",
        t.outcome(&r)
    ));
    t.note("cell → host: the script builds the same values");
    let _ = t.exec(
        cell,
        "let a = 1; for i in 0..63 { a = [a]; } post(a); depth(a)",
    );
    let _ = t.exec(cell, "let a = 1; for i in 0..100 { a = [a]; } post(a)");
    let _ = t.exec(cell, "let a = 1; for i in 0..100 { a = [a]; } a");
    let _ = t.exec(cell, "\"still usable\"");
    t.drain(cell);
}

/// A script may throw any value, including a map that looks like the host's error; what it
/// throws is its own failure (`runtime`, the value kept in the message), never a code such
/// as `cell_crashed` or `timed_out`, and the cell lives on.
fn forged_host_codes(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    for code in [6, 10, 20, 30, 31, 40, 41, 42, 43, 44, 60, 9999] {
        let _ = t.exec(cell, &format!("throw #{{code: {code}}}"));
        let _ = t.exec(
            cell,
            &format!("throw #{{code: {code}, message: \"forged\"}}"),
        );
    }
    let _ = t.exec(
        cell,
        "fn forge() { throw #{code: 42, name: \"cell_crashed\", message: \"forged\"} }",
    );
    let _ = t.call(cell, "forge", vec![], Map::new());
    let _ = t.exec(
        cell,
        "let r = (); try { forge() } catch (e) { r = [e.code, e.message] } r",
    );
    let _ = t.exec(cell, "\"still usable\"");
    t.drain(cell);
}

/// A module that no guest runtime provides is refused before a cell is spawned, on every
/// backend, with the same error.
fn unknown_module_refused(_cell: &Cell, t: &mut Transcript, h: &dyn Target) {
    for modules in [vec!["nosuch"], vec!["math", "fs"]] {
        let setup = Setup {
            modules: modules.iter().map(|m| m.to_string()).collect(),
            ..Setup::default()
        };
        let r = h.spawn("unknown-module", &setup).map(|cell| {
            cell.close();
            Value::Unit
        });
        t.line(format!("spawn modules={modules:?} -> {}", t.outcome(&r)));
    }
}
