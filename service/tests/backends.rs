//! The same HTTP session on every backend this host has (subinterp always), and a bounded load
//! test: fixed counts, loopback only.

mod common;
use common::*;
use serde_json::json;

fn session(url: &str, backend: &str) {
    let id = create(
        url,
        KEY,
        json!({"backend": backend, "source": "fn add(a, b) { a + b }"}),
    );
    let cell = format!("{url}/v1/cells/{id}");
    let (s, j) = send(
        "POST",
        &format!("{cell}/exec"),
        Some(KEY),
        Some(&json!({"source": "post(40 + 2); \"done\""})),
    );
    assert_eq!((s, &j), (200, &json!({"result": "done"})), "{backend}");
    let (s, j) = send(
        "POST",
        &format!("{cell}/call"),
        Some(KEY),
        Some(&json!({"function": "add", "args": [40, 2]})),
    );
    assert_eq!((s, &j), (200, &json!({"result": 42})), "{backend}");
    let (s, j) = send(
        "POST",
        &format!("{cell}/exec"),
        Some(KEY),
        Some(&json!({"source": "let x = ;"})),
    );
    assert_eq!((s, j["code"].as_str()), (422, Some("syntax")), "{backend}");
    let (s, j) = send("GET", &cell, Some(KEY), None);
    assert_eq!(
        (s, j["backend"].as_str(), j["state"].as_str()),
        (200, Some(backend), Some("alive"))
    );
    let lines = read_events(&format!("{cell}/events"), KEY, |_| true);
    assert_eq!(
        lines[0],
        json!({"event": "post", "value": 42, "seq": 1}),
        "{backend}"
    );
    assert_eq!(send("DELETE", &cell, Some(KEY), None).0, 200);
}

#[test]
fn every_available_backend_serves_the_same_session() {
    let n = TestNode::start(config("node-be"));
    for (backend, available) in n.node().supervisor.backends() {
        match available {
            Ok(()) => {
                session(&n.url, &backend);
                println!("backend {backend}: ok");
            }
            Err(why) => {
                println!("SKIPPED: backend {backend} is unavailable here: {why}");
                let (s, j) = send(
                    "POST",
                    &format!("{}/v1/cells", n.url),
                    Some(KEY),
                    Some(&json!({"backend": backend})),
                );
                assert_eq!((s, j["code"].as_str()), (503, Some("backend_unavailable")));
            }
        }
    }
    assert!(n.node().is_empty());
}

#[test]
fn bounded_load_of_concurrent_sessions() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 25;
    let n = TestNode::start(config("node-load"));
    let url = n.url.clone();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let id = create(&url, KEY, json!({"labels": {"client": c.to_string()}}));
                    let (s, j) = send(
                        "POST",
                        &format!("{url}/v1/cells/{id}/exec"),
                        Some(KEY),
                        Some(&json!({"source": format!("{c} * 1000 + {r}")})),
                    );
                    assert_eq!((s, &j["result"]), (200, &json!(c * 1000 + r)));
                    assert_eq!(
                        send("DELETE", &format!("{url}/v1/cells/{id}"), Some(KEY), None).0,
                        200
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(n.node().is_empty());
    let (_, m) = send("GET", &format!("{url}/metrics"), None, None);
    let text = m.as_str().unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("cell_service_requests_total")
                && l.contains("route=\"/v1/cells/{id}/exec\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no exec counter:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= (CLIENTS * ROUNDS) as f64, "{line}");
}

/// Execs blocked inside the cell (each on a broker request to a server this test holds) on more
/// cells than the runtime has workers: the node still answers other requests, async and blocking
/// alike, and the held execs finish once the server answers.
#[test]
fn blocked_execs_never_hold_up_other_requests() {
    const HELD: usize = 4; // the test runtime has 2 workers
    let (origin, c) = HeldOrigin::config("node-held");
    let n = TestNode::start(c);
    let held: Vec<_> = (0..HELD)
        .map(|_| {
            let id = create(&n.url, KEY, json!({}));
            let exec = format!("{}/v1/cells/{id}/exec", n.url);
            let source = origin.source();
            std::thread::spawn(move || {
                send("POST", &exec, Some(KEY), Some(&json!({"source": source})))
            })
        })
        .collect();
    // Every exec is now inside its cell, waiting on this server.
    let conns: Vec<_> = (0..HELD).map(|_| origin.take()).collect();
    // A bound on the test itself, not an assertion: a held-up node would never answer.
    let bounded: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let health = bounded.get(&format!("{}/healthz", n.url)).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let id = create(&n.url, KEY, json!({}));
    let (s, j) = send(
        "POST",
        &format!("{}/v1/cells/{id}/exec", n.url),
        Some(KEY),
        Some(&json!({"source": "1 + 1"})),
    );
    assert_eq!((s, &j), (200, &json!({"result": 2})));
    conns.into_iter().for_each(answer_held);
    for h in held {
        assert_eq!(h.join().unwrap(), (200, json!({"result": 7})));
    }
}

#[test]
fn a_node_started_with_microvm_hosted_runs_its_microvm_cells_in_vm_hosts() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("SKIPPED: /dev/kvm is absent: no microVM cells here");
        return;
    }
    let mut config = config("node-hosted");
    config.microvm_hosted = true;
    let n = TestNode::start(config);
    session(&n.url, "microvm");
    let id = create(&n.url, KEY, json!({"backend": "microvm"}));
    assert_eq!(
        exec_ok(&n.url, KEY, &id, "6 * 7"),
        json!({"result": 42}),
        "a hosted cell answers like any other"
    );
    // The node's only cell (well below the 128 a default node keeps in its own process) lives
    // in a VM host, a child of this process.
    let hosts = backend_microvm::host_children();
    assert!(!hosts.is_empty(), "no VM host process was started");
    let (s, _) = send(
        "DELETE",
        &format!("{}/v1/cells/{id}", n.url),
        Some(KEY),
        None,
    );
    assert_eq!(s, 200);

    // A VM host killed from outside: its cell reads dead at once, before any exec, with its
    // reason (no other test of this binary hosts its cells).
    let id = create(&n.url, KEY, json!({"backend": "microvm"}));
    let cell = format!("{}/v1/cells/{id}", n.url);
    let host = *backend_microvm::host_children()
        .last()
        .expect("the cell's host");
    // SAFETY: pidfd_open of our own child, not reaped yet (its pid is not reused).
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, host as i32, 0) } as i32;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a plain kill(2) of the same child.
    assert_eq!(unsafe { libc::kill(host as i32, libc::SIGKILL) }, 0);
    let mut fd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded, as a SIGKILL makes the exit certain.
    let exited = unsafe { libc::poll(&mut fd, 1, 10_000) };
    // SAFETY: our own descriptor, used no more.
    unsafe { libc::close(pidfd) };
    assert_eq!(exited, 1, "the VM host exited");
    let (s, j) = send("GET", &cell, Some(KEY), None);
    assert_eq!(
        (s, j["state"].as_str(), j["reason"]["code"].as_str()),
        (200, Some("dead"), Some("cell_crashed")),
        "{j}"
    );
    let (s, _) = send("DELETE", &cell, Some(KEY), None);
    assert_eq!(s, 200);
}

#[test]
fn a_streamed_flood_of_events_ends_the_same_way_on_every_backend() {
    // 25,000 posts, more than a cell's queue holds (10,000), while a stream is open: the
    // streams drain the queue and a cell that posts faster waits for them. Before, subinterp
    // and microvm were stopped with limit_event_queue and process ran to the end.
    let n = TestNode::start(config("node-flood"));
    for backend in n.available_backends() {
        let id = create(&n.url, KEY, json!({"backend": backend}));
        let cell = format!("{}/v1/cells/{id}", n.url);
        let mut open = n.node().open_streams.subscribe();
        let reader = {
            let url = format!("{cell}/events");
            std::thread::spawn(move || read_events(&url, KEY, |l| l["event"] == "closed").len())
        };
        runtime().block_on(open.wait_for(|n| *n == 1)).unwrap();
        let (s, j) = send(
            "POST",
            &format!("{cell}/exec"),
            Some(KEY),
            Some(&json!({"source": "for i in 0..25000 { post(i) } \"done\""})),
        );
        assert_eq!((s, &j), (200, &json!({"result": "done"})), "{backend}");
        assert_eq!(send("DELETE", &cell, Some(KEY), None).0, 200);
        assert!(reader.join().unwrap() > 1, "{backend}: the stream ended");
        runtime().block_on(open.wait_for(|n| *n == 0)).unwrap();
    }
}
