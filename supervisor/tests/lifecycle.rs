//! The embedding API never blocks: `close`/`kill` stop a running exec at once, `interrupt`
//! ends it and keeps the cell, spawns run in parallel, names leave with their last handle, and
//! third-party backends register through the builder.

use abi::backend::{
    Backend, CellPipe, HostSide, Killer, Layer, PipeError, SpawnError, SpawnSpec, UsageProbe,
};
use abi::{ErrorCode, HostFrame};
use cell_supervisor::{
    Cell, CellError, CellState, Event, InterruptError, Policy, Supervisor, SupervisorError, Value,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Guards a test against a hang; never part of what a test asserts.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Backends that can spawn here, with a loud SKIPPED for the others.
fn available(s: &Supervisor) -> Vec<String> {
    s.backends()
        .into_iter()
        .filter_map(|(name, ok)| match ok {
            Ok(()) => Some(name),
            Err(why) => {
                eprintln!("SKIPPED backend {name}: {why}");
                None
            }
        })
        .collect()
}

/// Starts `source` (which posts, then runs forever) on another thread and returns once it runs.
fn run_forever(cell: &Cell) -> std::thread::JoinHandle<Result<Value, CellError>> {
    let worker = {
        let cell = cell.clone();
        std::thread::spawn(move || cell.exec("let kept = 7; post(\"running\"); loop {}"))
    };
    match cell.recv(Some(HANG_GUARD)) {
        Ok(Event::Post(v)) => assert_eq!(v, Value::Str("running".into())),
        other => panic!(
            "{}: expected the running post, got {other:?}",
            cell.backend()
        ),
    }
    worker
}

#[test]
fn close_during_a_running_exec_stops_it_at_once() {
    let s = Supervisor::new();
    for backend in available(&s) {
        // With the default wall time (10 s) a close that waited would see `timed_out`.
        let cell = s.spawn("closing", &backend, &Policy::default()).unwrap();
        let worker = run_forever(&cell);
        cell.close();
        let err = worker.join().unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::CellClosed, "{backend}: {err}");
        assert_eq!(
            cell.exec("1").unwrap_err().code,
            ErrorCode::CellClosed,
            "{backend}"
        );
    }
}

#[test]
fn kill_during_a_running_exec_stops_it_at_once() {
    let s = Supervisor::new();
    for backend in available(&s) {
        let cell = s.spawn("killing", &backend, &Policy::default()).unwrap();
        let worker = run_forever(&cell);
        cell.kill();
        let err = worker.join().unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Cancelled, "{backend}: {err}");
        cell.close();
    }
}

/// A kill that lands while the cell is still compiling a large script (no operation has run
/// yet, so no per-operation check has seen it) is never lost: the exec ends `cancelled` (or
/// `cell_closed`, had the kill come before the exec reached the cell), never with the script's
/// value, and the cell is gone. Where the kill lands is not asserted; every landing must pass.
#[test]
fn a_kill_while_the_script_compiles_is_never_lost() {
    let s = Supervisor::new();
    // About 900 KB (the default frame cap is 1 MiB) of statements: the engine parses for a
    // while before the first operation.
    let script = format!("let x = 0;\n{}x", "x += 1;\n".repeat(100_000));
    for backend in available(&s) {
        for delay_us in [0, 2_000, 20_000] {
            let cell = s.spawn("compiling", &backend, &Policy::default()).unwrap();
            let worker = {
                let (cell, script) = (cell.clone(), script.clone());
                std::thread::spawn(move || cell.exec(&script))
            };
            std::thread::sleep(Duration::from_micros(delay_us));
            cell.kill();
            let result = worker.join().unwrap();
            match &result {
                Err(e) if matches!(e.code, ErrorCode::Cancelled | ErrorCode::CellClosed) => {}
                other => panic!("{backend}, kill after {delay_us} µs: {other:?}"),
            }
            assert_eq!(
                cell.exec("1").unwrap_err().code,
                ErrorCode::CellClosed,
                "{backend}: the killed cell still ran an exec"
            );
            cell.close();
        }
    }
}

#[test]
fn interrupt_ends_the_running_exec_and_keeps_the_cell() {
    let s = Supervisor::new();
    for backend in available(&s) {
        let cell = s
            .spawn("interrupted", &backend, &Policy::default())
            .unwrap();
        cell.exec("fn answer() { 42 }").unwrap();
        let worker = run_forever(&cell);
        // Every built-in backend can stop a script and keep the cell.
        cell.interrupt()
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let err = worker.join().unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Cancelled, "{backend}: {err}");
        assert_eq!(err.message, "the exec was interrupted", "{backend}");
        assert_eq!(
            cell.call("answer", vec![], Default::default()).unwrap(),
            Value::Int(42),
            "{backend}: the cell keeps what it defined"
        );
        // Nothing runs: the interrupt is a no-op, not a trap for the next exec.
        cell.interrupt().unwrap();
        assert_eq!(cell.exec("kept").unwrap(), Value::Int(7), "{backend}");
        cell.close();
        assert!(matches!(cell.interrupt(), Err(InterruptError::Dead(_))));
    }
}

/// A third party's backend: in-process cells under another name, optionally held at a gate
/// inside `spawn` until `gate_size` spawns are inside it at once. Its pipe has no interrupter.
struct ThirdParty {
    name: &'static str,
    gate_size: usize,
    inside: Mutex<usize>,
    arrived: Condvar,
}

impl ThirdParty {
    fn new(name: &'static str, gate_size: usize) -> Arc<Self> {
        Arc::new(ThirdParty {
            name,
            gate_size,
            inside: Mutex::new(0),
            arrived: Condvar::new(),
        })
    }

    /// Waits until `n` spawns have entered.
    fn wait_inside(&self, n: usize) {
        let inside = self.inside.lock().unwrap();
        let (_inside, timeout) = self
            .arrived
            .wait_timeout_while(inside, HANG_GUARD, |i| *i < n)
            .unwrap();
        assert!(!timeout.timed_out(), "spawns never arrived");
    }
}

impl Backend for ThirdParty {
    fn name(&self) -> &str {
        self.name
    }

    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        let mut inside = self.inside.lock().unwrap();
        *inside += 1;
        self.arrived.notify_all();
        let (_inside, timeout) = self
            .arrived
            .wait_timeout_while(inside, HANG_GUARD, |i| *i < self.gate_size)
            .unwrap();
        if timeout.timed_out() {
            return Err(SpawnError::Other("no other spawn ever came in".into()));
        }
        let pipe = backend_subinterp::Subinterp.spawn(spec, host)?;
        Ok(Box::new(Uninterruptible(pipe)))
    }
}

struct Uninterruptible(Box<dyn CellPipe>);

impl CellPipe for Uninterruptible {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        self.0.transact(frame, deadline)
    }
    fn killer(&self) -> Arc<dyn Killer> {
        self.0.killer()
    }
    fn layers(&self) -> Vec<Layer> {
        self.0.layers()
    }
    fn shutdown(&mut self) -> Result<(), PipeError> {
        self.0.shutdown()
    }
}

#[test]
fn the_builder_registers_a_third_party_backend() {
    let s = Supervisor::builder()
        .without_builtin_backends()
        .backend(ThirdParty::new("elsewhere", 1))
        .build();
    let names: Vec<_> = s.backends().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["elsewhere"]);
    let cell = s.spawn("tp", "elsewhere", &Policy::default()).unwrap();
    assert_eq!(cell.exec("40 + 2").unwrap(), Value::Int(42));
    assert_eq!(
        cell.interrupt(),
        Err(InterruptError::Unsupported {
            backend: "elsewhere".into()
        })
    );
    assert!(matches!(
        s.spawn("x", "subinterp", &Policy::default()),
        Err(SupervisorError::UnknownBackend { .. })
    ));
    // Built-ins stay unless left out; a backend of the same name replaces one.
    let both = Supervisor::builder()
        .backend(ThirdParty::new("elsewhere", 1))
        .build();
    assert!(both.backend("elsewhere").is_some() && both.backend("subinterp").is_some());
}

#[test]
fn spawns_run_in_parallel_and_a_name_in_its_handshake_is_taken() {
    let gate = ThirdParty::new("gated", 2);
    let s = Arc::new(Supervisor::builder().backend(gate.clone()).build());
    // The first spawn waits inside the backend until a second one comes in: with a
    // supervisor-wide lock held across the spawn, the second could never arrive.
    let first = {
        let s = s.clone();
        std::thread::spawn(move || s.spawn("one", "gated", &Policy::default()))
    };
    gate.wait_inside(1);
    assert!(matches!(
        s.spawn("one", "subinterp", &Policy::default()),
        Err(SupervisorError::NameTaken(_))
    ));
    let other = s.spawn("plain", "subinterp", &Policy::default()).unwrap();
    let second = s.spawn("two", "gated", &Policy::default()).unwrap();
    let first = first.join().unwrap().unwrap();
    for cell in [&first, &second, &other] {
        assert_eq!(cell.exec("1 + 1").unwrap(), Value::Int(2));
    }
    let names: Vec<_> = s.list().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["one", "plain", "two"]);
}

#[test]
fn a_name_leaves_the_table_with_its_last_handle() {
    let s = Supervisor::new();
    let cell = s.spawn("short", "subinterp", &Policy::default()).unwrap();
    let copy = cell.clone();
    cell.kill();
    drop(cell);
    // Dead but still held: listed, and its name is free for a new cell.
    assert_eq!(s.list().len(), 1);
    assert!(s.get("short").is_some());
    drop(copy);
    assert!(s.list().is_empty() && s.get("short").is_none());
    // A failed spawn frees its name too.
    let mut bad = Policy::default();
    bad.confinement.require = vec!["seccomp".into()];
    assert!(s.spawn("short", "subinterp", &bad).is_err());
    let again = s.spawn("short", "subinterp", &Policy::default()).unwrap();
    let newer = s.spawn("newer", "subinterp", &Policy::default()).unwrap();
    again.kill();
    // A newer cell of the same name is not dropped from the table by the older one's drop.
    let replacement = s.spawn("short", "subinterp", &Policy::default()).unwrap();
    drop(again);
    assert_eq!(s.get("short").unwrap().state(), replacement.state());
    assert_eq!(s.list().len(), 2);
    drop((newer, replacement));
}

/// In-process cells whose boundary "ends on its own" when the test says so (as a process cell
/// killed from outside between transactions does), through its usage probe.
struct Ending(Arc<AtomicBool>);

impl Backend for Ending {
    fn name(&self) -> &str {
        "ending"
    }

    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        let pipe = backend_subinterp::Subinterp.spawn(spec, host)?;
        Ok(Box::new(EndingPipe(pipe, self.0.clone())))
    }
}

struct EndingPipe(Box<dyn CellPipe>, Arc<AtomicBool>);

impl CellPipe for EndingPipe {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        self.0.transact(frame, deadline)
    }
    fn killer(&self) -> Arc<dyn Killer> {
        self.0.killer()
    }
    fn usage(&self) -> Option<Arc<dyn UsageProbe>> {
        Some(Arc::new(EndedFlag(self.1.clone())))
    }
    fn shutdown(&mut self) -> Result<(), PipeError> {
        self.0.shutdown()
    }
}

struct EndedFlag(Arc<AtomicBool>);

impl UsageProbe for EndedFlag {
    fn memory_bytes(&self) -> Option<u64> {
        None
    }
    fn cpu_time(&self) -> Option<Duration> {
        None
    }
    fn ended(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn a_cell_whose_boundary_ended_between_transactions_is_dead_before_the_next_one() {
    let ended = Arc::new(AtomicBool::new(false));
    let s = Supervisor::builder()
        .backend(Arc::new(Ending(ended.clone())))
        .build();
    let cell = s.spawn("ends", "ending", &Policy::default()).unwrap();
    assert_eq!(cell.exec("40 + 2").unwrap(), Value::Int(42));
    assert_eq!(cell.state(), CellState::Alive);
    ended.store(true, Ordering::SeqCst);
    let CellState::Dead(reason) = cell.state() else {
        panic!("still alive")
    };
    assert_eq!(reason.code, ErrorCode::CellCrashed);
    assert!(matches!(s.list()[0].state, CellState::Dead(_)));
    // The next transaction is refused as on any dead cell, naming the reason.
    let err = cell.exec("1").unwrap_err();
    assert_eq!(err.code, ErrorCode::CellClosed);
    assert!(err.message.contains(&reason.message), "{err:?}");
    // Ended or not, a cell that was closed stays closed.
    let closed = s.spawn("closed", "ending", &Policy::default()).unwrap();
    closed.close();
    let CellState::Dead(reason) = closed.state() else {
        panic!("a closed cell is alive")
    };
    assert_eq!(reason.code, ErrorCode::CellClosed);
}

/// A cell held back by a full event queue (backpressure on, nobody draining for 400 ms) waits
/// without using CPU, and its CPU time says so on every backend.
#[test]
fn a_wait_for_room_in_the_event_queue_is_no_cpu_time() {
    const HELD: Duration = Duration::from_millis(400);
    let s = Supervisor::new();
    let policy = Policy::from_toml("[channel]\nmax_queued_events = 2").unwrap();
    for backend in available(&s) {
        let cell = s
            .spawn(&format!("room-{backend}"), &backend, &policy)
            .unwrap();
        cell.set_backpressure(true);
        let worker = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.exec("for i in 0..5 { post(i) } 1"))
        };
        // Two posts fill the queue; the third waits for room until these are taken.
        let first = cell.recv(Some(HANG_GUARD)).unwrap();
        assert_eq!(first, Event::Post(Value::Int(0)), "{backend}");
        std::thread::sleep(HELD);
        for i in 1..5 {
            assert_eq!(
                cell.recv(Some(HANG_GUARD)).unwrap(),
                Event::Post(Value::Int(i))
            );
        }
        assert_eq!(worker.join().unwrap().unwrap(), Value::Int(1), "{backend}");
        let cpu = cell.usage().cpu_time_ms.expect("counted");
        assert!(
            cpu < HELD.as_millis() as u64 / 2,
            "{backend}: a wait for room counted as {cpu} ms of CPU time"
        );
        cell.close();
    }
}
