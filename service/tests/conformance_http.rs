//! The conformance scenarios through the HTTP API, on every backend this host has: one node on
//! loopback; each scenario's cell is created over HTTP under a tenant policy equal to the
//! scenario's setup, driven with `exec`/`call` requests, its events read from its NDJSON stream,
//! and the transcript compared with the same snapshot file (`conformance/snapshots/`) the
//! in-process runs use. A backend this host lacks shows every trial as ignored with the reason
//! (and a `SKIPPED` line); the few scenarios HTTP cannot express are ignored with theirs
//! ([`NOT_OVER_HTTP`]), never passed.

mod common;

use cell_service::node::Node;
use cell_service::{ServeConfig, hash_key};
use common::*;
use conformance::{Cell, RecvError, ScenarioCell, Setup, Target};
use libtest_mimic::{Arguments, Completion, Trial};
use serde_json::{Value as J, json};
use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use supervisor::json as cj;
use supervisor::{CellError, ErrorCode, Event, Level, Map, Value};

// As `cell serve` does: `memory_mib` binds subinterp cells.
#[global_allocator]
static ALLOCATOR: supervisor::AccountingAllocator = supervisor::AccountingAllocator;

/// Scenarios the HTTP API cannot express, with the reason; on every backend.
const NOT_OVER_HTTP: &[(&str, &str)] = &[
    (
        "close_cell",
        "closing a cell over HTTP is DELETE, after which the service forgets it (404 \
         cell_not_found, its events gone), where a closed host-side cell answers cell_closed \
         and keeps its queued events",
    ),
    (
        "deep_arguments",
        "a JSON request body nests at most 128 deep (serde_json's recursion limit), so the \
         200-deep argument is refused as 400 bad_request before the ABI's depth check words it",
    ),
];

const TENANT: &str = "conformance";

/// The tenants file, with one policy per distinct scenario setup, reloaded as it grows.
struct Policies {
    path: PathBuf,
    node: Arc<Node>,
    /// Policy table (as TOML text) → its name.
    names: Mutex<BTreeMap<String, String>>,
}

/// A setup as a policy table of the tenants file (every field given, so nothing is inherited).
fn policy_table(setup: &Setup) -> toml::Table {
    let abi::EngineLimits {
        max_operations,
        max_call_depth,
        max_expr_depth,
        max_string_len,
        max_array_len,
        max_map_len,
    } = setup.limits.clone();
    let abi::backend::Resources {
        memory_bytes,
        cpu_time_ms,
        max_processes,
        max_open_files,
    } = setup.resources.clone();
    let supervisor::policy::Channel {
        max_frame_bytes,
        max_queued_events,
        max_queued_bytes,
        max_frame_memory,
    } = setup.channel.clone();
    let wall_time_ms = setup.wall_time.map_or(0, |d| d.as_millis() as u64);
    let text = format!(
        "modules = {modules:?}\n\
         [limits]\n\
         max_operations = {max_operations}\nmax_call_depth = {max_call_depth}\n\
         max_expr_depth = {max_expr_depth}\nmax_string_len = {max_string_len}\n\
         max_array_len = {max_array_len}\nmax_map_len = {max_map_len}\n\
         wall_time_ms = {wall_time_ms}\nmemory_mib = {memory_mib}\ncpu_time_ms = {cpu_time_ms}\n\
         max_processes = {max_processes}\nmax_open_files = {max_open_files}\n\
         [channel]\n\
         max_frame_bytes = {max_frame_bytes}\nmax_queued_events = {max_queued_events}\n\
         max_queued_bytes = {max_queued_bytes}\nmax_frame_memory = {max_frame_memory}\n",
        modules = setup.modules,
        memory_mib = memory_bytes >> 20,
    );
    let mut table: toml::Table = toml::from_str(&text).expect("policy table");
    let rules = toml::Table::try_from(&setup.rules).expect("rules as TOML");
    table.extend(rules);
    table
}

impl Policies {
    /// The name of the tenant's policy equal to `setup`, added (and the node reloaded) if new.
    fn name_of(&self, setup: &Setup) -> String {
        let table = policy_table(setup);
        let key = toml::to_string(&table).expect("policy as TOML");
        let mut names = self.names.lock().unwrap();
        if let Some(name) = names.get(&key) {
            return name.clone();
        }
        let name = format!("setup{}", names.len());
        names.insert(key, name.clone());
        let policies: toml::Table = names
            .iter()
            .map(|(text, name)| (name.clone(), toml::from_str(text).expect("policy")))
            .collect();
        let file = json!({"tenant": [{
            "name": TENANT, "keys": [hash_key(KEY)], "policies": policies,
        }]});
        let file: toml::Table = serde_json::from_value(file).expect("tenants as TOML");
        std::fs::write(&self.path, toml::to_string(&file).unwrap()).expect("write tenants");
        self.node.reload().expect("the tenants file reloads");
        // The node now holds exactly the scenario's setup under that name.
        let policy = self
            .node
            .tenants()
            .authenticate(KEY)
            .and_then(|t| t.policy(Some(&name)))
            .expect("the policy is loaded");
        assert_eq!(policy.engine_limits(), setup.limits);
        assert_eq!(policy.modules, setup.modules);
        assert_eq!(policy.spawn_spec("x").resources, setup.resources);
        assert_eq!(policy.channel, setup.channel);
        assert_eq!(policy.wall_time(), setup.wall_time);
        assert_eq!(policy.rules(), setup.rules);
        name
    }
}

/// One backend of the node, as the scenarios see it.
struct HttpTarget {
    url: String,
    backend: String,
    policies: Arc<Policies>,
}

/// The service's `{code, message}` as the cell error it stands for; a code of the service's
/// own (404, 400, ...) is no cell outcome and fails the scenario, naming what came back.
fn cell_error(status: u16, body: &J) -> CellError {
    let code = body["code"].as_str().unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default();
    match ErrorCode::ALL.iter().find(|c| c.name() == code) {
        Some(c) => CellError::new(*c, message),
        None => panic!("the service answered {status} {body}, which no cell outcome is"),
    }
}

fn outcome(status: u16, body: J) -> Result<Value, CellError> {
    match status {
        200 => Ok(cj::parse_value(&body["result"])),
        _ => Err(cell_error(status, &body)),
    }
}

impl Target for HttpTarget {
    fn name(&self) -> &str {
        &self.backend
    }

    fn spawn(&self, name: &str, setup: &Setup) -> Result<Cell, CellError> {
        let policy = self.policies.name_of(setup);
        let (status, body) = send(
            "POST",
            &format!("{}/v1/cells", self.url),
            Some(KEY),
            Some(&json!({
                "backend": self.backend, "policy": policy, "labels": {"scenario": name},
            })),
        );
        if status != 201 {
            return Err(cell_error(status, &body));
        }
        let id = body["id"].as_str().expect("an id");
        Ok(Arc::new(HttpCell {
            cell: format!("{}/v1/cells/{id}", self.url),
            events: Mutex::default(),
            deleted: AtomicBool::new(false),
        }))
    }
}

/// A cell held by the node, driven over HTTP.
struct HttpCell {
    cell: String,
    events: Mutex<Events>,
    /// This client deleted the cell (its `kill`).
    deleted: AtomicBool,
}

/// What this client has read of the cell's event stream.
#[derive(Default)]
struct Events {
    /// The last `seq` read.
    after: u64,
    lines: VecDeque<J>,
    closed: Option<CellError>,
}

fn event(line: &J) -> Event {
    let text = |k: &str| line[k].as_str().unwrap_or_default().to_string();
    let float = |j: &J| {
        j.as_f64()
            .or_else(|| j.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("a float, not {j}"))
    };
    match line["event"].as_str() {
        Some("post") => Event::Post(cj::parse_value(&line["value"])),
        Some("log") => Event::Log {
            level: Level::from_name(&text("level")).expect("a level"),
            message: text("message"),
            fields: match cj::parse_value(&line["fields"]) {
                Value::Map(m) => m,
                other => panic!("log fields {other:?}"),
            },
        },
        Some("metric") => Event::Metric {
            name: text("name"),
            value: float(&line["value"]),
            tags: serde_json::from_value(line["tags"].clone()).expect("tags"),
        },
        _ => panic!("an unexpected event line {line}"),
    }
}

impl HttpCell {
    /// Reads every line the node holds past the cursor. The node moves a cell's events into
    /// its stream when each exec/call ends, so between them what the stream holds is all there
    /// is: `last_seq` says where it ends, and nothing is waited for.
    fn fetch(&self, ev: &mut Events) {
        let (status, info) = send("GET", &self.cell, Some(KEY), None);
        assert_eq!(status, 200, "{info}");
        let last = info["stats"]["last_seq"].as_u64().expect("last_seq");
        if last <= ev.after {
            return;
        }
        Self::read(self.stream(ev.after), ev, |ev, _| ev.after >= last);
    }

    /// Opens the event stream after `after`.
    fn stream(&self, after: u64) -> impl Iterator<Item = J> {
        let resp = agent()
            .get(&format!("{}/events?after={after}", self.cell))
            .header("Authorization", &format!("Bearer {KEY}"))
            .call()
            .expect("the events stream");
        assert_eq!(resp.status().as_u16(), 200);
        std::io::BufReader::new(resp.into_body().into_reader())
            .lines()
            .map(|line| serde_json::from_str(&line.expect("a line")).expect("JSON"))
    }

    /// Reads lines into `ev` until `stop` (told each line, heartbeats included) says so.
    fn read(
        lines: impl Iterator<Item = J>,
        ev: &mut Events,
        mut stop: impl FnMut(&Events, &J) -> bool,
    ) {
        for line in lines {
            match line["event"].as_str() {
                Some("heartbeat") => {}
                Some("gap") => panic!("events were lost: {line}"),
                _ => {
                    ev.after = line["seq"].as_u64().expect("seq");
                    ev.lines.push_back(line.clone());
                }
            }
            if stop(ev, &line) {
                break;
            }
        }
    }

    /// Waits on the live stream for the next line, until a heartbeat comes past `deadline`. An
    /// open stream moves the cell's events as they are queued, so this is how an event posted by
    /// an exec still running is read.
    fn wait_live(&self, ev: &mut Events, deadline: Instant) {
        let stream = self.stream(ev.after);
        Self::read(stream, ev, |ev, line| {
            !ev.lines.is_empty() || (line["event"] == "heartbeat" && Instant::now() >= deadline)
        });
    }

    /// The service's answer to an exec/call; after this client deleted the cell the node has
    /// forgotten it (404 `cell_not_found`), which is how a killed cell is closed over HTTP.
    fn outcome(&self, status: u16, body: J) -> Result<Value, CellError> {
        if status == 404 && body["code"] == "cell_not_found" && self.deleted.load(Ordering::SeqCst)
        {
            let message = body["message"].as_str().unwrap_or_default();
            return Err(CellError::new(ErrorCode::CellClosed, message));
        }
        outcome(status, body)
    }
}

impl ScenarioCell for HttpCell {
    fn exec(&self, source: &str) -> Result<Value, CellError> {
        let (s, j) = send(
            "POST",
            &format!("{}/exec", self.cell),
            Some(KEY),
            Some(&json!({ "source": source })),
        );
        self.outcome(s, j)
    }

    fn call(&self, function: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, CellError> {
        let args: Vec<J> = args.iter().map(cj::value).collect();
        let kwargs: serde_json::Map<String, J> = kwargs
            .iter()
            .map(|(k, v)| (k.clone(), cj::value(v)))
            .collect();
        let (s, j) = send(
            "POST",
            &format!("{}/call", self.cell),
            Some(KEY),
            Some(&json!({ "function": function, "args": args, "kwargs": kwargs })),
        );
        self.outcome(s, j)
    }

    /// The next event the stream holds. Between execs nothing buffered is a timeout at once:
    /// the node has moved every event of the finished exec/call already. A long timeout (a
    /// scenario waiting for an event on its way from a running exec) waits on the live stream.
    fn recv(&self, timeout: Option<Duration>) -> Result<Event, RecvError> {
        let mut ev = self.events.lock().unwrap();
        if let Some(reason) = &ev.closed {
            return Err(RecvError::Closed(reason.clone()));
        }
        if ev.lines.is_empty() {
            self.fetch(&mut ev);
        }
        if ev.lines.is_empty() {
            match timeout {
                Some(t) if t < Duration::from_secs(1) => {}
                Some(t) => self.wait_live(&mut ev, Instant::now() + t),
                None => self.wait_live(&mut ev, Instant::now() + Duration::from_secs(3600)),
            }
        }
        let Some(line) = ev.lines.pop_front() else {
            return Err(RecvError::Timeout);
        };
        if line["event"] == "closed" {
            let reason = cell_error(200, &line);
            ev.closed = Some(reason.clone());
            return Err(RecvError::Closed(reason));
        }
        Ok(event(&line))
    }

    /// DELETE (once), read on the stream opened before it: it ends with the `closed` line.
    fn kill(&self) {
        let mut ev = self.events.lock().unwrap();
        if self.deleted.load(Ordering::SeqCst) {
            // The harness closes every cell at the end; this one is gone already.
            return;
        }
        let stream = self.stream(ev.after);
        let (s, j) = send("DELETE", &self.cell, Some(KEY), None);
        assert_eq!(s, 200, "{j}");
        self.deleted.store(true, Ordering::SeqCst);
        Self::read(stream, &mut ev, |_, line| line["event"] == "closed");
    }

    fn close(&self) {
        self.kill()
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tenants.toml");
    let empty = json!({"tenant": [{"name": TENANT, "keys": [hash_key(KEY)]}]});
    let empty: toml::Table = serde_json::from_value(empty).unwrap();
    std::fs::write(&path, toml::to_string(&empty).unwrap()).unwrap();
    let mut config: ServeConfig = config("node-conformance");
    config.api_key = None;
    config.tenants_file = Some(path.clone());
    let node = TestNode::start(config);
    let policies = Arc::new(Policies {
        path,
        node: node.node().clone(),
        names: Mutex::default(),
    });
    let mut trials = Vec::new();
    for (backend, available) in node.node().supervisor.backends() {
        if let Err(why) = &available {
            eprintln!(
                "SKIPPED: conformance over HTTP on backend `{backend}`: {why} (every trial \
                 shows as ignored)"
            );
        }
        let target = Arc::new(HttpTarget {
            url: node.url.clone(),
            backend: backend.clone(),
            policies: policies.clone(),
        });
        for scenario in conformance::all_scenarios() {
            let name = scenario.name;
            let trial_name = format!("http::{backend}::{name}");
            let skip = match (&available, NOT_OVER_HTTP.iter().find(|(s, _)| *s == name)) {
                (Err(why), _) => Some(format!("backend `{backend}` cannot run here: {why}")),
                (Ok(()), Some((_, why))) => Some(format!("not expressible over HTTP: {why}")),
                (Ok(()), None) => None,
            };
            let target = target.clone();
            trials.push(Trial::ignorable_test(trial_name, move || match skip {
                Some(why) => Ok(Completion::ignored_with(why)),
                None => {
                    conformance::check_scenario(&*target, name);
                    Ok(Completion::Completed)
                }
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    assert!(node.node().is_empty() || conclusion.has_failed());
    drop(node);
    if conclusion.has_failed() {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}
