//! Helpers shared by the integration tests that drive cells through `abi::backend`.
#![allow(dead_code)]
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi::backend::{Backend, CellPipe, Flow, HostSide, PipeError, Resources, SpawnSpec};
use abi::wire::DEFAULT_MAX_FRAME_LEN;
use abi::{EngineLimits, GuestFrame, Hello, HostFrame, Value};
use cell_backend_microvm::{MicroVm, kvm_available};

/// Whether KVM is usable; says so loudly when it is not (the caller then skips).
pub fn kvm() -> bool {
    if kvm_available() {
        true
    } else {
        eprintln!("SKIPPED: /dev/kvm absent");
        false
    }
}

/// Records guest frames; a transaction ends at Ready/Refused/Done.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<GuestFrame>>);

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

impl Recorder {
    pub fn last(&self) -> Option<GuestFrame> {
        self.0.lock().unwrap().last().cloned()
    }
}

/// A spec with unlimited operations (endless scripts are stopped by other limits) and `mib` of
/// guest memory.
pub fn spec_with(limits: EngineLimits, mib: u64) -> SpawnSpec {
    SpawnSpec {
        hello: Hello::new("t", limits, vec![]),
        resources: Resources {
            memory_bytes: mib << 20,
            ..Resources::default()
        },
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
        required_layers: vec![],
    }
}

pub fn spec() -> SpawnSpec {
    spec_with(
        EngineLimits {
            max_operations: 0,
            ..EngineLimits::default()
        },
        32,
    )
}

/// A generous hang guard: a test that needs it failed anyway.
pub fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(60))
}

/// Spawns a cell of `backend` for `spec` and completes its handshake.
pub fn start<H: HostSide + 'static>(
    backend: &MicroVm,
    spec: &SpawnSpec,
    host: Arc<H>,
) -> Box<dyn CellPipe> {
    let mut pipe = backend.spawn(spec, host).expect("spawn");
    pipe.transact(HostFrame::Hello(spec.hello.clone()), soon())
        .expect("handshake");
    pipe
}

pub fn exec(pipe: &mut Box<dyn CellPipe>, id: u64, src: &str) -> Result<(), PipeError> {
    pipe.transact(
        HostFrame::Exec {
            id,
            source: src.into(),
        },
        soon(),
    )
}

/// Runs `src` in a healthy cell and returns its result.
pub fn eval(
    pipe: &mut Box<dyn CellPipe>,
    host: &Recorder,
    id: u64,
    src: &str,
) -> Result<Value, abi::CellError> {
    exec(pipe, id, src).expect("transaction");
    match host.last() {
        Some(GuestFrame::Done { id: got, result }) if got == id => result,
        other => panic!("expected the completion of {id}, got {other:?}"),
    }
}
