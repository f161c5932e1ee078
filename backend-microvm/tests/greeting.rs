//! A start from the snapshot answers the handshake from the template's record and places the
//! `Hello` with the first transaction: that transaction must behave exactly as if the guest had
//! been greeted at spawn (its limits and modules in force, its frames in order), whatever the
//! first frame is and however large.
mod common;

use std::sync::Arc;

use abi::backend::{CellPipe, PipeError};
use abi::{EngineLimits, ErrorCode, GuestFrame, HostFrame, Map, Value};
use cell_backend_microvm::MicroVm;
use common::*;

fn exec(id: u64, source: &str) -> HostFrame {
    HostFrame::Exec {
        id,
        source: source.into(),
    }
}

fn result(host: &Recorder) -> Result<Value, abi::CellError> {
    match host.last() {
        Some(GuestFrame::Done { result, .. }) => result,
        other => panic!("no completion: {other:?}"),
    }
}

/// Where the tests start their cells: in this process and in a VM host.
fn backends() -> [MicroVm; 2] {
    [MicroVm::new(), MicroVm::hosted()]
}

/// A cell of `backend` whose `Hello` allows `math` and caps strings at 16 characters, greeted.
fn greeted(backend: &MicroVm, max_frame_len: u32) -> (Box<dyn CellPipe>, Arc<Recorder>) {
    let mut s = spec_with(
        EngineLimits {
            max_operations: 0,
            max_string_len: 16,
            ..EngineLimits::default()
        },
        64,
    );
    s.hello.modules = vec!["math".into()];
    s.max_frame_len = max_frame_len;
    let host = Arc::new(Recorder::default());
    let mut pipe = backend.spawn_pipe(&s, host.clone()).expect("spawn");
    pipe.transact(HostFrame::Hello(s.hello.clone()), soon())
        .unwrap();
    assert!(
        matches!(host.last(), Some(GuestFrame::Ready(_))),
        "the handshake is answered at spawn"
    );
    assert!(pipe.handshake_deferred(), "a snapshot start defers it");
    (Box::new(pipe), host)
}

#[test]
fn only_snapshot_starts_with_a_hello_the_guest_accepts_defer_it() {
    if !kvm() {
        return;
    }
    let greet = |backend: MicroVm, hello: abi::Hello| {
        let host = Arc::new(Recorder::default());
        let mut pipe = backend.spawn_pipe(&spec(), host.clone()).expect("spawn");
        let r = pipe.transact(HostFrame::Hello(hello), soon());
        (pipe.handshake_deferred(), r, host.last())
    };
    let (deferred, r, last) = greet(MicroVm::new(), spec().hello);
    assert!(deferred && r.is_ok() && matches!(last, Some(GuestFrame::Ready(_))));
    let (deferred, r, _) = greet(MicroVm::cold(), spec().hello);
    assert!(!deferred && r.is_ok(), "a cold guest answers itself");
    let (deferred, r, last) = greet(MicroVm::hosted(), spec().hello);
    assert!(
        deferred && r.is_ok() && matches!(last, Some(GuestFrame::Ready(_))),
        "a VM host knows its snapshot's answer too"
    );
    // A Hello the guest refuses is sent to it, and its refusal is the answer.
    let mut wrong = spec().hello;
    wrong.abi_version += 1;
    let (deferred, _, last) = greet(MicroVm::new(), wrong);
    assert!(!deferred);
    assert!(
        matches!(&last, Some(GuestFrame::Refused(e)) if e.code == ErrorCode::VersionMismatch),
        "{last:?}"
    );
}

#[test]
fn the_first_exec_runs_under_the_handshakes_limits_and_modules() {
    if !kvm() {
        return;
    }
    for backend in backends() {
        let (mut pipe, host) = greeted(&backend, abi::wire::DEFAULT_MAX_FRAME_LEN);
        pipe.transact(
            exec(1, r#"post(1); import "math" as m; m::clamp(15, 0, 10)"#),
            soon(),
        )
        .unwrap();
        assert_eq!(result(&host), Ok(Value::Int(10)));
        let frames = host.0.lock().unwrap().clone();
        assert_eq!(frames.len(), 3, "Ready, the post, Done: {frames:?}");
        assert_eq!(frames[1], GuestFrame::Post(Value::Int(1)));
        // The string limit of this Hello, not the default one, holds from the first exec on.
        pipe.transact(exec(2, r#"let s = "0123456789"; s + s"#), soon())
            .unwrap();
        let err = result(&host).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitStringSize, "{err}");
        pipe.shutdown().unwrap();
    }
}

#[test]
fn a_first_call_carries_the_handshake_too() {
    if !kvm() {
        return;
    }
    for backend in backends() {
        let (mut pipe, host) = greeted(&backend, abi::wire::DEFAULT_MAX_FRAME_LEN);
        pipe.transact(
            HostFrame::Call {
                id: 1,
                function: "math.clamp".into(),
                args: vec![Value::Int(-3), Value::Int(0), Value::Int(10)],
                kwargs: Map::new(),
            },
            soon(),
        )
        .unwrap();
        assert_eq!(result(&host), Ok(Value::Int(0)));
        pipe.shutdown().unwrap();
    }
}

#[test]
fn a_first_frame_that_cannot_share_the_buffer_follows_the_handshake() {
    if !kvm() {
        return;
    }
    for backend in backends() {
        // The Hello and an exec close to the frame cap do not fit one buffer together: they go as two
        // frames, and the answer is the same.
        let max = 4096;
        let (mut pipe, host) = greeted(&backend, max);
        let source = format!("{}42", " ".repeat(max as usize - 64));
        pipe.transact(exec(1, &source), soon()).unwrap();
        assert_eq!(result(&host), Ok(Value::Int(42)));
        pipe.transact(exec(2, "40 + 2"), soon()).unwrap();
        assert_eq!(result(&host), Ok(Value::Int(42)));
        pipe.shutdown().unwrap();
    }
}

#[test]
fn a_first_transaction_cut_short_leaves_the_cell_consistent() {
    if !kvm() {
        return;
    }
    for backend in backends() {
        // The first exec runs past its deadline: the cell is stopped with the deadline, not with a
        // complaint about the handshake.
        let (mut pipe, _host) = greeted(&backend, abi::wire::DEFAULT_MAX_FRAME_LEN);
        let soon_ms = Some(std::time::Instant::now() + std::time::Duration::from_millis(50));
        let r = pipe.transact(exec(1, "loop {}"), soon_ms);
        assert!(matches!(r, Err(PipeError::TimedOut)), "{r:?}");
        // An interrupted first exec keeps the cell, greeted: the next exec runs.
        let (mut pipe, host) = greeted(&backend, abi::wire::DEFAULT_MAX_FRAME_LEN);
        let interrupter = pipe.interrupter().unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::thread::spawn({
            let done = done.clone();
            // An interrupt that lands before the exec starts is dropped at its start: repeat until
            // the exec has ended (joined before the next exec starts).
            move || {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    interrupter.interrupt();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        });
        pipe.transact(exec(1, "loop {}"), soon()).unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        stop.join().unwrap();
        assert_eq!(result(&host).unwrap_err().code, ErrorCode::Cancelled);
        pipe.transact(exec(2, "40 + 2"), soon()).unwrap();
        assert_eq!(result(&host), Ok(Value::Int(42)));
        pipe.shutdown().unwrap();
    }
}
