//! [`abi::backend::Backend`] for microVM cells: spawn from the snapshot, frames through the
//! shared-memory channel, the vCPU driven by the caller's thread inside `transact`.
use std::sync::Arc;
use std::time::Instant;

use abi::backend::{
    Backend, CellPipe, FrameIo, HostSide, Interrupter as AbiInterrupter, Killer as AbiKiller,
    Layer, PipeError, Resource, SpawnError, SpawnSpec, drive,
};
use abi::wire::{self, HEADER_LEN, WireError};
use abi::{CellError, ErrorCode, HostFrame};

use crate::{Interrupter, Killer, Recv, Vm, VmConfig, VmError, kvm_available};

/// The layer this backend provides (names accepted in `required_layers`).
pub const LAYER_KVM: &str = "kvm";

/// How cells start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartMode {
    /// From the per-process snapshot (a pooled, reset VM when one is free). The default.
    #[default]
    Snapshot,
    /// Every cell boots a new VM from the image.
    Cold,
    /// From the snapshot, always in a new KVM VM (copy-on-write mapping; never the pool).
    SnapshotFresh,
}

/// The `microvm` backend.
#[derive(Clone, Debug, Default)]
pub struct MicroVm {
    /// How cells start: from the snapshot (the default) or cold.
    pub start: StartMode,
    test_mode: u32,
}

impl MicroVm {
    /// The backend with the default start ([`StartMode::Snapshot`]).
    ///
    /// ```
    /// use abi::backend::Backend;
    /// use cell_backend_microvm::MicroVm;
    ///
    /// let backend = MicroVm::new();
    /// assert_eq!(backend.name(), "microvm");
    /// // Spawning needs /dev/kvm; `available` says why not when it is missing.
    /// match backend.available() {
    ///     Ok(()) => println!("microVM cells can run here"),
    ///     Err(why) => println!("no microVM cells here: {why}"),
    /// }
    /// ```
    pub fn new() -> Self {
        MicroVm::default()
    }

    /// The backend with cells started as `start` says.
    pub fn with_start(start: StartMode) -> Self {
        MicroVm {
            start,
            test_mode: crate::layout::MODE_RUNTIME,
        }
    }

    /// The backend with every cell booting a new VM ([`StartMode::Cold`]).
    pub fn cold() -> Self {
        MicroVm {
            start: StartMode::Cold,
            test_mode: crate::layout::MODE_RUNTIME,
        }
    }

    /// Test only: cells boot the guest in a hostile test mode (`layout::MODE_*`) instead of the
    /// runtime. Scripts can never select a mode; only this host-side constructor can.
    #[doc(hidden)]
    pub fn with_test_mode(mode: u32) -> Self {
        MicroVm {
            start: StartMode::Cold,
            test_mode: mode,
        }
    }

    /// Builds the snapshot for `spec` and fills the pool with `n` VMs that have each served one
    /// handshake and one exec (so their memory is mapped in KVM's MMU), then been reset: the next
    /// `n` spawns with this memory quota and frame cap start from a warm VM.
    pub fn prewarm(&self, spec: &SpawnSpec, n: usize) -> Result<(), SpawnError> {
        struct Quiet;
        impl HostSide for Quiet {
            fn on_frame(&self, frame: abi::GuestFrame) -> abi::backend::Flow {
                match frame {
                    abi::GuestFrame::Ready(_) | abi::GuestFrame::Done { .. } => {
                        abi::backend::Flow::Done
                    }
                    abi::GuestFrame::Refused(e) => abi::backend::Flow::Abort(e),
                    _ => abi::backend::Flow::Continue,
                }
            }
        }
        let cfg = Self::vm_config(spec);
        let host: Arc<dyn HostSide> = Arc::new(Quiet);
        let deadline = || Some(Instant::now() + std::time::Duration::from_secs(10));
        let mut pipes = Vec::with_capacity(n);
        for _ in 0..n {
            let vm = Vm::from_snapshot_unpooled(&cfg).map_err(spawn_error)?;
            let mut pipe = MicroVmPipe::new(vm, host.clone(), spec.max_frame_len);
            let warm = pipe
                .transact(HostFrame::Hello(spec.hello.clone()), deadline())
                .and_then(|()| {
                    pipe.transact(
                        HostFrame::Exec {
                            id: 0,
                            source: "()".into(),
                        },
                        deadline(),
                    )
                });
            warm.map_err(|e| SpawnError::Other(format!("prewarming a VM: {e}")))?;
            pipes.push(pipe);
        }
        // Dropping them returns every VM to the pool, reset to the snapshot on reuse.
        drop(pipes);
        Ok(())
    }

    /// Guest memory for a quota: rounded down to whole pages.
    pub fn vm_config(spec: &SpawnSpec) -> VmConfig {
        let mut cfg = VmConfig::new(spec.resources.memory_bytes & !0xfff);
        let max = spec.max_frame_len.min(wire::ABSOLUTE_MAX_FRAME_LEN) as u64;
        cfg.frame_cap = max + HEADER_LEN as u64;
        cfg
    }
}

fn spawn_error(e: VmError) -> SpawnError {
    match e {
        VmError::KvmUnavailable(reason) => SpawnError::Unavailable {
            backend: "microvm".into(),
            reason,
        },
        other => SpawnError::Other(other.to_string()),
    }
}

impl Backend for MicroVm {
    fn name(&self) -> &str {
        "microvm"
    }

    fn available(&self) -> Result<(), String> {
        if kvm_available() {
            Ok(())
        } else {
            Err(crate::kvm::host()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default())
        }
    }

    fn host_layers(&self) -> Vec<Layer> {
        let (active, detail) = match crate::kvm::host() {
            Ok(_) => (
                true,
                "KVM virtual machine per cell, guest at CPL3, guest RAM = memory quota".to_string(),
            ),
            Err(e) => (false, e.to_string()),
        };
        vec![Layer {
            name: LAYER_KVM.into(),
            active,
            detail,
        }]
    }

    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        for layer in &spec.required_layers {
            if layer != LAYER_KVM {
                return Err(SpawnError::MissingLayer {
                    layer: layer.clone(),
                    reason: "the microvm backend provides only the `kvm` layer".into(),
                });
            }
        }
        let cfg = Self::vm_config(spec).with_test_mode(self.test_mode);
        let vm = match self.start {
            StartMode::Snapshot if self.test_mode == crate::layout::MODE_RUNTIME => {
                Vm::from_snapshot(&cfg)
            }
            StartMode::SnapshotFresh if self.test_mode == crate::layout::MODE_RUNTIME => {
                Vm::from_snapshot_unpooled(&cfg)
            }
            StartMode::Snapshot | StartMode::SnapshotFresh => Vm::boot(&cfg),
            StartMode::Cold => Vm::boot(&cfg),
        }
        .map_err(spawn_error)?;
        let mut pipe = MicroVmPipe::new(vm, host, spec.max_frame_len);
        pipe.set_cpu_limit(spec.resources.cpu_time_ms);
        Ok(Box::new(pipe))
    }
}

/// One cell: its VM and the host side that validates what it sends.
pub struct MicroVmPipe {
    io: VmIo,
    host: Arc<dyn HostSide>,
    max_len: u32,
    killer: Killer,
    interrupter: Interrupter,
    mem_size: u64,
}

impl MicroVmPipe {
    /// A cell over `vm`: frames go to `host`, any frame over `max_len` (clamped to the wire's
    /// absolute cap) is refused.
    pub fn new(vm: Vm, host: Arc<dyn HostSide>, max_len: u32) -> Self {
        let killer = vm.killer();
        let interrupter = vm.interrupter();
        let mem_size = vm.mem_size();
        let max_len = max_len.min(wire::ABSOLUTE_MAX_FRAME_LEN);
        MicroVmPipe {
            io: VmIo { vm: Some(vm) },
            host,
            max_len,
            killer,
            interrupter,
            mem_size,
        }
    }

    /// Limits the CPU time the cell may use over its life, in milliseconds (0: unlimited).
    pub fn set_cpu_limit(&mut self, cpu_time_ms: u64) {
        if let Some(vm) = self.io.vm.as_mut() {
            vm.set_cpu_limit(
                (cpu_time_ms > 0).then(|| std::time::Duration::from_millis(cpu_time_ms)),
            );
        }
    }

    /// The VM's error, once it died (for diagnostics).
    pub fn dead_reason(&self) -> Option<VmError> {
        self.io.vm.as_ref().and_then(|v| v.dead_reason().cloned())
    }
}

struct KillHandle(Killer);

impl AbiKiller for KillHandle {
    fn kill(&self) {
        self.0.kill();
    }
}

struct InterruptHandle(Interrupter);

impl AbiInterrupter for InterruptHandle {
    fn interrupt(&self) {
        self.0.interrupt();
    }
}

impl CellPipe for MicroVmPipe {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        if let Some(vm) = self.io.vm.as_ref() {
            // An interrupt cancels only the transaction it arrives in.
            vm.clear_interrupt().map_err(pipe_error)?;
        }
        let result = drive(&mut self.io, &*self.host, &frame, deadline, self.max_len);
        if let (Err(PipeError::Aborted(reason)), Some(vm)) = (&result, self.io.vm.as_mut()) {
            // The host side stopped the cell mid-transaction: the guest is paused inside the
            // script that broke the rule. Left as it is, the next transaction would resume that
            // script and deliver its frames (more posts past a full event queue) as if they
            // belonged to the new one. The VM is stopped here, whatever the caller does next.
            vm.abort(reason.clone());
        }
        result
    }

    fn killer(&self) -> Arc<dyn AbiKiller> {
        Arc::new(KillHandle(self.killer.clone()))
    }

    fn interrupter(&self) -> Option<Arc<dyn AbiInterrupter>> {
        Some(Arc::new(InterruptHandle(self.interrupter.clone())))
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer {
            name: LAYER_KVM.into(),
            active: true,
            detail: format!(
                "KVM virtual machine, guest at CPL3, {} MiB guest RAM is the whole memory quota",
                self.mem_size >> 20
            ),
        }]
    }

    fn shutdown(&mut self) -> Result<(), PipeError> {
        // Nothing in the guest needs a clean exit: dropping the VM returns it to the pool (reset
        // on reuse) when it is healthy, or destroys it.
        self.io.vm = None;
        Ok(())
    }
}

/// Byte-level frame I/O over the VM channel.
struct VmIo {
    vm: Option<Vm>,
}

/// Map a VM stop to the pipe error the supervisor understands.
pub fn pipe_error(e: VmError) -> PipeError {
    match e {
        VmError::Killed => PipeError::Killed,
        VmError::Dead(inner) if *inner == VmError::Killed => PipeError::Killed,
        // Limits used up: the host side words these the same for every backend.
        VmError::GuestOutOfMemory { .. } => PipeError::Exhausted {
            resource: Resource::Memory,
            detail: e.to_string(),
        },
        VmError::StackOverflow { .. } => PipeError::Exhausted {
            resource: Resource::Stack,
            detail: e.to_string(),
        },
        VmError::CpuTimeExceeded { .. } => PipeError::Exhausted {
            resource: Resource::CpuTime,
            detail: e.to_string(),
        },
        VmError::Aborted(reason) => PipeError::Aborted(reason),
        VmError::Dead(inner) if matches!(*inner, VmError::Aborted(_)) => pipe_error(*inner),
        VmError::FrameTooLarge { len, cap } => PipeError::Wire(WireError::TooLarge {
            len,
            max: cap.saturating_sub(HEADER_LEN as u64).min(u32::MAX as u64) as u32,
        }),
        VmError::BadFrame(w) => PipeError::Wire(w),
        VmError::GuestExited => PipeError::Closed,
        other => PipeError::Crashed(other.to_string()),
    }
}

impl FrameIo for VmIo {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        let vm = self.vm.as_mut().ok_or(PipeError::Closed)?;
        vm.send(frame).map_err(pipe_error)
    }

    fn recv_frame(
        &mut self,
        deadline: Option<Instant>,
        max_len: u32,
    ) -> Result<Vec<u8>, PipeError> {
        let vm = self.vm.as_mut().ok_or(PipeError::Closed)?;
        match vm.recv_body(deadline, max_len).map_err(pipe_error)? {
            Recv::Frame(body) => Ok(body),
            Recv::TimedOut => Err(PipeError::TimedOut),
            Recv::Idle => Err(PipeError::Aborted(CellError::new(
                ErrorCode::ProtocolViolation,
                "the guest waits for a host frame in the middle of a transaction",
            ))),
        }
    }
}
