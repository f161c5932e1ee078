//! What HTTP adds: an exec round trip in process and over loopback HTTP per backend, beside a
//! plain axum handler that does no work (the floor); create+exec+delete over HTTP; events per
//! second through a stream; then memory per idle cell and live subinterp cells held by one node.
//! `cargo bench -p cell-service --bench http` (CELL_BENCH_CELLS sets the capacity count).

use cell_service::{Listen, ServeConfig, Server};
use criterion::{Criterion, Throughput};
use serde_json::{Value as J, json};
use std::io::BufRead;
use std::time::{Duration, Instant};
use supervisor::{Policy, Supervisor};

const KEY: &str = "bench-key";

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn start() -> (Server, String) {
    let mut c = ServeConfig::new("127.0.0.1:0".parse::<Listen>().unwrap(), "bench");
    c.api_key = Some(KEY.into());
    c.limits.max_cells = 1_000_000;
    let noop = axum::Router::new().route(
        "/bench/noop",
        axum::routing::post(|body: axum::body::Bytes| async move {
            std::hint::black_box(body);
            axum::Json(json!({"result": 42}))
        }),
    );
    let s = rt().block_on(Server::start_with(c, noop)).unwrap();
    let url = s.url().unwrap();
    (s, url)
}

fn post(agent: &ureq::Agent, url: &str, body: &J) -> J {
    agent
        .post(url)
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap()
        .into_body()
        .read_to_string()
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap()
}

fn create(agent: &ureq::Agent, url: &str, backend: &str) -> String {
    post(
        agent,
        &format!("{url}/v1/cells"),
        &json!({"backend": backend}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn delete(agent: &ureq::Agent, url: &str, id: &str) {
    agent
        .delete(&format!("{url}/v1/cells/{id}"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .call()
        .unwrap();
}

fn round_trips(c: &mut Criterion, url: &str, backends: &[String]) {
    let agent = ureq::Agent::new_with_defaults();
    let exec = json!({"source": "40 + 2"});
    let mut g = c.benchmark_group("exec_round_trip");
    g.bench_function("plain_axum_handler", |b| {
        b.iter(|| post(&agent, &format!("{url}/bench/noop"), &exec))
    });
    let supervisor = Supervisor::new();
    for backend in backends {
        let cell = supervisor
            .spawn(&format!("inproc-{backend}"), backend, &Policy::default())
            .unwrap();
        g.bench_function(format!("in_process/{backend}"), |b| {
            b.iter(|| cell.exec("40 + 2").unwrap())
        });
        cell.close();
        let id = create(&agent, url, backend);
        let target = format!("{url}/v1/cells/{id}/exec");
        g.bench_function(format!("http/{backend}"), |b| {
            b.iter(|| assert_eq!(post(&agent, &target, &exec)["result"], 42))
        });
        delete(&agent, url, &id);
    }
    g.finish();

    let mut g = c.benchmark_group("create_exec_delete_http");
    for backend in backends {
        g.bench_function(backend.as_str(), |b| {
            b.iter(|| {
                let id = create(&agent, url, backend);
                post(&agent, &format!("{url}/v1/cells/{id}/exec"), &exec);
                delete(&agent, url, &id);
            })
        });
    }
    g.finish();
}

fn events(c: &mut Criterion, url: &str) {
    const N: u64 = 500;
    let agent = ureq::Agent::new_with_defaults();
    let id = create(&agent, url, "subinterp");
    let mut g = c.benchmark_group("events_stream");
    g.throughput(Throughput::Elements(N));
    let stream = agent
        .get(&format!("{url}/v1/cells/{id}/events"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .call()
        .unwrap();
    let mut lines = std::io::BufReader::new(stream.into_body().into_reader()).lines();
    let source = json!({"source": format!("for i in 0..{N} {{ post(i) }}")});
    g.bench_function("subinterp_posts", |b| {
        b.iter(|| {
            post(&agent, &format!("{url}/v1/cells/{id}/exec"), &source);
            for _ in 0..N {
                lines.next().unwrap().unwrap();
            }
        })
    });
    g.finish();
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// Idle subinterp cells held by one node, created over HTTP; memory per cell from RSS.
fn capacity(url: &str) {
    let n: usize = std::env::var("CELL_BENCH_CELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let agent = ureq::Agent::new_with_defaults();
    let before = rss_kib();
    let started = Instant::now();
    let ids: Vec<String> = (0..n).map(|_| create(&agent, url, "subinterp")).collect();
    let took = started.elapsed();
    let after = rss_kib();
    // Every cell still answers.
    let probe = [&ids[0], &ids[n / 2], &ids[n - 1]];
    for id in probe {
        assert_eq!(
            post(
                &agent,
                &format!("{url}/v1/cells/{id}/exec"),
                &json!({"source": "1 + 1"})
            )["result"],
            2
        );
    }
    println!(
        "capacity: {n} idle subinterp cells live on one node; created over HTTP in {:.2} s ({:.0} µs each); RSS {} MiB → {} MiB: {:.1} KiB per idle cell (server included)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64,
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    for id in &ids {
        delete(&agent, url, id);
    }
}

fn main() {
    let (server, url) = start();
    let backends: Vec<String> = server
        .node
        .supervisor
        .backends()
        .into_iter()
        .filter_map(|(name, ok)| match ok {
            Ok(()) => Some(name),
            Err(why) => {
                println!("SKIPPED: backend {name}: {why}");
                None
            }
        })
        .collect();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    round_trips(&mut c, &url, &backends);
    events(&mut c, &url);
    capacity(&url);
    c.final_summary();
    rt().block_on(server.kill());
}
