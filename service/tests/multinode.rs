//! Three nodes on loopback: cells spread, requests redirected to the owning node, one node
//! killed (its cells gone, the others carry on), one drained.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn three_nodes_redirect_survive_a_kill_and_drain() {
    let names = ["n1", "n2", "n3"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let peers: std::collections::BTreeMap<String, String> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| (n.to_string(), format!("http://127.0.0.1:{p}")))
        .collect();
    let mut nodes: Vec<Option<TestNode>> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            let mut c = config(name);
            c.listen = format!("127.0.0.1:{port}").parse().unwrap();
            c.peers.map = peers.clone();
            c.limits.drain_grace = Duration::from_secs(600);
            Some(TestNode::start(c))
        })
        .collect();
    let url = |i: usize| peers[names[i]].clone();

    // Two cells per node, each holding its node's name.
    let mut cells = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..2 {
            let source = format!("fn whoami() {{ \"{name}\" }}");
            let id = create(&url(i), KEY, json!({ "source": source }));
            assert!(id.starts_with(&format!("{name}_")));
            cells.push((i, id));
        }
    }
    // Every node answers for every cell: its own directly, the others' with a 307 whose
    // Location works, method and body kept.
    for (owner, id) in &cells {
        for asked in 0..3 {
            let (s, j) = send(
                "POST",
                &format!("{}/v1/cells/{id}/call", url(asked)),
                Some(KEY),
                Some(&json!({"function": "whoami"})),
            );
            if asked == *owner {
                assert_eq!((s, &j["result"]), (200, &json!(names[*owner])));
            } else {
                assert_eq!(s, 307, "{j}");
                let location = j["$location"].as_str().unwrap();
                assert_eq!(location, format!("{}/v1/cells/{id}/call", url(*owner)));
                let (s, j) = send(
                    "POST",
                    location,
                    Some(KEY),
                    Some(&json!({"function": "whoami"})),
                );
                assert_eq!((s, &j["result"]), (200, &json!(names[*owner])));
            }
        }
    }
    // Kill n3: its cells are gone (the redirect leads nowhere), n1 and n2 carry on.
    nodes[2].take().unwrap().kill();
    let (_, dead) = &cells[4];
    let (s, j) = send(
        "GET",
        &format!("{}/v1/cells/{dead}", url(0)),
        Some(KEY),
        None,
    );
    assert_eq!(s, 307);
    assert!(
        agent()
            .get(j["$location"].as_str().unwrap())
            .call()
            .is_err(),
        "n3 is gone"
    );
    for (owner, id) in cells.iter().filter(|(o, _)| *o < 2) {
        let (s, _) = send(
            "POST",
            &format!("{}/v1/cells/{id}/exec", url(*owner)),
            Some(KEY),
            Some(&json!({"source": "1"})),
        );
        assert_eq!(s, 200);
    }

    // Drain n2: not ready and no new cells at once; its live cells keep working until they are
    // deleted (or the grace ends); then it stops.
    let n2 = nodes[1].take().unwrap();
    let node2 = n2.node().clone();
    node2.start_drain();
    let mut server = n2;
    let drained = runtime().spawn(server.server.take().unwrap().drain());
    assert_eq!(
        send("GET", &format!("{}/readyz", url(1)), None, None).0,
        503
    );
    let (s, j) = send(
        "POST",
        &format!("{}/v1/cells", url(1)),
        Some(KEY),
        Some(&json!({})),
    );
    assert_eq!((s, j["code"].as_str()), (503, Some("draining")));
    let (s, j) = send("GET", &format!("{}/v1/node", url(1)), Some(KEY), None);
    assert_eq!((s, &j["draining"]), (200, &json!(true)));
    let n2_cells: Vec<_> = cells
        .iter()
        .filter(|(o, _)| *o == 1)
        .map(|(_, id)| id.clone())
        .collect();
    for id in &n2_cells {
        let (s, _) = send(
            "POST",
            &format!("{}/v1/cells/{id}/exec", url(1)),
            Some(KEY),
            Some(&json!({"source": "2"})),
        );
        assert_eq!(s, 200);
    }
    for id in &n2_cells {
        assert_eq!(
            send(
                "DELETE",
                &format!("{}/v1/cells/{id}", url(1)),
                Some(KEY),
                None
            )
            .0,
            200
        );
    }
    runtime().block_on(drained).unwrap();
    assert!(node2.is_empty());
    assert!(
        agent().get(&format!("{}/healthz", url(1))).call().is_err(),
        "n2 stopped listening"
    );
    // n1 still serves.
    create(&url(0), KEY, json!({}));
    drop(server);
}

#[test]
fn drain_kills_what_is_left_after_the_grace() {
    let mut c = config("n-grace");
    c.limits.drain_grace = Duration::from_millis(200);
    let mut n = TestNode::start(c);
    let id = create(&n.url, KEY, json!({}));
    let events = format!("{}/v1/cells/{id}/events", n.url);
    let reader = std::thread::spawn(move || read_events(&events, KEY, |l| l["event"] == "closed"));
    let mut open = n.node().open_streams.subscribe();
    runtime().block_on(open.wait_for(|n| *n == 1)).unwrap();
    let node = n.node().clone();
    runtime().block_on(n.server.take().unwrap().drain());
    assert!(node.is_empty());
    let lines = reader.join().unwrap();
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "closed");
    assert!(
        last["message"].as_str().unwrap().contains("drained"),
        "{last}"
    );
}
