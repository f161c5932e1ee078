//! The backend through its `abi` face: a `ProcessPipe` to a real cell (the runtime guest
//! or the probe), its handshake, frames, deadlines, crashes and kills.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi::backend::{
    Backend, CellPipe, Flow, HostSide, PipeError, Resources, SpawnError, SpawnSpec,
};
use abi::wire::{self, WireError};
use abi::{EngineLimits, GuestFrame, Hello, HostFrame};

use crate::tests::{PATHS, spawn_probe, spawn_probe_via};
use crate::*;

/// Records every guest frame; a handshake answer or a completion ends the transaction.
#[derive(Default)]
pub(crate) struct Recorder(pub Mutex<Vec<GuestFrame>>);

impl HostSide for Recorder {
    fn on_frame(&self, frame: GuestFrame) -> Flow {
        let done = matches!(
            frame,
            GuestFrame::Ready(_) | GuestFrame::Refused(_) | GuestFrame::Done { .. }
        );
        self.0.lock().unwrap().push(frame);
        if done { Flow::Done } else { Flow::Continue }
    }
}

pub(crate) fn abi_spec() -> SpawnSpec {
    SpawnSpec {
        hello: Hello::new("t", EngineLimits::default(), Vec::new()),
        resources: Resources::default(),
        max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
        required_layers: Vec::new(),
    }
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

#[test]
fn runtime_guest_handshakes_and_posts_40_plus_2() {
    let host = Arc::new(Recorder::default());
    let spec = abi_spec();
    let mut pipe = ProcessBackend::new().spawn(&spec, host.clone()).unwrap();
    for layer in pipe
        .layers()
        .iter()
        .filter(|l| Layer::ALWAYS.iter().any(|a| a.name() == l.name))
    {
        assert!(layer.active, "{}: {}", layer.name, layer.detail);
    }
    pipe.transact(HostFrame::Hello(spec.hello.clone()), deadline())
        .unwrap();
    assert!(matches!(
        std::mem::take(&mut *host.0.lock().unwrap())[..],
        [GuestFrame::Ready(_)]
    ));
    pipe.transact(
        HostFrame::Exec {
            id: 1,
            source: "post(40 + 2); 7".into(),
        },
        deadline(),
    )
    .unwrap();
    let frames = std::mem::take(&mut *host.0.lock().unwrap());
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(
        matches!(&frames[0], GuestFrame::Post(v) if format!("{v:?}").contains("42")),
        "{frames:?}"
    );
    assert!(
        matches!(&frames[1], GuestFrame::Done { id: 1, result: Ok(v) } if format!("{v:?}").contains('7'))
    );
    pipe.shutdown().unwrap();
}

/// Diagnostic, not a check: where a cold cell's time goes, phase by phase.
/// Run with `cargo test --release --lib cold_phase_costs -- --ignored --nocapture`.
#[test]
#[ignore]
fn cold_phase_costs() {
    let spec = abi_spec();
    let backend = ProcessBackend::new();
    let names = ["spawn", "hello", "exec post", "shutdown+drop"];
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    // COLD_SETTLE_US: idle time before each start (background work settles).
    let settle = std::env::var("COLD_SETTLE_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros);
    for i in 0..300 {
        if let Some(settle) = settle {
            std::thread::sleep(settle);
        }
        let host = Arc::new(Recorder::default());
        let t0 = Instant::now();
        let cell = ProcessCell::spawn(&backend.spawn_spec(&spec).unwrap()).unwrap();
        let mut pipe = ProcessPipe::new(cell, host.clone(), spec.max_frame_len);
        let t1 = Instant::now();
        pipe.transact(HostFrame::Hello(spec.hello.clone()), deadline())
            .unwrap();
        let t2 = Instant::now();
        let exec = HostFrame::Exec {
            id: 1,
            source: "post(40 + 2)".into(),
        };
        pipe.transact(exec, deadline()).unwrap();
        let t3 = Instant::now();
        pipe.shutdown().unwrap();
        drop(pipe);
        let t4 = Instant::now();
        if i >= 20 {
            for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3].into_iter().enumerate() {
                t[k].push(d);
            }
        }
    }
    for (name, v) in names.iter().zip(&mut t) {
        v.sort();
        println!(
            "{name:<14} median {:?}  p10 {:?}  p90 {:?}",
            v[v.len() / 2],
            v[v.len() / 10],
            v[v.len() * 9 / 10]
        );
    }
}

#[test]
fn unknown_required_layer_is_refused_by_name() {
    let mut spec = abi_spec();
    spec.required_layers = vec!["teleportation".into()];
    match ProcessBackend::new().spawn(&spec, Arc::new(Recorder::default())) {
        Err(SpawnError::MissingLayer { layer, .. }) => assert_eq!(layer, "teleportation"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("spawned with an unknown required layer"),
    }
}

fn probe_pipe(name: &str) -> (ProcessPipe, Arc<Recorder>) {
    let host = Arc::new(Recorder::default());
    let cell = spawn_probe(name);
    (
        ProcessPipe::new(cell, host.clone(), wire::DEFAULT_MAX_FRAME_LEN),
        host,
    )
}

fn hello() -> HostFrame {
    HostFrame::Hello(abi_spec().hello)
}

/// The probe `name` sends a length prefix over the cap: refused before allocation, and the
/// pipe kills the cell (the next transaction reports it dead).
fn assert_oversized_prefix_kills(name: &str) {
    let (mut pipe, host) = probe_pipe(name);
    match pipe.transact(hello(), deadline()) {
        Err(PipeError::Wire(WireError::TooLarge { .. })) => {}
        other => panic!("{name}: expected a frame-size error, got {other:?}"),
    }
    assert!(host.0.lock().unwrap().is_empty());
    assert!(matches!(
        pipe.transact(hello(), deadline()),
        Err(PipeError::Killed)
    ));
}

#[test]
fn oversized_length_prefix_is_refused_before_allocation_and_kills_the_cell() {
    assert_oversized_prefix_kills("huge_frame");
}

#[test]
fn crash_mid_frame_is_reported_as_crashed() {
    let (mut pipe, _host) = probe_pipe("crash_mid_frame");
    match pipe.transact(hello(), deadline()) {
        Err(PipeError::Crashed(why)) => {
            assert!(why.contains(&libc::SIGSEGV.to_string()), "{why}")
        }
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn a_guest_panic_is_a_crash_naming_the_panic_and_ends_the_cell() {
    // The probe panics through the guest program's panic hook, under a cell's confinement.
    for fork_server in PATHS {
        let host = Arc::new(Recorder::default());
        let cell = spawn_probe_via("panic", fork_server);
        let mut pipe = ProcessPipe::new(cell, host.clone(), wire::DEFAULT_MAX_FRAME_LEN);
        let err = pipe.transact(hello(), deadline()).unwrap_err();
        let PipeError::Crashed(why) = &err else {
            panic!("fork server {fork_server}: expected a crash, got {err:?}");
        };
        // Worded as the microVM backend words its guest's panic, with the place.
        assert!(
            why.starts_with("guest panicked: probe panic requested (7) at ")
                && why.contains("probe.rs:"),
            "fork server {fork_server}: {why}"
        );
        assert_eq!(err.to_cell_error().code, abi::ErrorCode::CellCrashed);
        assert!(host.0.lock().unwrap().is_empty());
        // Only the panic's exit status is worded so: the cell ended by itself, and stays
        // reported so.
        match pipe.transact(hello(), deadline()) {
            Err(PipeError::Crashed(again)) => assert_eq!(&again, why),
            other => panic!("fork server {fork_server}: {other:?}"),
        }
    }
}

#[test]
fn last_words_from_a_cell_that_lives_on_are_a_bad_frame_and_kill_it() {
    assert_oversized_prefix_kills("live_last_words");
}

#[test]
fn kill_from_another_thread_interrupts_a_transaction() {
    let (mut pipe, _host) = probe_pipe("silent");
    let killer = pipe.killer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        killer.kill();
    });
    assert!(matches!(
        pipe.transact(hello(), None),
        Err(PipeError::Killed)
    ));
    t.join().unwrap();
    pipe.shutdown().unwrap();
}

#[test]
fn a_silent_cell_times_out_at_the_deadline() {
    let (mut pipe, _host) = probe_pipe("silent");
    let deadline = Some(Instant::now() + Duration::from_millis(100));
    assert!(matches!(
        pipe.transact(hello(), deadline),
        Err(PipeError::TimedOut)
    ));
}
