//! Broker scenarios: granted, denied and out-of-scope requests, through the same seven
//! operations on every backend. The broker decides on the host, so every backend must produce
//! the same transcript; error messages a script catches are recorded too, since they name the
//! capability and the rule that decided.

use crate::Setup;
use crate::Transcript;
use crate::scenarios::Scenario;
use crate::target::{Cell, Target};
use std::path::PathBuf;

/// Scenarios for capability requests through the broker: granted, denied, out of scope.
pub static BROKER_SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "broker_granted",
        setup: granted_policy,
        run: broker_granted,
    },
    Scenario {
        name: "broker_denied",
        setup: denied_policy,
        run: broker_denied,
    },
    Scenario {
        name: "broker_out_of_scope",
        setup: out_of_scope_policy,
        run: broker_out_of_scope,
    },
];

/// A directory on the host holding `hello.txt` ("hello") and `private/key` ("k"); the same
/// contents for every backend and run.
fn fixture() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cell-conformance-broker-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("private")).expect("create the fs fixture");
    // Scenarios run in parallel: replace files atomically, so a reader never sees one half
    // written.
    for (path, content) in [("hello.txt", "hello"), ("private/key", "k")] {
        // Outside the fixture, so a concurrent `list` never sees it.
        let tmp = dir.with_extension(format!("{:?}.tmp", std::thread::current().id()));
        std::fs::write(&tmp, content).expect("write the fs fixture");
        std::fs::rename(&tmp, dir.join(path)).expect("write the fs fixture");
    }
    dir
}

fn policy(rules: &str) -> Setup {
    let root = fixture();
    let text = rules.replace("$ROOT", root.to_str().expect("utf-8 temp dir"));
    Setup::default().with_rules_toml(&text)
}

/// Defines `root()` in the cell, untranscribed: the fixture's path differs between hosts, the
/// transcript must not (it reads `$ROOT` where a message names it).
fn define_root(cell: &Cell, t: &mut Transcript) {
    let root = fixture();
    t.redact(root.to_str().expect("utf-8"), "$ROOT");
    cell.exec(&format!(
        "fn root() {{ {:?} }}",
        root.to_str().expect("utf-8")
    ))
    .expect("define root()");
}

/// Runs `source` inside `try` and returns the caught error's `name: message`, or the value.
fn caught(t: &mut Transcript, cell: &Cell, request: &str) {
    let _ = t.exec(
        cell,
        &format!("let r = (); try {{ r = {request}; }} catch (e) {{ r = `${{e.name}}: ${{e.message}}`; }} r"),
    );
}

fn granted_policy() -> Setup {
    policy(
        r#"
        [[grants]]
        capability = "clock"
        actions = ["wall", "monotonic"]
        [[grants]]
        capability = "random"
        actions = ["*"]
        [[grants]]
        capability = "fs"
        actions = ["read", "list", "stat"]
        roots = ["$ROOT"]
        "#,
    )
}

fn broker_granted(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    define_root(cell, t);
    let _ = t.exec(cell, r#"type_of(request("clock", "wall"))"#);
    let _ = t.exec(
        cell,
        r#"let a = request("clock", "monotonic"); let b = request("clock", "monotonic"); b >= a"#,
    );
    let _ = t.exec(cell, r#"request("random", "bytes", #{len: 16}).len()"#);
    let _ = t.exec(cell, r#"request("random", "int", #{min: 7, max: 7})"#);
    let _ = t.exec(
        cell,
        r#"request("fs", "read", #{root: root(), path: "hello.txt"})"#,
    );
    let _ = t.exec(cell, r#"request("fs", "list", #{root: root()})"#);
    let _ = t.exec(
        cell,
        r#"let s = request("fs", "stat", #{root: root(), path: "hello.txt"}); [s.type, s.size]"#,
    );
    let _ = t.exec(
        cell,
        r#"fn read_hello() { request("fs", "read", #{root: root(), path: "hello.txt"}).len() }"#,
    );
    let _ = t.call(cell, "read_hello", vec![], Default::default());
}

fn denied_policy() -> Setup {
    policy(
        r#"
        [[grants]]
        capability = "clock"
        actions = ["wall"]
        [[grants]]
        capability = "fs"
        actions = ["read"]
        roots = ["$ROOT"]
        [[denies]]
        capability = "fs"
        actions = ["*"]
        roots = ["$ROOT/private"]
        [[denies]]
        capability = "clock"
        actions = ["wall"]
        "#,
    )
}

fn broker_denied(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    define_root(cell, t);
    // Not granted: default-deny.
    let _ = t.exec(
        cell,
        r#"request("http", "get", #{url: "http://127.0.0.1:9/"})"#,
    );
    caught(t, cell, r#"request("secret", "read", #{name: "token"})"#);
    caught(t, cell, r#"request("nosuch", "act")"#);
    // A deny wins over a grant of the same action.
    caught(t, cell, r#"request("clock", "wall")"#);
    // A deny on a subtree wins however the path names it.
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "private/key"})"#,
    );
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "./private/../private/key"})"#,
    );
    // The rest of the grant still works, and so does the cell.
    let _ = t.exec(
        cell,
        r#"request("fs", "read", #{root: root(), path: "hello.txt"}).len()"#,
    );
    let _ = t.exec(cell, "\"still usable\"");
}

fn out_of_scope_policy() -> Setup {
    policy(
        r#"
        [[grants]]
        capability = "clock"
        actions = ["wall"]
        [[grants]]
        capability = "fs"
        actions = ["read"]
        roots = ["$ROOT/private"]
        max_bytes = 4
        [[grants]]
        capability = "fs"
        actions = ["read"]
        roots = ["$ROOT"]
        max_bytes = 4
        [[grants]]
        capability = "random"
        actions = ["int"]
        quota = { requests = 1 }
        "#,
    )
}

fn broker_out_of_scope(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    define_root(cell, t);
    // An action the grant does not name.
    caught(t, cell, r#"request("clock", "monotonic")"#);
    // Paths that leave the root, refused by the kernel's resolution beneath it.
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "../../../../etc/passwd"})"#,
    );
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "/etc/passwd"})"#,
    );
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: "/etc", path: "passwd"})"#,
    );
    // A write under a read-only grant.
    caught(
        t,
        cell,
        r#"request("fs", "write", #{root: root(), path: "x", data: "y"})"#,
    );
    // The grant's size cap (4 bytes) and rate quota (1 request).
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "hello.txt"})"#,
    );
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "private/key"})"#,
    );
    let _ = t.exec(cell, r#"request("random", "int", #{min: 1, max: 1})"#);
    caught(t, cell, r#"request("random", "int", #{min: 1, max: 1})"#);
    // A payload of the wrong shape.
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: 5})"#,
    );
    let _ = t.exec(cell, "\"still usable\"");
}
