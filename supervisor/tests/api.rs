//! The supervisor API on the in-process backend: names, list, concurrency, kill, tracing.

use cell_supervisor::{
    CellState, ErrorCode, Event, Map, Policy, RecvError, Supervisor, SupervisorError, Value,
};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn names_are_validated_and_unique_among_live_cells() {
    let s = Supervisor::new();
    assert!(matches!(
        s.spawn("", "subinterp", &Policy::default()),
        Err(SupervisorError::InvalidName(_))
    ));
    for bad in ["a b", ".", "..", "...", &"x".repeat(65)] {
        assert!(
            matches!(
                s.spawn(bad, "subinterp", &Policy::default()),
                Err(SupervisorError::InvalidName(_))
            ),
            "{bad}"
        );
    }
    let dotted = s.spawn("a.b", "subinterp", &Policy::default()).unwrap();
    dotted.close();
    let a = s.spawn("a", "subinterp", &Policy::default()).unwrap();
    assert!(matches!(
        s.spawn("a", "subinterp", &Policy::default()),
        Err(SupervisorError::NameTaken(_))
    ));
    a.close();
    // A closed cell's name can be reused.
    let again = s.spawn("a", "subinterp", &Policy::default()).unwrap();
    assert_eq!(again.exec("1").unwrap(), Value::Int(1));
    let err = s.spawn("b", "warp-drive", &Policy::default()).unwrap_err();
    assert!(err.to_string().contains("subinterp"), "{err}");
    // A hostile name or backend is quoted back cut short and escaped.
    let huge = format!("\u{1b}[2J{}", "x".repeat(100_000));
    for err in [
        s.spawn(&huge, "subinterp", &Policy::default()).unwrap_err(),
        s.spawn("b", &huge, &Policy::default()).unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(text.len() < 400, "{} bytes", text.len());
        assert!(
            text.contains("\\u{1b}[2Jxxx") && !text.contains('\u{1b}'),
            "{text}"
        );
    }
}

#[test]
fn list_reports_state_layers_and_stats() {
    let s = Supervisor::new();
    let a = s.spawn("alpha", "subinterp", &Policy::default()).unwrap();
    let b = s.spawn("beta", "subinterp", &Policy::default()).unwrap();
    a.exec("post(1); post(2)").unwrap();
    b.kill();
    let list = s.list();
    let alpha = list.iter().find(|c| c.name == "alpha").unwrap();
    assert_eq!(
        (
            alpha.state.clone(),
            alpha.stats.transactions,
            alpha.stats.events
        ),
        (CellState::Alive, 1, 2)
    );
    assert!(
        alpha
            .layers
            .iter()
            .any(|l| l.name == "interpreter" && l.active)
    );
    let beta = list.iter().find(|c| c.name == "beta").unwrap();
    assert!(matches!(&beta.state, CellState::Dead(e) if e.code == ErrorCode::Cancelled));
    assert_eq!(s.get("alpha").unwrap().name(), "alpha");
}

#[test]
fn recv_on_another_thread_sees_events_while_exec_runs() {
    let s = Supervisor::new();
    let cell = s
        .spawn("streamer", "subinterp", &Policy::default())
        .unwrap();
    let reader = {
        let cell = cell.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 100 {
                match cell.recv(Some(Duration::from_secs(10))) {
                    Ok(Event::Post(Value::Int(i))) => got.push(i),
                    other => panic!("{other:?}"),
                }
            }
            got
        })
    };
    cell.exec("for i in 0..100 { post(i) }").unwrap();
    assert_eq!(reader.join().unwrap(), (0..100).collect::<Vec<_>>());
}

#[test]
fn kill_wakes_a_blocked_recv() {
    let s = Supervisor::new();
    let cell = s.spawn("sleeper", "subinterp", &Policy::default()).unwrap();
    let waiter = {
        let cell = cell.clone();
        std::thread::spawn(move || cell.recv(None))
    };
    std::thread::sleep(Duration::from_millis(20));
    cell.kill();
    assert!(
        matches!(waiter.join().unwrap(), Err(RecvError::Closed(e)) if e.code == ErrorCode::Cancelled)
    );
}

#[test]
fn other_cells_keep_working_when_one_is_killed_mid_loop() {
    let s = Supervisor::new();
    let mut p = Policy::default();
    p.limits.max_operations = 0;
    let spinner = s.spawn("spinner", "subinterp", &p).unwrap();
    let bystander = s
        .spawn("bystander", "subinterp", &Policy::default())
        .unwrap();
    let t = {
        let spinner = spinner.clone();
        std::thread::spawn(move || spinner.exec("post(0); loop {}"))
    };
    spinner.recv(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(bystander.exec("6 * 7").unwrap(), Value::Int(42));
    spinner.kill();
    assert_eq!(t.join().unwrap().unwrap_err().code, ErrorCode::Cancelled);
    assert_eq!(
        bystander
            .call("math.sqrt", vec![Value::Int(49)], Map::new())
            .unwrap(),
        Value::Float(7.0)
    );
}

#[test]
fn unknown_policy_modules_are_refused_at_the_handshake() {
    let s = Supervisor::new();
    let p = Policy {
        modules: vec!["filesystem".into()],
        ..Policy::default()
    };
    let err = s.spawn("m", "subinterp", &p).unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Handshake(e) if e.code == ErrorCode::InvalidArgument),
        "{err}"
    );
    assert!(err.to_string().contains("filesystem"));
}

#[test]
fn required_layers_fail_closed() {
    let s = Supervisor::new();
    let mut p = Policy::default();
    p.confinement.require = vec!["seccomp".into()];
    let err = s.spawn("c", "subinterp", &p).unwrap_err();
    assert!(err.to_string().contains("seccomp"), "{err}");
}

/// A third-party request handler sees the checked request and its answer reaches the guest.
#[test]
fn request_handler_plugs_in() {
    struct Echo;
    impl cell_supervisor::RequestHandler for Echo {
        fn handle(
            &self,
            ctx: cell_supervisor::RequestContext<'_>,
            capability: &str,
            action: &str,
            payload: Value,
        ) -> Result<Value, cell_supervisor::CellError> {
            Ok(Value::List(vec![
                ctx.cell.into(),
                capability.into(),
                action.into(),
                payload,
            ]))
        }
    }
    let s = Supervisor::new();
    s.set_request_handler(Arc::new(Echo));
    let cell = s.spawn("asker", "subinterp", &Policy::default()).unwrap();
    let v = cell.exec("request(\"kv\", \"get\", 7)").unwrap();
    assert_eq!(
        v,
        Value::List(vec![
            "asker".into(),
            "kv".into(),
            "get".into(),
            Value::Int(7)
        ])
    );
}

#[test]
fn a_listener_is_told_of_events_while_the_exec_runs_and_of_the_end() {
    let s = Supervisor::new();
    let mut p = Policy::default();
    p.limits.max_operations = 0;
    let cell = s.spawn("told", "subinterp", &p).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    cell.set_listener(Some(Arc::new(move || {
        let _ = tx.lock().unwrap().send(());
    })));
    let running = {
        let cell = cell.clone();
        std::thread::spawn(move || cell.exec("post(1); post(2); loop {}"))
    };
    // Woken by the listener, not by waiting in recv: each post is there when it is told.
    for want in [1, 2] {
        rx.recv().expect("told of a post");
        assert_eq!(
            cell.recv(Some(Duration::ZERO)),
            Ok(Event::Post(Value::Int(want)))
        );
    }
    assert!(!running.is_finished(), "the exec still runs");
    cell.kill();
    rx.recv().expect("told of the death");
    assert!(matches!(
        cell.recv(Some(Duration::ZERO)),
        Err(RecvError::Closed(e)) if e.code == ErrorCode::Cancelled
    ));
    assert_eq!(
        running.join().unwrap().unwrap_err().code,
        ErrorCode::Cancelled
    );
}
