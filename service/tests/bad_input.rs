//! Slow and broken clients: header and body timeouts, stream caps, disconnects, panics.

mod common;
use axum::routing::get;
use common::*;
use serde_json::json;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn raw(url: &str) -> TcpStream {
    let s = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    // A bound on the test itself, not an assertion: the server must act long before.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn slow_headers_and_slow_bodies_are_cut_off() {
    let mut c = config("node-slow");
    c.limits.header_timeout = Duration::from_millis(300);
    c.limits.body_timeout = Duration::from_millis(300);
    let n = TestNode::start(c);

    // Headers never finish: the server closes the connection.
    let mut s = raw(&n.url);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    assert!(read.is_ok(), "the server closed the connection: {read:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // A body that stops halfway: a 400 naming the body, then the connection ends.
    let mut s = raw(&n.url);
    write!(s, "POST /v1/cells HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"backend\":").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad_request") && out.contains("body"), "{out}");
    assert!(n.node().is_empty());
}

#[test]
fn chunked_bodies_over_the_cap_get_413() {
    let mut c = config("node-cap");
    c.limits.body_bytes = 1000;
    let n = TestNode::start(c);
    let mut s = raw(&n.url);
    write!(s, "POST /v1/cells HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    let chunk = "x".repeat(600);
    for _ in 0..2 {
        write!(s, "{:x}\r\n{chunk}\r\n", chunk.len()).unwrap();
    }
    let _ = write!(s, "0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("payload_too_large"), "{out}");
}

#[test]
fn streams_per_tenant_are_capped_and_disconnects_spare_the_cell() {
    let mut c = config("node-str");
    c.limits.streams_per_tenant = 1;
    c.limits.heartbeat = Duration::from_millis(50);
    let n = TestNode::start(c);
    let id = create(&n.url, KEY, json!({}));
    let events = format!("{}/v1/cells/{id}/events", n.url);
    {
        let first = agent()
            .get(&events)
            .header("Authorization", &format!("Bearer {KEY}"))
            .call()
            .unwrap();
        assert_eq!(first.status().as_u16(), 200);
        let (s, j) = send("GET", &events, Some(KEY), None);
        assert_eq!((s, j["quota"].as_str()), (429, Some("streams")));
        // Read one heartbeat, then hang up.
        let mut r = std::io::BufReader::new(first.into_body().into_reader());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("heartbeat"), "{line}");
    }
    // The slot comes back once the server notices the hang-up; the cell lives on.
    let mut open = n.node().open_streams.subscribe();
    runtime().block_on(open.wait_for(|n| *n == 0)).unwrap();
    let lines = read_events(&events, KEY, |l| l["event"] == "heartbeat");
    assert!(!lines.is_empty());
    let (s, j) = send(
        "POST",
        &format!("{}/v1/cells/{id}/exec", n.url),
        Some(KEY),
        Some(&json!({"source": "1 + 1"})),
    );
    assert_eq!((s, &j["result"]), (200, &json!(2)));
}

/// Execs queued on one cell each wait on a thread: past the tenant's bound they are refused at
/// once instead, and the place comes back when the running exec ends.
#[test]
fn execs_in_flight_per_tenant_are_capped() {
    let (_dir, mut c) = endless_config("node-execs");
    c.limits.execs_per_tenant = 1;
    let n = TestNode::start(c);
    let id = create(&n.url, KEY, json!({}));
    let other = create(&n.url, KEY, json!({}));
    let running = start_endless_exec(&n.url, KEY, &id);
    // Another cell of the tenant first (without the bound it would answer), then the busy one
    // (without the bound the request would wait for ever on a thread).
    for (cell, op, body) in [
        (&other, "exec", json!({"source": "1"})),
        (&other, "call", json!({"function": "f"})),
        (&id, "exec", json!({"source": "1"})),
    ] {
        let url = format!("{}/v1/cells/{cell}/{op}", n.url);
        let (s, j) = send("POST", &url, Some(KEY), Some(&body));
        assert_eq!(
            (s, j["quota"].as_str()),
            (429, Some("execs_in_flight")),
            "{op}: {j}"
        );
    }
    // A create's source is an exec too: it ran past the bound (a cell without one still comes).
    let cells = format!("{}/v1/cells", n.url);
    let (s, j) = send("POST", &cells, Some(KEY), Some(&json!({"source": "1"})));
    assert_eq!(
        (s, j["quota"].as_str()),
        (429, Some("execs_in_flight")),
        "{j}"
    );
    let empty = create(&n.url, KEY, json!({}));
    delete_ok(&n.url, KEY, &id);
    let (_, j) = running.join().unwrap();
    assert_eq!(j["code"], "cancelled", "{j}");
    create(&n.url, KEY, json!({"source": "1"}));
    delete_ok(&n.url, KEY, &empty);
    // The running exec's place is free again.
    assert_eq!(exec_ok(&n.url, KEY, &other, "40 + 2")["result"], 42);
}

#[test]
fn kill_on_disconnect_kills_when_the_reader_goes() {
    let mut c = config("node-kod");
    c.limits.heartbeat = Duration::from_millis(50);
    let n = TestNode::start(c);
    let id = create(&n.url, KEY, json!({"kill_on_disconnect": true}));
    let events = format!("{}/v1/cells/{id}/events", n.url);
    assert_eq!(n.node().len(), 1);
    {
        let first = agent()
            .get(&events)
            .header("Authorization", &format!("Bearer {KEY}"))
            .call()
            .unwrap();
        let mut r = std::io::BufReader::new(first.into_body().into_reader());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
    }
    // The server notices at its next heartbeat and kills the cell.
    let mut count = n.node().count.subscribe();
    runtime().block_on(count.wait_for(|n| *n == 0)).unwrap();
    let (s, _) = send("GET", &format!("{}/v1/cells/{id}", n.url), Some(KEY), None);
    assert_eq!(s, 404);
}

#[test]
fn a_panicking_handler_is_a_500_for_that_request_only() {
    let extra = axum::Router::new().route(
        "/v1/test/panic",
        get(|| async {
            if true {
                panic!("handler bug");
            }
            "unreachable"
        }),
    );
    let n = TestNode::start_with(config("node-p"), extra);
    let (s, j) = send("GET", &format!("{}/v1/test/panic", n.url), None, None);
    assert_eq!((s, j["code"].as_str()), (500, Some("internal")), "{j}");
    let id = create(&n.url, KEY, json!({"source": "40 + 2"}));
    assert_eq!(
        send("GET", &format!("{}/v1/cells/{id}", n.url), Some(KEY), None).0,
        200
    );
}

/// A client that sends requests and never reads the answers: once the socket buffers are full
/// the server's write waits, and it must not wait for ever (no key is needed to do this).
#[test]
fn a_client_that_never_reads_its_answers_is_cut_off() {
    let mut c = config("node-noread");
    c.limits.write_timeout = Duration::from_millis(300);
    let n = TestNode::start(c);
    let mut s = raw(&n.url);
    // A bound on the test itself, not an assertion: the server closes long before.
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let error = loop {
        if let Err(e) = s.write_all(request) {
            break e;
        }
    };
    // Closed by the server with our requests unread: a reset, not our own bound running out.
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error:?}"
    );

    // An event stream whose reader stopped reading ends too, giving back its slot and the
    // cell it held under backpressure.
    let id = create(&n.url, KEY, json!({}));
    let mut stream = raw(&n.url);
    write!(
        stream,
        "GET /v1/cells/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    )
    .unwrap();
    let mut open = n.node().open_streams.subscribe();
    runtime().block_on(open.wait_for(|n| *n == 1)).unwrap();
    let flood =
        r#"let s = "x"; while s.len() < 4096 { s += s; } for i in 0..100000 { post(s); } 1"#;
    let exec = format!("{}/v1/cells/{id}/exec", n.url);
    let running =
        std::thread::spawn(move || send("POST", &exec, Some(KEY), Some(&json!({"source": flood}))));
    runtime().block_on(open.wait_for(|n| *n == 0)).unwrap();
    let (s, j) = running.join().unwrap();
    assert!(s == 200 || j["code"] == "limit_event_queue", "{s} {j}");
    let (s, _) = send("GET", &format!("{}/healthz", n.url), None, None);
    assert_eq!(s, 200);
    drop(stream);
}

/// An exec running on the blocking pool holds its place until it ends, not until its client
/// goes: a tenant could pass its bound by starting long execs and hanging up.
#[test]
fn an_exec_whose_client_hangs_up_keeps_its_place_until_it_ends() {
    let (_dir, mut c) = endless_config("node-hangup");
    c.limits.execs_per_tenant = 1;
    // The events reader's hang-up is noticed at its next heartbeat.
    c.limits.heartbeat = Duration::from_millis(50);
    let n = TestNode::start(c);
    let id = create(&n.url, KEY, json!({}));
    let other = create(&n.url, KEY, json!({}));
    // Every in-place slot taken: the exec runs on the blocking pool, apart from its request.
    let in_place: Vec<_> = (0..cell_service::api::MAX_IN_PLACE)
        .map(|_| n.node().in_place(cell_service::api::MAX_IN_PLACE).unwrap())
        .collect();
    let mut s = raw(&n.url);
    let body = json!({"source": "post(1); loop {}"}).to_string();
    write!(s, "POST /v1/cells/{id}/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let lines = read_events(&format!("{}/v1/cells/{id}/events", n.url), KEY, |l| {
        l["seq"] == 1 || l["event"] == "heartbeat"
    });
    assert_eq!(lines.last().unwrap()["seq"], 1, "the exec runs: {lines:?}");
    // The client hangs up; once the server has closed every connection, the request's
    // handler is gone while the exec runs on.
    drop(s);
    let mut open = n.node().connections.subscribe();
    runtime().block_on(open.wait_for(|n| *n == 0)).unwrap();
    let (_, j) = send("GET", &format!("{}/v1/cells/{id}", n.url), Some(KEY), None);
    assert_eq!(j["state"], "alive", "{j}");
    let (st, j) = send(
        "POST",
        &format!("{}/v1/cells/{other}/exec", n.url),
        Some(KEY),
        Some(&json!({"source": "1"})),
    );
    assert_eq!(
        (st, j["quota"].as_str()),
        (429, Some("execs_in_flight")),
        "{j}"
    );
    drop(in_place);
    delete_ok(&n.url, KEY, &id);
}

/// A client that reads its answers, but slowly: a few KiB now and then. Each read let the server's
/// write go on, and a wait restarted by every write never ran out, so such a client held its
/// connection and its buffers for as long as it liked. Now it must take the answer at the
/// node's minimum rate once it keeps one waiting, and is cut off well before the end.
#[test]
fn a_client_that_reads_its_answers_slowly_is_cut_off() {
    const REQUESTS: usize = 900;
    let mut c = config("node-slowread");
    c.limits.write_timeout = Duration::from_secs(2);
    c.limits.min_write_rate = 1 << 20;
    let n = TestNode::start(c);
    let mut s = raw(&n.url);
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    // About 18 MB of answers (the OpenAPI document, no key needed), far more than the socket
    // buffers hold, asked for at once.
    let request = "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS);
    s.write_all(request.as_bytes()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (mut s, stop) = (s.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let (mut got, mut buf) = (0, vec![0; 4096]);
            // The slow client itself: 4 KiB every 20 ms (about 200 KiB/s, a fifth of the rate
            // asked), until the node has closed the connection.
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(k) => got += k,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Then what the socket buffers still hold, at once.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            got + rest.len()
        })
    };
    let mut open = n.node().connections.subscribe();
    runtime().block_on(async {
        open.wait_for(|c| *c == 1).await.unwrap();
        open.wait_for(|c| *c == 0).await.unwrap();
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = reader.join().unwrap();
    let all = REQUESTS * cell_service::api::OPENAPI.len();
    assert!(
        got < all,
        "the slow reader got all {got} bytes of its answers: nothing cut it off"
    );
    // The node serves others as before.
    let (status, _) = send("GET", &format!("{}/healthz", n.url), None, None);
    assert_eq!(status, 200);
}
