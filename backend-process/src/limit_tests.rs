//! Limits end a cell with their own error codes; limits above the old fork-server
//! ceilings work; the capability bounding set is empty; an interrupt ends the running
//! transaction and leaves the cell usable.

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::backend::{CellPipe, PipeError, SpawnSpec as AbiSpawnSpec};
use abi::{EngineLimits, ErrorCode, GuestFrame, HostFrame};

use crate::pipe_tests::{Recorder, abi_spec};
use crate::*;

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(60))
}

/// Engine limits out of the way, so the boundary's own limits are what a script meets.
fn unbounded_engine() -> EngineLimits {
    EngineLimits {
        max_operations: 0,
        max_call_depth: 100_000,
        max_expr_depth: 100_000,
        max_string_len: u32::MAX,
        max_array_len: u32::MAX,
        max_map_len: u32::MAX,
    }
}

/// A process cell after its handshake, on the fork server or spawned directly.
fn cell(spec: &AbiSpawnSpec, fork_server: bool) -> (ProcessPipe, Arc<Recorder>) {
    let host = Arc::new(Recorder::default());
    let backend = ProcessBackend {
        fork_server,
        ..ProcessBackend::new()
    };
    let cell = ProcessCell::spawn(&backend.spawn_spec(spec).unwrap()).expect("spawn");
    let mut pipe = ProcessPipe::new(cell, host.clone(), spec.max_frame_len);
    pipe.transact(HostFrame::Hello(spec.hello.clone()), deadline())
        .expect("handshake");
    host.0.lock().unwrap().clear();
    (pipe, host)
}

fn exec(pipe: &mut ProcessPipe, host: &Recorder, source: &str) -> Result<(), PipeError> {
    host.0.lock().unwrap().clear();
    pipe.transact(
        HostFrame::Exec {
            id: 1,
            source: source.into(),
        },
        deadline(),
    )
}

/// The result of the exec that just completed.
fn done(host: &Recorder) -> Result<abi::Value, abi::CellError> {
    let frames = host.0.lock().unwrap();
    match frames.last() {
        Some(GuestFrame::Done { result, .. }) => result.clone(),
        other => panic!("no completion: {other:?}"),
    }
}

fn aborted_with(res: Result<(), PipeError>, code: ErrorCode) -> String {
    match res {
        Err(PipeError::Aborted(e)) if e.code == code => e.message,
        // A limit the boundary enforces: the host side words the message, the detail is here.
        Err(p @ PipeError::Exhausted { .. }) if p.to_cell_error().code == code => p.to_string(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

const PATHS: [bool; 2] = [true, false];

#[test]
fn limits_above_the_old_fork_server_ceilings_work() {
    // Before: the server's own rlimits (256 MiB + slack, 64 files, 1024 processes) were
    // the ceilings of every cell, and each of these failed with "exited with status 68".
    let mut spec = abi_spec();
    spec.resources.memory_bytes = 1 << 30;
    spec.resources.max_open_files = 1000;
    spec.resources.max_processes = 2000;
    for fork_server in PATHS {
        let (mut pipe, host) = cell(&spec, fork_server);
        exec(&mut pipe, &host, "40 + 2").unwrap();
        assert_eq!(done(&host).unwrap(), abi::Value::Int(42));
    }
}

#[test]
fn limits_above_the_host_bounds_are_refused_at_spawn() {
    let over = [
        Limits {
            memory_bytes: max_memory_bytes() + (1 << 20),
            ..Limits::default()
        },
        Limits {
            open_files: max_open_files() + 1,
            ..Limits::default()
        },
        Limits {
            max_processes: max_processes() + 1,
            ..Limits::default()
        },
    ];
    assert!(max_open_files() > 64 && max_processes() > 1024);
    assert!(max_memory_bytes() > 256 << 20);
    for limits in over {
        let spec = SpawnSpec {
            limits,
            ..SpawnSpec::default()
        };
        assert!(matches!(
            ProcessCell::spawn(&spec),
            Err(Error::InvalidLimit(_))
        ));
    }
}

#[test]
fn running_out_of_memory_is_limit_memory() {
    let mut spec = abi_spec();
    spec.hello.limits = unbounded_engine();
    spec.resources.memory_bytes = 32 << 20;
    for fork_server in PATHS {
        // Memory touched past the cgroup's limit (the address space still has room): the
        // cgroup's OOM killer ends it.
        let (mut pipe, host) = cell(&spec, fork_server);
        let msg = aborted_with(
            exec(
                &mut pipe,
                &host,
                r#"let s = "0123456789abcdef"; loop { s += s; }"#,
            ),
            ErrorCode::LimitMemory,
        );
        assert!(msg.contains("memory"), "{msg}");
        // One allocation past the address-space limit: the allocator's failure.
        let (mut pipe, host) = cell(&spec, fork_server);
        aborted_with(
            exec(
                &mut pipe,
                &host,
                r#"let s = ""; s.pad(200000000, "x"); s.len"#,
            ),
            ErrorCode::LimitMemory,
        );
    }
}

#[test]
fn cpu_time_is_enforced_in_milliseconds_as_limit_cpu() {
    let mut spec = abi_spec();
    spec.hello.limits = unbounded_engine();
    spec.resources.cpu_time_ms = 300;
    for fork_server in PATHS {
        let (mut pipe, host) = cell(&spec, fork_server);
        // Work within the budget succeeds (a spare's rehearsal is not charged).
        exec(&mut pipe, &host, "40 + 2").unwrap();
        let msg = aborted_with(exec(&mut pipe, &host, "loop {}"), ErrorCode::LimitCpu);
        assert!(msg.contains("300 ms"), "{msg}");
    }
}

#[test]
fn running_off_the_stack_is_a_call_depth_limit_not_a_crash() {
    let mut spec = abi_spec();
    spec.hello.limits = unbounded_engine();
    for fork_server in PATHS {
        let (mut pipe, host) = cell(&spec, fork_server);
        let res = exec(&mut pipe, &host, "fn f(n) { f(n + 1) + 1 } f(0)");
        // The engine's own depth check may come first (a runtime that bounds the depth):
        // either way the code is the call-depth limit, never a crash.
        match res {
            Err(PipeError::Aborted(e)) => {
                assert_eq!(e.code, ErrorCode::LimitCallDepth, "{e:?}");
                assert!(e.message.contains("stack"), "{e:?}");
            }
            // The guard page: the host side words it as the call-depth limit.
            Err(p @ PipeError::Exhausted { .. }) => {
                assert_eq!(p.to_cell_error().code, ErrorCode::LimitCallDepth, "{p:?}");
            }
            Ok(()) => assert_eq!(
                done(&host).map_err(|e| e.code),
                Err(ErrorCode::LimitCallDepth)
            ),
            other => panic!("expected a call-depth limit, got {other:?}"),
        }
    }
}

#[test]
fn the_engine_has_its_stack_at_the_deepest_allowed_nesting() {
    let mut spec = abi_spec();
    spec.hello.limits.max_call_depth = runtime::limits::MAX_CALL_DEPTH;
    for fork_server in PATHS {
        let (mut pipe, host) = cell(&spec, fork_server);
        let depth = runtime::limits::MAX_CALL_DEPTH - 2;
        exec(
            &mut pipe,
            &host,
            &format!("fn f(n) {{ if n == 0 {{ 0 }} else {{ f(n - 1) + 1 }} }} f({depth})"),
        )
        .unwrap();
        assert_eq!(done(&host).unwrap(), abi::Value::Int(depth.into()));
    }
}

#[test]
fn the_capability_bounding_set_is_empty() {
    // Held throughout: another test dropping the last lease would retire the fork server
    // whose bounding set is read at the end.
    let _lease = crate::fork_server::PoolLease::new();
    for fork_server in PATHS {
        let spec = SpawnSpec {
            fork_server,
            image: crate::image::Image::Probe,
            args: vec!["sleep".into()],
            ..SpawnSpec::default()
        };
        let cell = ProcessCell::spawn(&spec).unwrap();
        assert!(cell.layers().get(Layer::CapabilityBoundingSet).is_active());
        let mut line = [0u8; 3];
        std::io::Read::read_exact(&mut cell.channel(), &mut line).unwrap();
        assert_eq!(&line, b"ok\n");
        let status = std::fs::read_to_string(format!("/proc/{}/status", cell.pid())).unwrap();
        let bounding = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
        assert_eq!(
            bounding, "CapBnd:\t0000000000000000",
            "fork server {fork_server}"
        );
    }
    // The server keeps in its bounding set only what forking cells needs.
    let server = crate::fork_server::test_hooks::server_pid(crate::image::Image::Probe).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    let bounding = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    // CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN.
    assert_eq!(bounding, "CapBnd:\t00000000002001c0");
}

#[test]
fn an_interrupt_cancels_the_running_exec_and_leaves_the_cell_usable() {
    let mut spec = abi_spec();
    spec.hello.limits = unbounded_engine();
    for fork_server in PATHS {
        let (mut pipe, host) = cell(&spec, fork_server);
        let interrupter = pipe
            .interrupter()
            .expect("process cells can be interrupted");
        exec(&mut pipe, &host, "let kept = 40;").unwrap();
        // Interrupts while nothing runs cancel nothing: the host does not send them, and
        // a signal that lands between transactions anyway is forgotten by the next one.
        interrupter.interrupt();
        // SAFETY: signalling the cell process this test spawned.
        unsafe { libc::kill(pipe.cell().pid(), libc::SIGUSR1) };
        exec(&mut pipe, &host, "kept + 2").unwrap();
        assert_eq!(done(&host).unwrap(), abi::Value::Int(42));

        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stopper = {
            let interrupter = interrupter.clone();
            std::thread::spawn(move || {
                // Interrupt once the loop is surely running (it never ends by itself).
                let _ = rx.recv_timeout(Duration::from_millis(200));
                interrupter.interrupt();
            })
        };
        let res = exec(&mut pipe, &host, "loop {}");
        drop(tx);
        stopper.join().unwrap();
        res.unwrap();
        assert_eq!(done(&host).map_err(|e| e.code), Err(ErrorCode::Cancelled));
        // The cell and what it defined are still there.
        exec(&mut pipe, &host, "kept + 2").unwrap();
        assert_eq!(done(&host).unwrap(), abi::Value::Int(42));
    }
}

#[test]
fn a_failed_fork_step_is_named_in_the_error() {
    let t = Termination {
        status: ExitStatus::Exited(crate::Step::SetRlimits.exit_status()),
        killed_by_host: false,
        oom_killed: false,
    };
    match crate::exit::classify(&t, &Limits::default(), None) {
        PipeError::Crashed(msg) => {
            assert!(msg.contains("setting its rlimits"), "{msg}");
            assert!(msg.contains("set-rlimits"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn usage_is_read_live_from_the_cells_cgroup() {
    let mut spec = abi_spec();
    spec.hello.limits = unbounded_engine();
    let (mut pipe, host) = cell(&spec, true);
    let probe = pipe.usage().expect("process cells have a usage probe");
    let memory_cgroup = matches!(
        pipe.layers()
            .iter()
            .find(|l| l.name == "cgroup-memory")
            .map(|l| l.active),
        Some(true)
    );
    if !memory_cgroup {
        eprintln!("SKIPPED: no memory cgroup for the cell here: usage reads as not counted");
        assert_eq!(probe.memory_bytes(), None);
        return;
    }
    let idle = probe.memory_bytes().expect("memory.current is readable");
    assert!(idle > 0);
    exec(
        &mut pipe,
        &host,
        r#"let kept = "x"; for j in 0..24 { kept += kept; } kept.len"#,
    )
    .unwrap();
    let holding = probe.memory_bytes().unwrap();
    assert!(holding >= idle + (8 << 20), "{idle} -> {holding}");
    // From `cpu.stat` under cgroup v2, the cell process's CPU clock under v1.
    let cpu = probe.cpu_time().expect("the cell's CPU time is counted");
    assert!(cpu > Duration::ZERO);
}

#[test]
fn a_cell_killed_from_outside_between_transactions_is_seen_ended_at_once() {
    for fork_server in PATHS {
        let (mut pipe, host) = cell(&abi_spec(), fork_server);
        exec(&mut pipe, &host, "1").unwrap();
        let probe = pipe.usage().expect("process cells have a usage probe");
        assert!(!probe.ended(), "fork server {fork_server}");
        let pid = pipe.cell().pid();
        // Waits on its own pidfd for the exit (the probe itself never waits).
        // SAFETY: pidfd_open of the cell this test spawned; the descriptor is checked, then owned.
        let waiter = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            waiter >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor just returned by pidfd_open, owned from here on.
        let waiter = unsafe { std::os::fd::OwnedFd::from_raw_fd(waiter as i32) };
        // SAFETY: killing the cell process this test spawned, as an outside killer would.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut fd = libc::pollfd {
            fd: waiter.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; bounded wait for an exit a SIGKILL makes certain.
        assert_eq!(unsafe { libc::poll(&mut fd, 1, 30_000) }, 1);
        assert!(probe.ended(), "fork server {fork_server}");
        // A transaction finds the same.
        assert!(exec(&mut pipe, &host, "1").is_err());
        pipe.shutdown().ok();
        drop(pipe);
    }
}
