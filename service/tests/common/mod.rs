//! A node on loopback, driven with a real HTTP client.
#![allow(dead_code)]

use cell_service::{Listen, ServeConfig, Server};
use serde_json::Value as J;
use std::sync::{Arc, OnceLock};
use tokio::runtime::Runtime;

pub const KEY: &str = "test-key-0123456789";

pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        )
    })
    .clone()
}

pub fn config(node: &str) -> ServeConfig {
    let mut c = ServeConfig::new("127.0.0.1:0".parse::<Listen>().unwrap(), node);
    c.api_key = Some(KEY.into());
    c
}

/// A node config whose base policy lets a script run without end (no operation or wall-time
/// limit); the directory holds the policy file and must outlive the node's start.
pub fn endless_config(node: &str) -> (tempfile::TempDir, ServeConfig) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[limits]\nmax_operations = 0\nwall_time_ms = 0\n").unwrap();
    let mut c = config(node);
    c.policy_file = Some(policy);
    (dir, c)
}

pub struct TestNode {
    pub url: String,
    pub server: Option<Server>,
}

impl TestNode {
    pub fn start(config: ServeConfig) -> TestNode {
        TestNode::start_with(config, axum::Router::new())
    }

    pub fn start_with(
        config: ServeConfig,
        extra: axum::Router<cell_service::api::AppState>,
    ) -> TestNode {
        let server = runtime()
            .block_on(Server::start_with(config, extra))
            .expect("the node starts");
        TestNode {
            url: server.url().unwrap(),
            server: Some(server),
        }
    }

    pub fn node(&self) -> &Arc<cell_service::node::Node> {
        &self.server.as_ref().unwrap().node
    }

    /// The backends this host runs, each unavailable one named as skipped.
    pub fn available_backends(&self) -> Vec<String> {
        let mut available = Vec::new();
        for (backend, up) in self.node().supervisor.backends() {
            match up {
                Ok(()) => available.push(backend),
                Err(why) => println!("SKIPPED: backend {backend} is unavailable here: {why}"),
            }
        }
        available
    }

    pub fn kill(mut self) {
        let s = self.server.take().unwrap();
        runtime().block_on(s.kill());
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            runtime().block_on(s.kill());
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// (status, JSON body or the text as a JSON string)
pub fn send(method: &str, url: &str, key: Option<&str>, body: Option<&J>) -> (u16, J) {
    send_raw(method, url, key, body.map(|b| b.to_string()))
}

pub fn send_raw(method: &str, url: &str, key: Option<&str>, body: Option<String>) -> (u16, J) {
    let a = agent();
    let auth = key.map(|k| format!("Bearer {k}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = a.delete(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        ("POST", body) => {
            let mut r = a.post(url).header("content-type", "application/json");
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(body.unwrap_or_default())
        }
        _ => unreachable!(),
    }
    .expect("the request gets an answer");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let text = resp.into_body().read_to_string().unwrap_or_default();
    let mut j = serde_json::from_str(&text).unwrap_or(J::String(text));
    if let (Some(l), J::Object(m)) = (location, &mut j) {
        m.insert("$location".into(), l.into());
    }
    (status, j)
}

pub fn create(url: &str, key: &str, body: J) -> String {
    let (s, j) = send("POST", &format!("{url}/v1/cells"), Some(key), Some(&body));
    assert_eq!(s, 201, "{j}");
    j["id"].as_str().unwrap().to_string()
}

/// Deletes cell `id`, which must answer 200.
pub fn delete_ok(url: &str, key: &str, id: &str) {
    let (s, j) = send("DELETE", &format!("{url}/v1/cells/{id}"), Some(key), None);
    assert_eq!(s, 200, "{j}");
}

/// Runs `source` in cell `id` and returns the answer, which must be a 200.
pub fn exec_ok(url: &str, key: &str, id: &str, source: &str) -> J {
    let (s, j) = send(
        "POST",
        &format!("{url}/v1/cells/{id}/exec"),
        Some(key),
        Some(&serde_json::json!({ "source": source })),
    );
    assert_eq!(s, 200, "{j}");
    j
}

/// Reads an event stream's lines until `until` says stop; returns them.
pub fn read_events(url: &str, key: &str, mut until: impl FnMut(&J) -> bool) -> Vec<J> {
    use std::io::BufRead;
    let resp = agent()
        .get(url)
        .header("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = std::io::BufReader::new(resp.into_body().into_reader());
    let mut out = Vec::new();
    for line in reader.lines() {
        let j: J = serde_json::from_str(&line.unwrap()).unwrap();
        let stop = until(&j);
        out.push(j);
        if stop {
            break;
        }
    }
    out
}

/// Starts `post(1); loop {}` in cell `id` (its policy must let it run) and returns once the post
/// has come out on the cell's event stream, so the exec is known to be running; the handle
/// gives the exec's answer when something ends it.
pub fn start_endless_exec(url: &str, key: &str, id: &str) -> std::thread::JoinHandle<(u16, J)> {
    let cell = format!("{url}/v1/cells/{id}");
    let running = {
        let (cell, key) = (cell.clone(), key.to_string());
        std::thread::spawn(move || {
            let body = serde_json::json!({"source": "post(1); loop {}"});
            send("POST", &format!("{cell}/exec"), Some(&key), Some(&body))
        })
    };
    // Ends on the post, or on a heartbeat (15 s of nothing: the exec never started).
    let lines = read_events(&format!("{cell}/events"), key, |l| {
        l["seq"] == 1 || l["event"] == "heartbeat"
    });
    assert_eq!(
        lines.last().unwrap()["seq"],
        1,
        "the exec is running: {lines:?}"
    );
    running
}

/// A server on loopback that cells' `request("http", "get", ...)` calls wait on until the test
/// answers them, and a node config whose base policy grants them; the directory holds the
/// policy file and must outlive the node's start.
pub struct HeldOrigin {
    pub listener: std::net::TcpListener,
    pub origin: String,
    pub dir: tempfile::TempDir,
}

impl HeldOrigin {
    pub fn config(node: &str) -> (HeldOrigin, ServeConfig) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]\norigins = [\"{origin}\"]\n"
            ),
        )
        .unwrap();
        let mut c = config(node);
        c.policy_file = Some(policy);
        (
            HeldOrigin {
                listener,
                origin,
                dir,
            },
            c,
        )
    }

    /// A script that waits on this server, then gives 7.
    pub fn source(&self) -> String {
        format!(
            "request(\"http\", \"get\", #{{url: \"{}/x\"}}); 7",
            self.origin
        )
    }

    /// The next request a cell makes, taken and held: the cell waits until [`answer_held`].
    pub fn take(&self) -> std::net::TcpStream {
        self.listener.accept().unwrap().0
    }
}

/// Answers a held request `200 ok`, letting its cell go on.
pub fn answer_held(conn: std::net::TcpStream) {
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
        line.clear();
    }
    let mut conn = conn;
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .unwrap();
}
