//! Resource limits of microVM cells, each reported as its limit error (never `cell_crashed`):
//! stack, memory (and large sparse guests), CPU time.
mod common;

use std::sync::Arc;
use std::time::Duration;

use abi::backend::PipeError;
use abi::{EngineLimits, ErrorCode, HostFrame, Value};
use cell_backend_microvm::{MicroVm, MicroVmPipe, StartMode, Vm, VmConfig, VmError, max_mem_size};
use common::*;

/// Depth limits far beyond what the stack holds (a policy would refuse them; the Hello is built
/// here directly), so only the stack can stop the script.
fn deep_limits() -> EngineLimits {
    EngineLimits {
        max_operations: 0,
        max_call_depth: 1_000_000,
        max_expr_depth: 1_000_000,
        max_string_len: 1 << 30,
        max_array_len: 1 << 30,
        ..EngineLimits::default()
    }
}

fn limit_error(r: Result<(), PipeError>, code: ErrorCode) -> String {
    match r {
        Err(PipeError::Aborted(e)) if e.code == code => e.message,
        // A limit the boundary enforces: the host side words the message, the detail is here.
        Err(p @ PipeError::Exhausted { .. }) if p.to_cell_error().code == code => p.to_string(),
        other => panic!("expected {code}, got {other:?}"),
    }
}

#[test]
fn script_recursion_past_the_stack_is_a_call_depth_error_and_the_cell_lives() {
    if !kvm() {
        return;
    }
    for backend in [MicroVm::new(), MicroVm::cold()] {
        let host = Arc::new(Recorder::default());
        let mut pipe = start(&backend, &spec_with(deep_limits(), 32), host.clone());
        assert_eq!(
            eval(&mut pipe, &host, 1, "let kept = 41; kept"),
            Ok(Value::Int(41))
        );
        // The guest's stack probe stops the engine before the guard page: a script error.
        let r = eval(
            &mut pipe,
            &host,
            2,
            "fn down(n) { down(n + 1) + 1 } down(0)",
        );
        let e = r.expect_err("unbounded recursion cannot succeed");
        assert_eq!(e.code, ErrorCode::LimitCallDepth, "{e:?}");
        assert!(e.message.to_lowercase().contains("stack"), "{}", e.message);
        assert_eq!(eval(&mut pipe, &host, 3, "kept + 1"), Ok(Value::Int(42)));
    }
}

#[test]
fn nesting_past_the_stack_is_an_expression_depth_error_and_the_cell_lives() {
    if !kvm() {
        return;
    }
    // The parser checks the stack budget on every token, so nesting this deep stops with a
    // script error long before the guard page; the cell keeps its state.
    let nested = format!("{}1{}", "(".repeat(150_000), ")".repeat(150_000));
    let host = Arc::new(Recorder::default());
    let mut pipe = start(&MicroVm::new(), &spec_with(deep_limits(), 32), host.clone());
    assert_eq!(
        eval(&mut pipe, &host, 1, "let kept = 41; kept"),
        Ok(Value::Int(41))
    );
    let e = eval(&mut pipe, &host, 2, &nested).expect_err("nesting past the stack cannot parse");
    assert_eq!(e.code, ErrorCode::LimitExprDepth, "{e:?}");
    assert_eq!(eval(&mut pipe, &host, 3, "kept + 1"), Ok(Value::Int(42)));
}

#[test]
fn exhausting_guest_memory_is_a_memory_limit_error() {
    if !kvm() {
        return;
    }
    for backend in [MicroVm::new(), MicroVm::cold()] {
        let host = Arc::new(Recorder::default());
        let mut pipe = start(&backend, &spec_with(deep_limits(), 24), host);
        let r = exec(&mut pipe, 1, "let s = \"xxxxxxxx\"; loop { s += s; }");
        let msg = limit_error(r, ErrorCode::LimitMemory);
        assert!(msg.contains("24 MiB"), "the limit is named: {msg}");
        assert!(exec(&mut pipe, 2, "1").is_err(), "the cell is stopped");
    }
}

#[test]
fn guests_of_several_gib_are_laid_out_and_work() {
    if !kvm() {
        return;
    }
    assert!(max_mem_size() >= 4 << 30, "this host has at least 4 GiB");
    // Sparse: only what the guest touches costs host memory. The channel buffers sit at the top
    // of RAM, so every frame crosses the page directories of the highest GiB.
    for mib in [4096, 6144 + 2] {
        for backend in [MicroVm::cold(), MicroVm::new()] {
            let host = Arc::new(Recorder::default());
            let mut pipe = start(&backend, &spec_with(deep_limits(), mib), host.clone());
            assert_eq!(
                eval(
                    &mut pipe,
                    &host,
                    1,
                    "let s = \"\"; s.pad(20000000, 'x'); s.len()"
                ),
                Ok(Value::Int(20_000_000)),
                "{mib} MiB"
            );
        }
    }
    // A pooled VM of a large guest is reset and reused like a small one (its extra page
    // directories are checked before reuse).
    let cfg = MicroVm::vm_config(&spec_with(deep_limits(), 4096));
    let first = Vm::from_snapshot(&cfg).unwrap();
    drop(first);
    // VMs built ahead of demand (the starts above found the pool empty) may come first; they
    // stay alive so that each start takes another.
    let mut ahead = Vec::new();
    let again = loop {
        let vm = Vm::from_snapshot(&cfg).unwrap();
        if vm.is_reused() {
            break vm;
        }
        assert!(
            !vm.is_fresh(),
            "a start built a VM while a reset one was waiting"
        );
        assert!(ahead.len() < 16, "the 4 GiB VM never went back to the pool");
        ahead.push(vm);
    };
    let host = Arc::new(Recorder::default());
    let mut pipe: Box<dyn abi::backend::CellPipe> = Box::new(MicroVmPipe::new(
        again,
        host.clone(),
        abi::wire::DEFAULT_MAX_FRAME_LEN,
    ));
    pipe.transact(
        HostFrame::Hello(spec_with(deep_limits(), 4096).hello),
        soon(),
    )
    .unwrap();
    assert_eq!(eval(&mut pipe, &host, 1, "6 * 7"), Ok(Value::Int(42)));
    let too_big = max_mem_size() + (2 << 20);
    assert!(matches!(
        Vm::boot(&VmConfig::new(too_big)),
        Err(VmError::Config(_))
    ));
}

#[test]
fn an_endless_script_is_stopped_at_its_cpu_time_limit() {
    if !kvm() {
        return;
    }
    let mut spec = spec();
    spec.resources.cpu_time_ms = 200;
    let host = Arc::new(Recorder::default());
    // The hang guard (60 s of wall time) would report TimedOut: the CPU limit must come first.
    let mut pipe = start(&MicroVm::new(), &spec, host);
    let msg = limit_error(exec(&mut pipe, 1, "loop {}"), ErrorCode::LimitCpu);
    assert!(msg.contains("200 ms"), "{msg}");
    eprintln!("{msg}");
}

#[test]
fn cpu_time_adds_up_over_the_life_of_a_cell() {
    if !kvm() {
        return;
    }
    let mut spec = spec();
    spec.resources.cpu_time_ms = 150;
    let host = Arc::new(Recorder::default());
    let mut pipe = start(&MicroVm::new(), &spec, host.clone());
    // Each exec alone stays well under the limit; together they pass it.
    let mut completed = 0;
    let err = loop {
        match exec(
            &mut pipe,
            completed + 1,
            "let x = 0; for i in 0..100000 { x += i } x",
        ) {
            Ok(()) => completed += 1,
            Err(e) => break e,
        }
        assert!(completed < 10_000, "the CPU limit never came");
    };
    assert!(completed >= 2, "only {completed} execs before the limit");
    limit_error(Err(err), ErrorCode::LimitCpu);
}

#[test]
fn the_cpu_time_is_counted_with_or_without_a_limit_and_a_boot_is_not_charged() {
    if !kvm() {
        return;
    }
    for limit in [None, Some(Duration::from_secs(100))] {
        let mut vm = Vm::boot(&VmConfig::new(32 << 20)).unwrap();
        vm.set_cpu_limit(limit);
        assert_eq!(vm.cpu_used(), Duration::ZERO, "nothing ran yet");
        // The boot runs the guest until it rings its doorbell, idle, waiting for a frame.
        assert_eq!(vm.recv(soon()).unwrap(), cell_backend_microvm::Recv::Idle);
        assert_eq!(
            vm.cpu_used(),
            Duration::ZERO,
            "a boot is the VMM's start of the cell, not the cell's CPU time ({limit:?})"
        );
        assert_eq!(vm.usage().cpu_time(), Duration::ZERO, "the probe reads it");
    }
    // A limit of a millisecond holds a cold start (its boot takes more than that here) and an
    // exec that does little, as on every backend.
    let mut spec = spec();
    spec.resources.cpu_time_ms = 1;
    let host = Arc::new(Recorder::default());
    let mut pipe = start(&MicroVm::cold(), &spec, host.clone());
    assert_eq!(eval(&mut pipe, &host, 1, "6 * 7"), Ok(Value::Int(42)));
    // The work after the boot is counted, however the VM started.
    spec.resources.cpu_time_ms = 0;
    for backend in [
        MicroVm::cold(),
        MicroVm::new(),
        MicroVm::with_start(StartMode::SnapshotFresh),
    ] {
        let mut pipe = start(&backend, &spec, host.clone());
        let probe = pipe.usage().expect("a local VM reads its usage");
        eval(&mut pipe, &host, 1, "6 * 7").unwrap();
        let before = probe.cpu_time().expect("counted");
        eval(
            &mut pipe,
            &host,
            2,
            "let x = 0; for i in 0..200000 { x += i } x",
        )
        .unwrap();
        assert!(
            probe.cpu_time().expect("counted") > before,
            "an exec's work is counted"
        );
    }
}
