//! The microvm backend through the `abi::backend` contract: spawn, transact, kill, and hostile
//! guests reported as typed errors while the host (and other cells) keep working.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::backend::{Backend, CellPipe, PipeError, SpawnError};
use abi::wire::DEFAULT_MAX_FRAME_LEN;
use abi::{GuestFrame, HostFrame, Value};
use cell_backend_microvm::layout::*;
use cell_backend_microvm::{MicroVm, StartMode, VmError};
use common::*;

fn spawn(b: &MicroVm) -> (Box<dyn CellPipe>, Arc<Recorder>) {
    let host = Arc::new(Recorder::default());
    let pipe = b.spawn(&spec(), host.clone()).expect("spawn");
    (pipe, host)
}

fn hello(pipe: &mut Box<dyn CellPipe>) -> Result<(), PipeError> {
    pipe.transact(HostFrame::Hello(spec().hello), soon())
}

#[test]
fn spawn_exec_and_post_through_the_contract() {
    if !kvm() {
        return;
    }
    for backend in [MicroVm::new(), MicroVm::cold()] {
        let (mut pipe, host) = spawn(&backend);
        hello(&mut pipe).unwrap();
        pipe.transact(
            HostFrame::Exec {
                id: 1,
                source: "post(40 + 2); 1".into(),
            },
            soon(),
        )
        .unwrap();
        let frames = host.0.lock().unwrap().clone();
        assert!(matches!(frames[0], GuestFrame::Ready(_)));
        assert_eq!(frames[1], GuestFrame::Post(Value::Int(42)));
        assert_eq!(
            frames[2],
            GuestFrame::Done {
                id: 1,
                result: Ok(Value::Int(1))
            }
        );
        assert!(pipe.layers().iter().any(|l| l.name == "kvm" && l.active));
        pipe.shutdown().unwrap();
        assert!(matches!(
            pipe.transact(HostFrame::Shutdown, soon()),
            Err(PipeError::Closed)
        ));
    }
}

#[test]
fn unknown_required_layer_is_refused() {
    if !kvm() {
        return;
    }
    let layers = MicroVm::new().host_layers();
    assert!(
        layers.iter().any(|l| l.name == "kvm" && l.active),
        "{layers:?}"
    );
    let mut s = spec();
    s.required_layers = vec!["kvm".into()];
    assert!(
        MicroVm::new()
            .spawn(&s, Arc::new(Recorder::default()))
            .is_ok()
    );
    let mut s = spec();
    s.required_layers = vec!["seccomp".into()];
    let r = MicroVm::new().spawn(&s, Arc::new(Recorder::default()));
    assert!(matches!(r, Err(SpawnError::MissingLayer { .. })));
}

#[test]
fn a_quota_too_small_for_a_cell_fails_its_spawn_or_start() {
    if !kvm() {
        return;
    }
    let mut s = spec();
    s.resources.memory_bytes = 64 << 10;
    for backend in [MicroVm::new(), MicroVm::cold()] {
        let started = backend
            .spawn(&s, Arc::new(Recorder::default()))
            .map_err(|e| e.to_string())
            .and_then(|mut pipe| {
                pipe.transact(HostFrame::Hello(s.hello.clone()), soon())
                    .map_err(|e| e.to_string())?;
                pipe.transact(
                    HostFrame::Exec {
                        id: 1,
                        source: "1".into(),
                    },
                    soon(),
                )
                .map_err(|e| e.to_string())
            });
        let err = started.expect_err("64 KiB holds no engine");
        eprintln!("{err}");
    }
}

#[test]
fn wall_time_interrupts_an_endless_script_and_kill_works_from_another_thread() {
    if !kvm() {
        return;
    }
    let (mut pipe, _) = spawn(&MicroVm::new());
    hello(&mut pipe).unwrap();
    let r = pipe.transact(
        HostFrame::Exec {
            id: 1,
            source: "loop {}".into(),
        },
        Some(Instant::now() + Duration::from_millis(100)),
    );
    assert!(matches!(r, Err(PipeError::TimedOut)), "{r:?}");

    let (mut pipe, _) = spawn(&MicroVm::new());
    hello(&mut pipe).unwrap();
    let killer = pipe.killer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        killer.kill();
    });
    let r = pipe.transact(
        HostFrame::Exec {
            id: 1,
            source: "loop {}".into(),
        },
        None,
    );
    t.join().unwrap();
    assert!(matches!(r, Err(PipeError::Killed)), "{r:?}");
}

/// Spawn a hostile guest, drive one transaction, return the pipe error and the typed VM error.
fn hostile(mode: u32) -> (PipeError, VmError) {
    let (mut pipe, _) = spawn(&MicroVm::with_test_mode(mode));
    let err = hello(&mut pipe).expect_err("a hostile guest cannot complete a handshake");
    // Downcast is not available through the trait object; respawn a concrete pipe instead.
    let host = Arc::new(Recorder::default());
    let vm =
        cell_backend_microvm::Vm::boot(&MicroVm::vm_config(&spec()).with_test_mode(mode)).unwrap();
    let mut concrete = cell_backend_microvm::MicroVmPipe::new(vm, host, DEFAULT_MAX_FRAME_LEN);
    let _ = concrete.transact(HostFrame::Hello(spec().hello), soon());
    (err, concrete.dead_reason().expect("the VM is dead"))
}

#[test]
fn hostile_guests_are_reported_as_typed_errors() {
    if !kvm() {
        return;
    }
    let (mut good, _) = spawn(&MicroVm::new());
    hello(&mut good).unwrap();

    let (p, v) = hostile(MODE_TRIPLE_FAULT);
    assert!(matches!(p, PipeError::Crashed(_)));
    assert_eq!(v, VmError::TripleFault);

    let (p, v) = hostile(MODE_STACK_OVERFLOW);
    assert!(
        matches!(
            p,
            PipeError::Exhausted {
                resource: abi::backend::Resource::Stack,
                ..
            }
        ),
        "{p:?}"
    );
    assert_eq!(p.to_cell_error().code, abi::ErrorCode::LimitCallDepth);
    assert!(matches!(v, VmError::StackOverflow { .. }), "{v:?}");

    let (p, v) = hostile(MODE_WRITE_OUTSIDE);
    assert!(matches!(p, PipeError::Crashed(_)));
    assert!(
        matches!(v, VmError::OutsideMemory { write: true, .. }),
        "{v:?}"
    );

    let (p, v) = hostile(MODE_HEAP_EXHAUST);
    assert!(
        matches!(p, PipeError::Exhausted { resource: abi::backend::Resource::Memory, ref detail } if detail.contains("32 MiB")),
        "{p:?}"
    );
    assert!(matches!(v, VmError::GuestOutOfMemory { .. }), "{v:?}");

    let (p, v) = hostile(MODE_GARBAGE_FRAME);
    assert!(matches!(p, PipeError::Wire(_)), "{p:?}");
    assert!(matches!(v, VmError::BadFrame(_)), "{v:?}");

    let (p, v) = hostile(MODE_ABSURD_LENGTH);
    assert!(
        matches!(p, PipeError::Wire(abi::wire::WireError::TooLarge { .. })),
        "{p:?}"
    );
    assert!(
        matches!(
            v,
            VmError::FrameTooLarge {
                len: 0xffff_fff0,
                ..
            }
        ),
        "{v:?}"
    );

    let (p, v) = hostile(MODE_UNDEFINED_PORT);
    assert!(matches!(p, PipeError::Crashed(_)));
    assert_eq!(
        v,
        VmError::UndefinedPort {
            port: 0x80,
            write: true
        }
    );

    let (p, v) = hostile(MODE_PANIC);
    assert!(
        matches!(p, PipeError::Crashed(ref m) if m.contains("guest panic requested")),
        "{p:?}"
    );
    assert!(matches!(v, VmError::GuestPanic(_)));

    // The spinning guest: its deadline is honoured, then kill stops it.
    let (mut pipe, _) = spawn(&MicroVm::with_test_mode(MODE_SPIN));
    let r = pipe.transact(
        HostFrame::Hello(spec().hello),
        Some(Instant::now() + Duration::from_millis(50)),
    );
    assert!(matches!(r, Err(PipeError::TimedOut)), "{r:?}");
    pipe.killer().kill();
    assert!(matches!(
        pipe.transact(HostFrame::Shutdown, None),
        Err(PipeError::Killed)
    ));

    // The host and the healthy cell are unharmed.
    good.transact(
        HostFrame::Exec {
            id: 9,
            source: "6 * 7".into(),
        },
        soon(),
    )
    .unwrap();
}

#[test]
fn snapshot_mode_is_the_default() {
    assert_eq!(MicroVm::new().start, StartMode::Snapshot);
}

#[test]
fn cells_move_between_threads_and_run_concurrently() {
    if !kvm() {
        return;
    }
    // A cell spawned here runs its vCPU on other threads, one after the other.
    let (mut pipe, host) = spawn(&MicroVm::new());
    hello(&mut pipe).unwrap();
    for i in 0..3u64 {
        pipe = std::thread::spawn(move || {
            pipe.transact(
                HostFrame::Exec {
                    id: 10 + i,
                    source: format!("post({i}); {i}"),
                },
                soon(),
            )
            .unwrap();
            pipe
        })
        .join()
        .unwrap();
    }
    assert_eq!(
        host.0.lock().unwrap().last(),
        Some(&GuestFrame::Done {
            id: 12,
            result: Ok(Value::Int(2))
        })
    );

    // Several threads spawn, run and kill cells at once; every outcome is a clean result.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..6u64 {
                    let (mut pipe, _) = spawn(&MicroVm::new());
                    hello(&mut pipe).unwrap();
                    if (w + i) % 3 == 0 {
                        let killer = pipe.killer();
                        let t = std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(20));
                            killer.kill();
                        });
                        let r = pipe.transact(
                            HostFrame::Exec {
                                id: 1,
                                source: "loop {}".into(),
                            },
                            None,
                        );
                        t.join().unwrap();
                        assert!(matches!(r, Err(PipeError::Killed)), "{r:?}");
                    } else {
                        pipe.transact(
                            HostFrame::Exec {
                                id: 1,
                                source: "40 + 2".into(),
                            },
                            soon(),
                        )
                        .unwrap();
                    }
                    pipe.shutdown().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn prewarm_fills_the_pool() {
    if !kvm() {
        return;
    }
    let mut s = spec();
    s.resources.memory_bytes = 30 << 20; // a size no other test uses: the pool is ours
    MicroVm::new().prewarm(&s, 2).unwrap();
    let cfg = MicroVm::vm_config(&s);
    let a = cell_backend_microvm::Vm::from_snapshot(&cfg).unwrap();
    let b = cell_backend_microvm::Vm::from_snapshot(&cfg).unwrap();
    let c = cell_backend_microvm::Vm::from_snapshot(&cfg).unwrap();
    let d = cell_backend_microvm::Vm::from_snapshot(&cfg).unwrap();
    assert!(a.is_reused() && b.is_reused());
    assert!(c.is_reused(), "the template's own warm-up is pooled too");
    assert!(!d.is_reused(), "only two were prewarmed");
    // A prewarmed cell works like any other.
    let host = Arc::new(Recorder::default());
    let mut pipe = cell_backend_microvm::MicroVmPipe::new(a, host.clone(), DEFAULT_MAX_FRAME_LEN);
    pipe.transact(HostFrame::Hello(s.hello.clone()), soon())
        .unwrap();
    pipe.transact(
        HostFrame::Exec {
            id: 5,
            source: "6 * 7".into(),
        },
        soon(),
    )
    .unwrap();
    assert_eq!(
        host.0.lock().unwrap().last(),
        Some(&GuestFrame::Done {
            id: 5,
            result: Ok(Value::Int(42))
        })
    );
}
