//! Broker scenarios: granted, denied and out-of-scope requests, through the same seven
//! operations on every backend. The broker decides on the host, so every backend must produce
//! the same transcript; error messages a script catches are recorded too, since they name the
//! capability and the rule that decided.

use crate::Setup;
use crate::Transcript;
use crate::scenarios::Scenario;
use crate::target::{Cell, Target};
use std::path::PathBuf;
use std::time::Duration;

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
    Scenario {
        name: "broker_request_past_wall_time",
        setup: held_request_policy,
        run: broker_request_past_wall_time,
    },
];

/// A directory on the host holding `hello.txt` ("hello"), `private/key` ("k") and two
/// symlinks into `private`: `key-link` to the key, `private-link` to the directory; the same
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
    for (link, target) in [("key-link", "private/key"), ("private-link", "private")] {
        // Made once, never replaced: a symlink is created whole or not at all.
        match std::os::unix::fs::symlink(target, dir.join(link)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                panic!("link the fs fixture: {e}")
            }
            _ => {}
        }
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
    // ... and however a symlink inside the granted root reaches it.
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "key-link"})"#,
    );
    caught(
        t,
        cell,
        r#"request("fs", "read", #{root: root(), path: "private-link/key"})"#,
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

/// A loopback listener that accepts connections and never answers: an `http` request to it is
/// held until something ends it. One per process, alive as long as it.
fn silent_origin() -> String {
    static LISTENER: std::sync::OnceLock<std::net::TcpListener> = std::sync::OnceLock::new();
    let listener = LISTENER.get_or_init(|| {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener")
    });
    format!(
        "http://{}",
        listener.local_addr().expect("the listener's address")
    )
}

fn held_request_policy() -> Setup {
    let mut s = Setup::default().with_rules_toml(&format!(
        r#"
        [[grants]]
        capability = "http"
        actions = ["get"]
        origins = ["{}"]
        timeout_ms = 60000
        "#,
        silent_origin()
    ));
    s.limits.max_operations = 0;
    s.wall_time = Some(Duration::from_millis(500));
    s
}

/// The wall-time limit covers a broker request in flight: a request held by a server that
/// never answers (its grant allows a minute) ends the exec at the cell's 500 ms, `timed_out`
/// in the host's words, not when the grant's timeout passes; the cell is gone after it.
fn broker_request_past_wall_time(cell: &Cell, t: &mut Transcript, _h: &dyn Target) {
    let origin = silent_origin();
    t.redact(&origin, "$ORIGIN");
    cell.exec(&format!("fn origin() {{ {origin:?} }}"))
        .expect("define origin()");
    let _ = t.exec(
        cell,
        r#"post("asking"); request("http", "get", #{url: origin() + "/held"})"#,
    );
    let _ = t.exec(cell, "1");
    t.drain(cell);
}
