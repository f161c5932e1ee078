//! Every endpoint on loopback through a real HTTP client, on the subinterp backend.

mod common;
use common::*;
use serde_json::{Value as J, json};

#[global_allocator]
static ALLOCATOR: supervisor::AccountingAllocator = supervisor::AccountingAllocator;

#[test]
fn cell_lifecycle_through_every_cell_endpoint() {
    let n = TestNode::start(config("node-a"));
    let u = &n.url;
    let (s, j) = send(
        "POST",
        &format!("{u}/v1/cells"),
        Some(KEY),
        Some(
            &json!({"backend": "subinterp", "source": "fn add(a, b) { a + b }", "ttl_ms": 60000, "labels": {"job": "t"}}),
        ),
    );
    assert_eq!(s, 201, "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("node-a_"), "{id}");
    assert_eq!(
        (j["node"].as_str(), j["backend"].as_str()),
        (Some("node-a"), Some("subinterp"))
    );
    let first_expiry = j["expires_at"].as_u64().unwrap();

    let cell = format!("{u}/v1/cells/{id}");
    let (s, j) = send(
        "POST",
        &format!("{cell}/exec"),
        Some(KEY),
        Some(&json!({"source": "post(40 + 2); 6 * 7"})),
    );
    assert_eq!((s, &j), (200, &json!({"result": 42})));
    let (s, j) = send(
        "POST",
        &format!("{cell}/call"),
        Some(KEY),
        Some(&json!({"function": "add", "args": [40, 2]})),
    );
    assert_eq!((s, &j), (200, &json!({"result": 42})));
    let (s, j) = send(
        "POST",
        &format!("{cell}/exec"),
        Some(KEY),
        Some(&json!({"source": "post(\"second\"); log(\"info\", \"hi\", #{})"})),
    );
    assert_eq!(s, 200, "{j}");

    let (s, j) = send("GET", &cell, Some(KEY), None);
    assert_eq!(s, 200);
    assert_eq!(j["state"], "alive");
    assert_eq!(j["labels"]["job"], "t");
    assert!(j["stats"]["ops"].as_u64().unwrap() >= 4, "{j}");
    assert_eq!(j["stats"]["last_seq"], 3);
    // Live figures of a subinterp cell: its engine's heap (the allocator is installed here as
    // in `cell serve`) and its CPU time so far.
    assert!(j["stats"]["memory_bytes"].as_u64().unwrap() > 1024, "{j}");
    assert!(j["stats"]["cpu_time_ms"].is_u64(), "{j}");
    let (s, j) = send("GET", &format!("{u}/v1/cells"), Some(KEY), None);
    assert_eq!(s, 200);
    assert_eq!(j["cells"].as_array().unwrap().len(), 1);

    // The buffered events, then a reconnect after seq 1 that gets only what followed.
    let all = read_events(&format!("{cell}/events"), KEY, |l| l["seq"] == 3);
    assert_eq!(all[0], json!({"event": "post", "value": 42, "seq": 1}));
    assert_eq!(
        all[1],
        json!({"event": "post", "value": "second", "seq": 2})
    );
    assert_eq!(
        (all[2]["event"].as_str(), all[2]["message"].as_str()),
        (Some("log"), Some("hi"))
    );
    let rest = read_events(&format!("{cell}/events?after=2"), KEY, |_| true);
    assert_eq!(rest[0]["seq"], 3);

    let (s, j) = send(
        "POST",
        &format!("{cell}/ttl"),
        Some(KEY),
        Some(&json!({"ttl_ms": 3_600_000})),
    );
    assert_eq!(s, 200);
    assert!(j["expires_at"].as_u64().unwrap() > first_expiry, "{j}");

    let (s, j) = send("DELETE", &cell, Some(KEY), None);
    assert_eq!((s, &j["deleted"]), (200, &json!(true)));
    let (s, j) = send("GET", &cell, Some(KEY), None);
    assert_eq!((s, j["code"].as_str()), (404, Some("cell_not_found")));
    let (s, _) = send(
        "POST",
        &format!("{cell}/exec"),
        Some(KEY),
        Some(&json!({"source": "1"})),
    );
    assert_eq!(s, 404);
}

#[test]
fn node_health_metrics_and_openapi() {
    let n = TestNode::start(config("node-b"));
    let u = &n.url;
    let (s, j) = send("GET", &format!("{u}/v1/node"), Some(KEY), None);
    assert_eq!(s, 200);
    assert_eq!(
        (j["node"].as_str(), j["ready"].as_bool()),
        (Some("node-b"), Some(true))
    );
    let names: Vec<_> = j["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"subinterp"), "{j}");
    assert_eq!(send("GET", &format!("{u}/healthz"), None, None).0, 200);
    assert_eq!(send("GET", &format!("{u}/readyz"), None, None).0, 200);
    create(u, KEY, json!({"source": "1"}));
    let (s, j) = send("GET", &format!("{u}/metrics"), None, None);
    assert_eq!(s, 200);
    let text = j.as_str().unwrap();
    for series in [
        "cell_service_requests_total",
        "cell_service_spawn_seconds_bucket",
        "cell_service_exec_seconds",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let (s, doc) = send("GET", &format!("{u}/v1/openapi.json"), None, None);
    assert_eq!(s, 200);
    assert_eq!(
        doc,
        serde_json::from_str::<J>(cell_service::api::OPENAPI).unwrap()
    );
}

/// The OpenAPI document names exactly the routes the router serves, and each answers.
#[test]
fn openapi_document_matches_the_router() {
    let doc: J = serde_json::from_str(cell_service::api::OPENAPI).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = cell_service::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // Every error status the document mentions is a status some code has, and back.
    let n = TestNode::start(config("node-o"));
    let id = create(&n.url, KEY, json!({}));
    for (method, path) in cell_service::api::ROUTES {
        let url = format!(
            "{}{}",
            n.url,
            path.replace("{id}", &id).replace("/v1/cells/{id}", "")
        );
        let (s, j) = match *method {
            "get" if path.ends_with("/events") => {
                // Streams never end on their own: a closed cell's stream does.
                continue;
            }
            "get" => send("GET", &url, Some(KEY), None),
            "post" => send("POST", &url, Some(KEY), Some(&json!({}))),
            "delete" => send("DELETE", &url, Some(KEY), None),
            _ => unreachable!(),
        };
        assert_ne!(
            j["code"].as_str(),
            Some("no_route"),
            "{method} {path} is not served: {s}"
        );
        assert_ne!(s, 405, "{method} {path}");
    }
}

#[test]
fn typed_errors_with_stable_statuses() {
    let n = TestNode::start(config("node-c"));
    let u = &n.url;
    let cells = format!("{u}/v1/cells");
    let id = create(u, KEY, json!({}));
    let exec = format!("{cells}/{id}/exec");
    for (source, status, code) in [
        ("let x = ;", 422, "syntax"),
        ("throw \"boom\"", 422, "runtime"),
        ("loop {}", 422, "limit_operations"),
    ] {
        let (s, j) = send("POST", &exec, Some(KEY), Some(&json!({"source": source})));
        assert_eq!(
            (s, j["code"].as_str()),
            (status, Some(code)),
            "{source}: {j}"
        );
        assert_eq!(cell_service::status_of(code).as_u16(), status);
        assert!(!j["message"].as_str().unwrap().is_empty());
    }
    let (s, j) = send(
        "POST",
        &format!("{cells}/{id}/call"),
        Some(KEY),
        Some(&json!({"function": "nope"})),
    );
    assert_eq!((s, j["code"].as_str()), (422, Some("not_found")), "{j}");

    for (body, needle) in [
        ("{bad json", "invalid JSON"),
        ("{\"backend\": \"subinterp\", \"sauce\": \"1\"}", "sauce"),
        ("{\"ttl_ms\": \"soon\"}", "expected u64"),
    ] {
        let (s, j) = send_raw("POST", &cells, Some(KEY), Some(body.into()));
        assert_eq!(
            (s, j["code"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
        assert!(
            j["message"].as_str().unwrap().contains(needle),
            "{body}: {j}"
        );
    }
    let (s, j) = send(
        "POST",
        &cells,
        Some(KEY),
        Some(&json!({"backend": "quantum"})),
    );
    assert_eq!((s, j["code"].as_str()), (400, Some("unknown_backend")));
    let (s, j) = send("POST", &cells, Some(KEY), Some(&json!({"policy": "gold"})));
    assert_eq!((s, j["code"].as_str()), (400, Some("unknown_policy")));
    // A long name, backend or policy is quoted back cut short.
    let long = "q".repeat(50_000);
    for field in ["name", "backend", "policy"] {
        let (s, j) = send("POST", &cells, Some(KEY), Some(&json!({ field: long })));
        assert_eq!(s, 400, "{field}: {j}");
        let message = j["message"].as_str().unwrap();
        assert!(message.len() < 400, "{field}: {} bytes", message.len());
    }
    // Over the cap by Content-Length: refused before any of the body is sent (a client that
    // wrote the whole body could see the connection close under its write instead).
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(u.trim_start_matches("http://")).unwrap();
        // A bound on the test itself, not an assertion: the server answers at once.
        c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let path = exec.trim_start_matches(u.as_str());
        write!(c, "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 2 << 20).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("payload_too_large"), "{out}");
    }
    for key in [None, Some("wrong")] {
        let (s, j) = send("GET", &cells, key, None);
        assert_eq!((s, j["code"].as_str()), (401, Some("unauthorized")));
    }
    let (s, j) = send("GET", &format!("{u}/v2/nothing"), Some(KEY), None);
    assert_eq!((s, j["code"].as_str()), (404, Some("no_route")));
    // A cell id that names no node this one knows is simply not found.
    let (s, _) = send("GET", &format!("{cells}/elsewhere_00"), Some(KEY), None);
    assert_eq!(s, 404);
    // The cell survived every bad request.
    let (s, _) = send("POST", &exec, Some(KEY), Some(&json!({"source": "1"})));
    assert_eq!(s, 200);
}

/// Every code has its status, and the table in docs/SERVICE.md says the same.
#[test]
fn status_table_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SERVICE.md"))
        .unwrap();
    let codes = cell_service::SERVICE_CODES
        .iter()
        .copied()
        .chain(supervisor_codes());
    for code in codes {
        let status = cell_service::status_of(code).as_u16();
        let row = format!("| `{code}` | {status} |");
        assert!(doc.contains(&row), "docs/SERVICE.md lacks the row {row}");
    }
}

fn supervisor_codes() -> impl Iterator<Item = &'static str> {
    supervisor::ErrorCode::ALL.iter().map(|c| c.name())
}

#[test]
fn expired_cells_are_reaped_and_their_stream_ends() {
    let n = TestNode::start(config("node-d"));
    let id = create(&n.url, KEY, json!({"ttl_ms": 200, "source": "post(1)"}));
    let lines = read_events(&format!("{}/v1/cells/{id}/events", n.url), KEY, |l| {
        l["event"] == "closed"
    });
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "closed", "{lines:?}");
    assert!(last["message"].as_str().unwrap().contains("ttl"), "{last}");
    let (s, _) = send("GET", &format!("{}/v1/cells/{id}", n.url), Some(KEY), None);
    assert_eq!(s, 404);
    assert!(n.node().is_empty());
}

#[test]
fn idempotent_creates_return_the_same_cell() {
    let n = TestNode::start(config("node-e"));
    let body = json!({"idempotency_key": "k1"});
    let (s1, a) = send(
        "POST",
        &format!("{}/v1/cells", n.url),
        Some(KEY),
        Some(&body),
    );
    let (s2, b) = send(
        "POST",
        &format!("{}/v1/cells", n.url),
        Some(KEY),
        Some(&body),
    );
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(n.node().len(), 1);
    // The same key with another request is refused, and makes nothing.
    let other = json!({"idempotency_key": "k1", "labels": {"a": "b"}});
    let (s3, e) = send(
        "POST",
        &format!("{}/v1/cells", n.url),
        Some(KEY),
        Some(&other),
    );
    assert_eq!(
        (s3, e["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(n.node().len(), 1);
}

/// An open stream gets a running exec's events as the cell posts them, not when the exec ends.
#[test]
fn a_running_exec_streams_its_events_live() {
    let (_dir, c) = endless_config("node-live");
    let n = TestNode::start(c);
    let id = create(&n.url, KEY, json!({"backend": "subinterp"}));
    let cell = format!("{}/v1/cells/{id}", n.url);
    let running = {
        let cell = cell.clone();
        std::thread::spawn(move || {
            let body = json!({"source": "post(1); post(\"two\"); loop {}"});
            send("POST", &format!("{cell}/exec"), Some(KEY), Some(&body))
        })
    };
    // Ends on the second post, or on a heartbeat (15 s of nothing: the events did not come).
    let lines = read_events(&format!("{cell}/events"), KEY, |l| {
        l["seq"] == 2 || l["event"] == "heartbeat"
    });
    assert_eq!(
        lines,
        [
            json!({"event": "post", "value": 1, "seq": 1}),
            json!({"event": "post", "value": "two", "seq": 2}),
        ]
    );
    // The exec never ends by itself: it is still running.
    assert!(!running.is_finished());
    let (s, j) = send("GET", &cell, Some(KEY), None);
    assert_eq!(
        (s, &j["state"], &j["stats"]["last_seq"]),
        (200, &json!("alive"), &json!(2))
    );
    let (s, j) = send("DELETE", &cell, Some(KEY), None);
    assert_eq!(s, 200, "{j}");
    let (s, j) = running.join().unwrap();
    assert_eq!(j["code"], "cancelled", "{s} {j}");
}

/// The list comes a page at a time, bounded by `limit` and by bytes (each cell may carry 64 KiB
/// of labels), and walking `next` gives every cell once.
#[test]
fn the_cell_list_is_paged_by_count_and_by_bytes() {
    let n = TestNode::start(config("node-page"));
    let u = &n.url;
    let cells = format!("{u}/v1/cells");
    // 20 cells of about 65 KiB of labels each: 1.3 MiB in all.
    let labels: serde_json::Map<String, J> = (0..64)
        .map(|i| (format!("k{i:03}"), J::String("v".repeat(1024))))
        .collect();
    let mut made: Vec<String> = (0..20)
        .map(|_| create(u, KEY, json!({ "labels": labels })))
        .collect();
    made.sort();
    let page = |query: &str| {
        let (s, j) = send("GET", &format!("{cells}?{query}"), Some(KEY), None);
        assert_eq!(s, 200, "{query}: {j}");
        let ids: Vec<String> = j["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        let next = j["next"].as_str().map(str::to_string);
        (ids, next, j.to_string().len())
    };
    // By count: two, then the rest after the second.
    let (first, next, _) = page("limit=2");
    assert_eq!(first, made[..2]);
    assert_eq!(next.as_deref(), Some(made[1].as_str()));
    let (rest, next, _) = page(&format!("after={}&limit=1000", made[1]));
    assert!(
        rest.len() < 18,
        "a page passed the byte bound: {}",
        rest.len()
    );
    assert!(next.is_some());
    // By bytes: no page passes 1 MiB, and the pages together hold each cell once.
    let mut seen = Vec::new();
    let mut after = None::<String>;
    loop {
        let query = after.map_or("limit=1000".to_string(), |a| {
            format!("limit=1000&after={a}")
        });
        let (ids, next, bytes) = page(&query);
        // The cells; the page around them adds a few bytes.
        assert!(
            bytes <= cell_service::api::LIST_PAGE_BYTES + 256,
            "{bytes} bytes"
        );
        assert!(!ids.is_empty());
        seen.extend(ids);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, made);
    // Bad bounds and unknown parameters are typed 400s.
    for query in ["limit=0", "limit=1001", "limit=x", "page=2"] {
        let (s, j) = send("GET", &format!("{cells}?{query}"), Some(KEY), None);
        assert_eq!(
            (s, j["code"].as_str()),
            (400, Some("bad_request")),
            "{query}: {j}"
        );
    }
}

/// Every backend this host has reports what a cell holds and the CPU it used, over HTTP: 8 MB
/// kept in the cell's state shows in `memory_bytes` (the engine's live heap in process and in a
/// microVM, the cgroup's count of a process cell's pages), and a loop's work in `cpu_time_ms`.
#[test]
fn every_backend_reports_a_cells_memory_and_cpu_time() {
    let n = TestNode::start(config("node-usage"));
    let hold = r#"let big = []; for i in 0..8 { let s = "y"; s.pad(1000000, 'y'); big.push(s); }"#;
    let work = "let n = 0; for i in 0..2000000 { n += i; } n";
    for backend in n.available_backends() {
        let id = create(&n.url, KEY, json!({"backend": backend}));
        let cell = format!("{}/v1/cells/{id}", n.url);
        let stats = || {
            let (s, j) = send("GET", &cell, Some(KEY), None);
            assert_eq!(s, 200, "{backend}: {j}");
            let memory = j["stats"]["memory_bytes"].as_u64();
            let cpu = j["stats"]["cpu_time_ms"].as_u64();
            match (memory, cpu) {
                (Some(m), Some(c)) => (m, c),
                _ => panic!("{backend}: no usage figures: {j}"),
            }
        };
        exec_ok(&n.url, KEY, &id, hold);
        let (held, _) = stats();
        assert!(held >= 8_000_000, "{backend}: {held}");
        exec_ok(&n.url, KEY, &id, "big = ();");
        let (freed, cpu_before) = stats();
        // An engine's heap gives the bytes back; a process's allocator may keep the pages,
        // which its cgroup still counts (and the next exec may touch a few more).
        if backend != "process" {
            assert!(freed < held - 6_000_000, "{backend}: {held} -> {freed}");
        }
        exec_ok(&n.url, KEY, &id, work);
        let (_, cpu_after) = stats();
        assert!(
            cpu_after > cpu_before,
            "{backend}: {cpu_before} -> {cpu_after}"
        );
        assert_eq!(send("DELETE", &cell, Some(KEY), None).0, 200);
        println!(
            "backend {backend}: held {held}, then {freed}; cpu {cpu_before} -> {cpu_after} ms"
        );
    }
}

/// A cell waiting for a broker reply uses no CPU, and its CPU time says so on every backend:
/// the wait (held here for 400 ms of wall time) is not counted, the cell's own work is.
#[test]
fn a_wait_for_a_broker_reply_is_no_cpu_time_on_any_backend() {
    const HELD: std::time::Duration = std::time::Duration::from_millis(400);
    let (origin, c) = HeldOrigin::config("node-wait-cpu");
    let n = TestNode::start(c);
    for backend in n.available_backends() {
        let id = create(&n.url, KEY, json!({"backend": backend}));
        let cell = format!("{}/v1/cells/{id}", n.url);
        let exec = {
            let (url, source) = (format!("{cell}/exec"), origin.source());
            std::thread::spawn(move || {
                send("POST", &url, Some(KEY), Some(&json!({"source": source})))
            })
        };
        let conn = origin.take();
        // The cell is inside its request now: let wall time pass before the answer.
        std::thread::sleep(HELD);
        answer_held(conn);
        let (s, j) = exec.join().unwrap();
        assert_eq!((s, &j), (200, &json!({"result": 7})), "{backend}");
        let (s, j) = send("GET", &cell, Some(KEY), None);
        assert_eq!(s, 200, "{backend}: {j}");
        let cpu = j["stats"]["cpu_time_ms"].as_u64().expect("counted");
        let busy = j["stats"]["busy_ms"].as_u64().expect("counted");
        assert!(busy >= HELD.as_millis() as u64, "{backend}: busy {busy} ms");
        assert!(
            cpu < HELD.as_millis() as u64 / 2,
            "{backend}: the wait was counted as CPU time: {cpu} ms of {busy} ms busy"
        );
        assert_eq!(send("DELETE", &cell, Some(KEY), None).0, 200);
        println!("backend {backend}: {cpu} ms CPU in {busy} ms busy");
    }
}
