//! Tenants over HTTP: keys, isolation, allowed backends, named policies, quotas, reload.

mod common;
use cell_service::{ServeConfig, add_tenant};
use common::*;
use serde_json::json;

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    a: String,
    b: String,
    config: ServeConfig,
}

fn setup(node: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    let a = add_tenant(&path, "a", &["subinterp".into()]).unwrap();
    let b = add_tenant(&path, "b", &[]).unwrap();
    // Quotas and policies for `a`, written as an operator would.
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "name = \"a\"",
        "name = \"a\"\nquotas = { live_cells = 2, memory_mib = 100, execs_in_flight = 1 }\npolicies = { small = { limits = { memory_mib = 16, max_operations = 1000 } }, big = { limits = { memory_mib = 90 } }, endless = { limits = { memory_mib = 16, max_operations = 0, wall_time_ms = 0 } } }",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let mut config = config(node);
    config.api_key = None;
    config.tenants_file = Some(path.clone());
    Setup {
        _dir: dir,
        path,
        a,
        b,
        config,
    }
}

#[test]
fn keys_isolate_tenants_and_quotas_refuse_by_name() {
    let s = setup("node-t");
    let n = TestNode::start(s.config.clone());
    let u = &n.url;
    let cells = format!("{u}/v1/cells");

    let id = create(u, &s.a, json!({"policy": "small"}));
    // Another tenant's cell does not exist for b; a wrong key is 401.
    let (st, j) = send("GET", &format!("{cells}/{id}"), Some(&s.b), None);
    assert_eq!((st, j["code"].as_str()), (404, Some("cell_not_found")));
    let (st, _) = send("DELETE", &format!("{cells}/{id}"), Some(&s.b), None);
    assert_eq!(st, 404);
    let (st, j) = send("GET", &cells, Some(&s.b), None);
    assert_eq!((st, j["cells"].as_array().unwrap().len()), (200, 0));
    assert_eq!(send("GET", &cells, Some("cell_nope"), None).0, 401);
    assert_eq!(
        send("GET", &cells, Some(KEY), None).0,
        401,
        "CELL_API_KEY means nothing beside a tenants file"
    );

    // The named policy holds: its operation budget is 1000.
    let (st, j) = send(
        "POST",
        &format!("{cells}/{id}/exec"),
        Some(&s.a),
        Some(&json!({"source": "let x = 0; while x < 100000 { x += 1; } x"})),
    );
    assert_eq!(
        (st, j["code"].as_str()),
        (422, Some("limit_operations")),
        "{j}"
    );

    // Backend not allowed for a; allowed for b.
    let (st, j) = send(
        "POST",
        &cells,
        Some(&s.a),
        Some(&json!({"backend": "process"})),
    );
    assert_eq!((st, j["code"].as_str()), (403, Some("forbidden")));

    // Memory: 16 held, 90 more passes 100.
    let (st, j) = send("POST", &cells, Some(&s.a), Some(&json!({"policy": "big"})));
    assert_eq!(
        (st, j["code"].as_str(), j["quota"].as_str()),
        (429, Some("quota_exceeded"), Some("memory_mib")),
        "{j}"
    );
    // Live cells: a second small one fits, a third does not.
    create(u, &s.a, json!({"policy": "small"}));
    let (st, j) = send(
        "POST",
        &cells,
        Some(&s.a),
        Some(&json!({"policy": "small"})),
    );
    assert_eq!((st, j["quota"].as_str()), (429, Some("live_cells")));
    // Deleting frees the quota.
    assert_eq!(
        send("DELETE", &format!("{cells}/{id}"), Some(&s.a), None).0,
        200
    );
    create(u, &s.a, json!({"policy": "small"}));
    // b has no quotas.
    for _ in 0..3 {
        create(u, &s.b, json!({}));
    }
    let (_, m) = send("GET", &format!("{u}/metrics"), None, None);
    assert!(
        m.as_str()
            .unwrap()
            .contains("cell_service_quota_refusals_total{tenant=\"a\",quota=\"live_cells\"}"),
        "{m}"
    );
}

/// A tenant's `execs_in_flight` binds over all its cells; another tenant is not held up by it.
#[test]
fn execs_in_flight_quota_binds_one_tenant_only() {
    let s = setup("node-tx");
    let n = TestNode::start(s.config.clone());
    let u = &n.url;
    let endless = create(u, &s.a, json!({"policy": "endless"}));
    let small = create(u, &s.a, json!({"policy": "small"}));
    let running = start_endless_exec(u, &s.a, &endless);
    let (st, j) = send(
        "POST",
        &format!("{u}/v1/cells/{small}/exec"),
        Some(&s.a),
        Some(&json!({"source": "1"})),
    );
    assert_eq!(
        (st, j["quota"].as_str()),
        (429, Some("execs_in_flight")),
        "{j}"
    );
    let theirs = create(u, &s.b, json!({}));
    assert_eq!(exec_ok(u, &s.b, &theirs, "1 + 1")["result"], 2);
    let (st, _) = send(
        "DELETE",
        &format!("{u}/v1/cells/{endless}"),
        Some(&s.a),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(running.join().unwrap().1["code"], "cancelled");
    assert_eq!(exec_ok(u, &s.a, &small, "1 + 1")["result"], 2);
}

#[test]
fn reload_takes_a_valid_file_and_refuses_an_invalid_one() {
    let s = setup("node-r");
    let n = TestNode::start(s.config.clone());
    let u = &n.url;
    let id = create(u, &s.a, json!({}));

    std::fs::write(&s.path, "[[tenant]]\nname = \"a\"\nkeyz = []\n").unwrap();
    let err = n.node().reload().unwrap_err().to_string();
    assert!(err.contains("keyz"), "{err}");
    // The old tenants stay.
    assert_eq!(
        send("GET", &format!("{u}/v1/cells/{id}"), Some(&s.a), None).0,
        200
    );
    let (_, m) = send("GET", &format!("{u}/metrics"), None, None);
    assert!(
        m.as_str()
            .unwrap()
            .contains("cell_service_reloads_total{outcome=\"refused\"}")
    );

    // A valid file without a: a's key stops working, b's keeps; live cells are untouched.
    std::fs::write(&s.path, "").unwrap();
    let c = add_tenant(&s.path, "c", &[]).unwrap();
    n.node().reload().unwrap();
    assert_eq!(
        send("GET", &format!("{u}/v1/cells"), Some(&s.a), None).0,
        401
    );
    assert_eq!(
        send("GET", &format!("{u}/v1/cells"), Some(&s.b), None).0,
        401
    );
    create(u, &c, json!({}));
    assert_eq!(n.node().len(), 2);
}

#[test]
fn tcp_without_a_key_is_refused_and_a_unix_socket_serves_without_one() {
    use std::io::{Read, Write};
    let mut c = config("node-k");
    c.api_key = None;
    let err = runtime()
        .block_on(cell_service::Server::start(c))
        .err()
        .unwrap();
    assert!(matches!(err, cell_service::ServeError::NoKey), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cell.sock");
    let mut c = config("node-u");
    c.api_key = None;
    c.listen = format!("unix:{}", sock.display()).parse().unwrap();
    let server = runtime().block_on(cell_service::Server::start(c)).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let body = "{\"source\": \"40 + 2\"}";
    write!(s, "POST /v1/cells HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    runtime().block_on(server.kill());
    assert!(!sock.exists(), "the socket file is removed");
}

/// A cell dead by its own fault stays listed (state, reason, events) and holds one of the node's
/// places until deleted or expired, so it counts against its tenant's `live_cells` until then:
/// a tenant whose cells die could otherwise fill the node past its quota and lock others out.
#[test]
fn dead_cells_count_against_their_tenants_quota_until_deleted() {
    let mut s = setup("node-td");
    s.config.limits.max_cells = 3;
    let n = TestNode::start(s.config.clone());
    let u = &n.url;
    let cells = format!("{u}/v1/cells");
    // Two cells of a, each killed by its own flood (no stream open).
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let id = create(u, &s.a, json!({"policy": "endless"}));
            let (st, j) = send(
                "POST",
                &format!("{cells}/{id}/exec"),
                Some(&s.a),
                Some(&json!({"source": "for i in 0..100000 { post(i) } 1"})),
            );
            assert_eq!(
                (st, j["code"].as_str()),
                (410, Some("limit_event_queue")),
                "{j}"
            );
            id
        })
        .collect();
    // a's quota holds its dead cells: a third is refused by name, not made.
    let (st, j) = send(
        "POST",
        &cells,
        Some(&s.a),
        Some(&json!({"policy": "small"})),
    );
    assert_eq!((st, j["quota"].as_str()), (429, Some("live_cells")), "{j}");
    // The node's last place is b's.
    create(u, &s.b, json!({}));
    // The dead cells stay readable with their reason.
    let (st, j) = send("GET", &format!("{cells}/{}", dead[1]), Some(&s.a), None);
    assert_eq!(st, 200, "{j}");
    assert_eq!(
        (j["state"].as_str(), j["reason"]["code"].as_str()),
        (Some("dead"), Some("limit_event_queue")),
        "{j}"
    );
    // Deleting one gives back its place in a's quota and the node's.
    delete_ok(u, &s.a, &dead[0]);
    create(u, &s.a, json!({"policy": "small"}));
}
