//! The broker behind `request` through the supervisor: grants from the policy, typed denials
//! a script can catch, per-cell handlers, audit from the CLI, and a guest blocked in `request`
//! that is still killable.

use cell_supervisor::broker::{Broker, MemoryAudit};
use cell_supervisor::{ErrorCode, Policy, Supervisor, SupervisorError, Value};
use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, mpsc};

fn supervisor_with_process() -> Supervisor {
    let s = Supervisor::new();
    s.register_backend(Arc::new(backend_process::ProcessBackend::new()));
    s
}

/// Backends available here among subinterp and process.
fn backends(s: &Supervisor) -> Vec<String> {
    s.backends()
        .into_iter()
        .filter(|(name, ok)| {
            if let Err(why) = ok {
                eprintln!("SKIPPED backend {name}: {why}");
            }
            ok.is_ok() && (name == "subinterp" || name == "process")
        })
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn grants_from_the_policy_reach_scripts_and_denials_are_catchable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi there").unwrap();
    let root = dir.path().to_str().unwrap();
    let policy = Policy::from_toml(&format!(
        "[[grants]]\ncapability = \"fs\"\nactions = [\"read\", \"list\"]\nroots = [\"{root}\"]\n\
         [[denies]]\ncapability = \"fs\"\nactions = [\"list\"]"
    ))
    .unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let supervisor = supervisor_with_process();
    supervisor.set_broker(Broker::builder().audit(audit.clone()).build().unwrap());
    for backend in backends(&supervisor) {
        let cell = supervisor
            .spawn(&format!("g-{backend}"), &backend, &policy)
            .unwrap();
        let read = cell
            .exec(&format!(
                "let b = request(\"fs\", \"read\", #{{root: \"{root}\", path: \"hello.txt\"}}); b.len()"
            ))
            .unwrap();
        assert_eq!(read, Value::Int(8), "{backend}");
        let caught = cell
            .exec(&format!(
                "let r = (); try {{ request(\"fs\", \"list\", #{{root: \"{root}\"}}) }} catch (e) {{ r = [e.code, e.name, e.message] }} r"
            ))
            .unwrap();
        let Value::List(items) = caught else {
            panic!("{caught:?}")
        };
        assert_eq!(items[0], Value::Int(5));
        assert_eq!(items[1], Value::Str("denied".into()));
        let Value::Str(message) = &items[2] else {
            panic!()
        };
        assert!(
            message.contains("`fs`") && message.contains("denies[0]"),
            "{message}"
        );
        // Uncaught, the caller gets the typed error.
        let err = cell
            .exec(&format!(
                "request(\"fs\", \"read\", #{{root: \"{root}\", path: \"../x\"}})"
            ))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied);
        // Not granted at all.
        let err = cell.exec("request(\"clock\", \"wall\")").unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied);
        assert!(err.message.contains("default-deny"), "{err}");
        cell.close();
    }
    let records = audit.records();
    assert!(
        records
            .iter()
            .any(|r| r.rule == "denies[0]" && r.backend != "subinterp")
            || backends(&supervisor).len() == 1
    );
    assert!(records.iter().all(|r| r.cell.starts_with("g-")));
}

/// A file larger than the cell's largest reply is refused by the broker before it is read, with
/// the code the host gives an over-cap reply and a message naming the limit; on every backend
/// alike, and the cell carries on. A file within it is read whole.
#[test]
fn fs_reads_are_bounded_by_the_cells_frame_cap() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big"), vec![b'x'; 5000]).unwrap();
    std::fs::write(dir.path().join("fits"), vec![b'y'; 3000]).unwrap();
    let root = dir.path().to_str().unwrap();
    let policy = Policy::from_toml(&format!(
        "[channel]\nmax_frame_bytes = 4096\n\
         [[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"{root}\"]"
    ))
    .unwrap();
    let supervisor = supervisor_with_process();
    for backend in backends(&supervisor) {
        let cell = supervisor
            .spawn(&format!("r-{backend}"), &backend, &policy)
            .unwrap();
        let err = cell
            .exec(&format!(
                "request(\"fs\", \"read\", #{{root: \"{root}\", path: \"big\"}})"
            ))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitFrameSize, "{backend}: {err}");
        assert!(
            err.message.contains("`big` has 5000 bytes") && err.message.contains("max_frame_bytes"),
            "{backend}: {err}"
        );
        let read = cell
            .exec(&format!(
                "request(\"fs\", \"read\", #{{root: \"{root}\", path: \"fits\"}}).len()"
            ))
            .unwrap();
        assert_eq!(read, Value::Int(3000), "{backend}");
        cell.close();
    }
}

/// A cell whose policy grants nothing is refused by the supervisor's handler, before and after
/// a cell with grants made the supervisor its default broker: the same policy answers the same.
#[test]
fn a_policy_without_rules_is_refused_alike_before_and_after_a_grant() {
    let s = Supervisor::new();
    let refusal = |name: &str| {
        let cell = s.spawn(name, "subinterp", &Policy::default()).unwrap();
        let err = cell.exec("request(\"clock\", \"wall\")").unwrap_err();
        cell.close();
        assert_eq!(err.code, ErrorCode::Denied);
        err.message.replace(name, "<cell>")
    };
    let before = refusal("before");
    let granted =
        Policy::from_toml("[[grants]]\ncapability = \"clock\"\nactions = [\"wall\"]").unwrap();
    let cell = s.spawn("granted", "subinterp", &granted).unwrap();
    cell.exec("request(\"clock\", \"wall\")").unwrap();
    cell.close();
    assert_eq!(refusal("after"), before);
}

#[test]
fn grants_that_do_not_hold_refuse_the_spawn() {
    let policy = Policy::from_toml(
        "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"/nonexistent/cell-root\"]",
    )
    .unwrap();
    let supervisor = Supervisor::new();
    match supervisor.spawn("bad", "subinterp", &policy) {
        Err(SupervisorError::Grants(e)) => {
            assert!(e.to_string().contains("/nonexistent/cell-root"))
        }
        other => panic!("{other:?}"),
    }
    let kv = Policy::from_toml("[[grants]]\ncapability = \"kv\"\nactions = [\"get\"]").unwrap();
    let err = supervisor.spawn("kv", "subinterp", &kv).unwrap_err();
    assert!(err.to_string().contains("kv"), "{err}");
    // Without grants or a broker, requests are denied as before.
    let cell = supervisor
        .spawn("plain", "subinterp", &Policy::default())
        .unwrap();
    assert_eq!(
        cell.exec("request(\"clock\", \"wall\")").unwrap_err().code,
        ErrorCode::Denied
    );
}

#[test]
fn kv_survives_a_supervisor_restart() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml("[[grants]]\ncapability = \"kv\"\nactions = [\"*\"]").unwrap();
    {
        let supervisor = Supervisor::new();
        supervisor.set_broker(Broker::builder().kv_dir(dir.path()).build().unwrap());
        let cell = supervisor.spawn("store", "subinterp", &policy).unwrap();
        cell.exec("request(\"kv\", \"put\", #{key: \"n\", value: 41})")
            .unwrap();
        cell.close();
    }
    let supervisor = Supervisor::new();
    supervisor.set_broker(Broker::builder().kv_dir(dir.path()).build().unwrap());
    let cell = supervisor.spawn("store", "subinterp", &policy).unwrap();
    assert_eq!(
        cell.exec("request(\"kv\", \"get\", #{key: \"n\"}) + 1")
            .unwrap(),
        Value::Int(42)
    );
}

#[test]
fn a_guest_blocked_in_request_can_be_killed() {
    // A loopback server that accepts and never answers; the grant's timeout is ten minutes, so
    // only the kill can end the request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (accepted, connected) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let mut s = stream;
            let _ = s.read(&mut buf);
            let _ = accepted.send(());
            held.push(s);
        }
    });
    let policy = Policy::from_toml(&format!(
        "[[grants]]\ncapability = \"http\"\nactions = [\"get\"]\norigins = [\"{origin}\"]\ntimeout_ms = 600000\n\
         [limits]\nwall_time_ms = 0"
    ))
    .unwrap();
    let supervisor = supervisor_with_process();
    for backend in backends(&supervisor) {
        let cell = supervisor
            .spawn(&format!("k-{backend}"), &backend, &policy)
            .unwrap();
        let runner = {
            let cell = cell.clone();
            let origin = origin.clone();
            std::thread::spawn(move || {
                cell.exec(&format!(
                    "request(\"http\", \"get\", #{{url: \"{origin}/hang\"}})"
                ))
            })
        };
        connected.recv().unwrap(); // the request is in flight, the guest blocked in it
        cell.kill();
        let err = runner.join().unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Cancelled, "{backend}: {err}");
        assert!(
            cell.exec("1").is_err(),
            "{backend}: a killed cell runs nothing"
        );
    }
}

/// Blocks every request until the test ends (its sender is dropped).
struct Hold(std::sync::Mutex<mpsc::Receiver<()>>);

impl cell_supervisor::broker::Capability for Hold {
    fn name(&self) -> &str {
        "hold"
    }
    fn actions(&self) -> &[&str] {
        &["wait"]
    }
    fn execute(
        &self,
        _: &cell_supervisor::broker::Call,
    ) -> Result<Value, cell_supervisor::broker::CapabilityError> {
        let _ = self.0.lock().unwrap().recv();
        Ok(Value::Unit)
    }
}

#[test]
fn the_wall_time_limit_ends_a_request_in_flight() {
    // The grant allows ten minutes; the cell's wall time is 300 ms. The exec ends timed_out
    // (it would hang, not fail on a clock, if the deadline did not reach the broker).
    let (_release, held) = mpsc::channel();
    let supervisor = supervisor_with_process();
    supervisor.set_broker(
        Broker::builder()
            .register(Arc::new(Hold(std::sync::Mutex::new(held))))
            .build()
            .unwrap(),
    );
    let policy = Policy::from_toml(
        "[[grants]]\ncapability = \"hold\"\nactions = [\"wait\"]\ntimeout_ms = 600000\n\
         [limits]\nwall_time_ms = 300",
    )
    .unwrap();
    for backend in backends(&supervisor) {
        let cell = supervisor
            .spawn(&format!("d-{backend}"), &backend, &policy)
            .unwrap();
        let err = cell.exec("request(\"hold\", \"wait\", ())").unwrap_err();
        assert_eq!(err.code, ErrorCode::TimedOut, "{backend}: {err}");
    }
}
