//! [`abi::backend::Backend`] for microVM cells: spawn from the snapshot, frames through the
//! shared-memory channel, the vCPU driven by the caller's thread inside `transact`.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use abi::backend::{
    Backend, CellPipe, Flow, FrameIo, HostSide, Interrupter as AbiInterrupter, Killer as AbiKiller,
    Layer, PipeError, SpawnError, SpawnSpec, drive,
};
use abi::wire::{self, HEADER_LEN};
use abi::{CellError, ErrorCode, HostFrame};

pub use crate::error::pipe_error;
use crate::greeting::{Greeted, Greeting};
use crate::hosting::hosted::{self, HostedCell};
use crate::hosting::messages::Start;
use crate::hosting::{HOST_CELLS, IN_PROCESS_CELLS};
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
    /// Every cell in a VM host process, from that host's snapshot (pooled there). The default
    /// mode does this only past the supervisor's own share of cells.
    Hosted,
}

/// The `microvm` backend.
#[derive(Clone, Debug)]
pub struct MicroVm {
    /// How cells start: from the snapshot (the default) or cold.
    pub start: StartMode,
    test_mode: u32,
    /// Live cells this process holds before [`StartMode::Snapshot`] starts new ones in VM hosts.
    in_process: usize,
    /// Most cells one VM host holds.
    per_host: usize,
    /// The executable started as a VM host.
    host_exe: PathBuf,
}

impl Default for MicroVm {
    fn default() -> Self {
        MicroVm::with_start(StartMode::Snapshot)
    }
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
            in_process: IN_PROCESS_CELLS,
            per_host: HOST_CELLS,
            host_exe: PathBuf::from("/proc/self/exe"),
        }
    }

    /// The same backend with other bounds for VM hosts: the default start keeps `in_process`
    /// live cells in this process and starts the rest in VM host processes of at most `per_host`
    /// cells each (defaults: 128 and 128). Each VM in a process slows every later VM start of that
    /// process (KVM's MMU notifiers are per address space; a host's DAMON checks a page's access
    /// through all of them) and holds two of its descriptors.
    pub fn with_hosting(mut self, in_process: usize, per_host: usize) -> Self {
        self.in_process = in_process;
        self.per_host = per_host.max(1);
        self
    }

    /// The same backend starting `exe` as its VM hosts instead of this process's own executable
    /// (`/proc/self/exe`): any binary that links this crate can be one. Where the executable
    /// cannot (this crate embedded in another language's runtime, say), the default start keeps
    /// every cell in this process and [`StartMode::Hosted`] fails to spawn with the reason.
    pub fn with_host_executable(mut self, exe: impl Into<PathBuf>) -> Self {
        self.host_exe = exe.into();
        self
    }

    /// The backend with every cell booting a new VM ([`StartMode::Cold`]).
    pub fn cold() -> Self {
        MicroVm::with_start(StartMode::Cold)
    }

    /// The backend with every cell in a VM host process ([`StartMode::Hosted`]).
    pub fn hosted() -> Self {
        MicroVm::with_start(StartMode::Hosted)
    }

    /// Test only: cells boot the guest in a hostile test mode (`layout::MODE_*`) instead of the
    /// runtime. Scripts can never select a mode; only this host-side constructor can.
    #[doc(hidden)]
    pub fn with_test_mode(mode: u32) -> Self {
        MicroVm {
            test_mode: mode,
            ..MicroVm::cold()
        }
    }

    /// Test only: the same backend with cells started as `start` says (a test mode boots the
    /// image wherever the VM lives).
    #[doc(hidden)]
    pub fn started(mut self, start: StartMode) -> Self {
        self.start = start;
        self
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

    /// Guest memory for a spec: a heap of the memory quota (whole pages) beside the image, the
    /// tables and the channel buffers of the frame cap (`setup::mem_size_for_heap`).
    pub fn vm_config(spec: &SpawnSpec) -> VmConfig {
        let max = spec.max_frame_len.min(wire::ABSOLUTE_MAX_FRAME_LEN) as u64;
        let frame_cap = max + HEADER_LEN as u64;
        VmConfig::for_heap_quota(spec.resources.memory_bytes, frame_cap)
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
                "KVM virtual machine per cell, guest at CPL3, guest heap = memory quota"
                    .to_string(),
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
        Ok(Box::new(self.spawn_pipe(spec, host)?))
    }
}

impl MicroVm {
    /// [`Backend::spawn`] with the concrete pipe (which says where its VM lives).
    pub fn spawn_pipe(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<MicroVmPipe, SpawnError> {
        for layer in &spec.required_layers {
            if layer != LAYER_KVM {
                return Err(SpawnError::MissingLayer {
                    layer: layer.clone(),
                    reason: "the microvm backend provides only the `kvm` layer".into(),
                });
            }
        }
        let cfg = Self::vm_config(spec).with_test_mode(self.test_mode);
        let runtime = self.test_mode == crate::layout::MODE_RUNTIME;
        let hosted = match self.start {
            StartMode::Hosted => true,
            // Past the supervisor's share, each VM in this process would slow every later start
            // (see `hosting`).
            StartMode::Snapshot => {
                LocalCell::live() >= self.in_process
                    && hosted::unavailable(&self.host_exe).is_none()
            }
            StartMode::Cold | StartMode::SnapshotFresh => false,
        };
        if hosted {
            let start = if runtime {
                Start::Snapshot
            } else {
                Start::Cold
            };
            let cpu_ms = spec.resources.cpu_time_ms;
            match hosted::spawn(&cfg, start, cpu_ms, self.per_host, &self.host_exe) {
                Ok(cell) => return Ok(MicroVmPipe::over_host(cell, host, spec.max_frame_len)),
                // An executable that cannot host VMs: the default start keeps its cells here.
                Err(_)
                    if self.start == StartMode::Snapshot
                        && hosted::unavailable(&self.host_exe).is_some() => {}
                Err(e) => return Err(spawn_error(e)),
            }
        }
        let vm = match self.start {
            StartMode::Snapshot if self.test_mode == crate::layout::MODE_RUNTIME => {
                Vm::from_snapshot(&cfg)
            }
            StartMode::SnapshotFresh if self.test_mode == crate::layout::MODE_RUNTIME => {
                Vm::from_snapshot_unpooled(&cfg)
            }
            StartMode::Snapshot | StartMode::SnapshotFresh | StartMode::Hosted => Vm::boot(&cfg),
            // A spare made ahead from the second cold boot of a process on (`cold_spare`).
            StartMode::Cold => crate::cold_spare::boot(&cfg),
        }
        .map_err(spawn_error)?;
        let mut pipe = MicroVmPipe::new(vm, host, spec.max_frame_len);
        pipe.set_cpu_limit(spec.resources.cpu_time_ms);
        Ok(pipe)
    }
}

/// A cell in this process reads its VM's counts directly, also while the vCPU runs.
impl abi::backend::UsageProbe for crate::Usage {
    fn memory_bytes(&self) -> Option<u64> {
        self.heap_bytes()
    }

    fn cpu_time(&self) -> Option<std::time::Duration> {
        Some(crate::Usage::cpu_time(self))
    }
}

/// One cell: its VM (in this process or a VM host's) and the host side that validates what it
/// sends.
pub struct MicroVmPipe {
    io: CellIo,
    host: Arc<dyn HostSide>,
    max_len: u32,
    killer: Arc<dyn AbiKiller>,
    interrupter: Arc<dyn AbiInterrupter>,
    mem_size: u64,
    /// A handshake answered from the template's record, still to be placed or checked.
    greeting: Greeting,
}

impl MicroVmPipe {
    /// A cell over `vm`: frames go to `host`, any frame over `max_len` (clamped to the wire's
    /// absolute cap) is refused.
    pub fn new(vm: Vm, host: Arc<dyn HostSide>, max_len: u32) -> Self {
        let killer = Arc::new(KillHandle(vm.killer()));
        let interrupter = Arc::new(InterruptHandle(vm.interrupter()));
        let mem_size = vm.mem_size();
        MicroVmPipe {
            io: CellIo::Local(VmIo {
                vm: Some(vm),
                _slot: LocalCell::count(),
            }),
            host,
            max_len: max_len.min(wire::ABSOLUTE_MAX_FRAME_LEN),
            killer,
            interrupter,
            mem_size,
            greeting: Greeting::default(),
        }
    }

    fn over_host(cell: HostedCell, host: Arc<dyn HostSide>, max_len: u32) -> Self {
        MicroVmPipe {
            killer: cell.killer(),
            interrupter: cell.interrupter(),
            mem_size: cell.mem_size(),
            io: CellIo::Hosted(Some(cell)),
            host,
            max_len: max_len.min(wire::ABSOLUTE_MAX_FRAME_LEN),
            greeting: Greeting::default(),
        }
    }

    /// Answers the handshake from the template's record of the guest's answer, when the VM is
    /// still at the snapshot point and the guest accepts this `Hello` (its ABI version and
    /// schema, modules it provides), and keeps the `Hello` for the first transaction
    /// (`greeting`). `None`: the handshake goes to the guest now.
    fn defer_handshake(&mut self, frame: &HostFrame) -> Option<Result<(), PipeError>> {
        let HostFrame::Hello(hello) = frame else {
            return None;
        };
        let answer = match &mut self.io {
            CellIo::Local(VmIo { vm: Some(vm), .. }) => vm.take_known_answer()?,
            CellIo::Hosted(Some(cell)) => cell.take_known_answer()?,
            _ => return None,
        };
        let abi::GuestFrame::Ready(ready) = wire::decode_body(&answer).ok()? else {
            return None;
        };
        if !crate::greeting::accepts(&ready, hello) {
            return None;
        }
        let bytes = match wire::encode(frame, self.max_len) {
            Ok(bytes) => bytes,
            Err(e) => return Some(Err(e.into())),
        };
        Some(match self.host.on_frame(abi::GuestFrame::Ready(ready)) {
            Flow::Done => {
                self.greeting = Greeting::deferred(bytes, answer);
                Ok(())
            }
            Flow::Abort(err) => Err(PipeError::Aborted(err)),
            _ => Err(PipeError::Aborted(CellError::new(
                ErrorCode::ProtocolViolation,
                "the handshake answer did not end the handshake",
            ))),
        })
    }

    /// Limits the CPU time the cell may use over its life, in milliseconds (0: unlimited).
    /// (A hosted cell's limit is set when it starts.)
    pub fn set_cpu_limit(&mut self, cpu_time_ms: u64) {
        if let CellIo::Local(VmIo { vm: Some(vm), .. }) = &mut self.io {
            vm.set_cpu_limit(
                (cpu_time_ms > 0).then(|| std::time::Duration::from_millis(cpu_time_ms)),
            );
        }
    }

    /// The VM's error, once it died (for diagnostics; a hosted VM's stays in its host).
    pub fn dead_reason(&self) -> Option<VmError> {
        match &self.io {
            CellIo::Local(io) => io.vm.as_ref().and_then(|v| v.dead_reason().cloned()),
            CellIo::Hosted(_) => None,
        }
    }

    /// Test only: whether the handshake was answered from the template's record and still
    /// waits to be placed with the first transaction (`greeting`).
    #[doc(hidden)]
    pub fn handshake_deferred(&self) -> bool {
        self.greeting.is_owed()
    }

    /// The pid of the VM host process the cell's VM lives in (None: this process).
    pub fn host_pid(&self) -> Option<u32> {
        match &self.io {
            CellIo::Hosted(Some(cell)) => Some(cell.host_pid()),
            _ => None,
        }
    }
}

/// Live cells whose VM is in this process (the share [`IN_PROCESS_CELLS`] bounds).
struct LocalCell;

static LOCAL_CELLS: AtomicUsize = AtomicUsize::new(0);

impl LocalCell {
    fn count() -> LocalSlot {
        LOCAL_CELLS.fetch_add(1, Ordering::Relaxed);
        LocalSlot
    }

    fn live() -> usize {
        LOCAL_CELLS.load(Ordering::Relaxed)
    }
}

/// One cell of [`LOCAL_CELLS`], given back when the cell ends.
struct LocalSlot;

impl Drop for LocalSlot {
    fn drop(&mut self) {
        LOCAL_CELLS.fetch_sub(1, Ordering::Relaxed);
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
        // An interrupt cancels only the transaction it arrives in.
        match &mut self.io {
            CellIo::Local(VmIo { vm: Some(vm), .. }) => vm.clear_interrupt().map_err(pipe_error)?,
            CellIo::Hosted(Some(cell)) => cell.start_transaction(),
            _ => {}
        }
        let result = match &frame {
            HostFrame::Hello(_) if !self.greeting.is_owed() => self.defer_handshake(&frame),
            _ => None,
        };
        let result = match result {
            Some(deferred) => deferred,
            None if self.greeting.is_owed() => {
                let cap = self.io.frame_cap();
                let mut io = Greeted {
                    io: &mut self.io,
                    greeting: &mut self.greeting,
                    cap,
                };
                drive(&mut io, &*self.host, &frame, deadline, self.max_len)
            }
            None => drive(&mut self.io, &*self.host, &frame, deadline, self.max_len),
        };
        if let CellIo::Hosted(Some(cell)) = &mut self.io {
            cell.end_transaction();
        }
        if let Err(PipeError::Aborted(reason)) = &result {
            // The host side stopped the cell mid-transaction: the guest is paused inside the
            // script that broke the rule. Left as it is, the next transaction would resume that
            // script and deliver its frames (more posts past a full event queue) as if they
            // belonged to the new one. The VM is stopped here, whatever the caller does next.
            match &mut self.io {
                CellIo::Local(VmIo { vm: Some(vm), .. }) => vm.abort(reason.clone()),
                CellIo::Hosted(Some(cell)) => cell.abort(reason.clone()),
                _ => {}
            }
        }
        result
    }

    fn killer(&self) -> Arc<dyn AbiKiller> {
        self.killer.clone()
    }

    fn interrupter(&self) -> Option<Arc<dyn AbiInterrupter>> {
        Some(self.interrupter.clone())
    }

    /// The guest heap's live bytes and the vCPU's CPU time; a hosted cell's as of its host's
    /// last answer, with its liveness between transactions (its host process may be killed).
    fn usage(&self) -> Option<Arc<dyn abi::backend::UsageProbe>> {
        match &self.io {
            CellIo::Local(VmIo { vm: Some(vm), .. }) => Some(Arc::new(vm.usage())),
            CellIo::Hosted(Some(cell)) => Some(cell.probe()),
            _ => None,
        }
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer {
            name: LAYER_KVM.into(),
            active: true,
            detail: format!(
                "KVM virtual machine, guest at CPL3, {} MiB guest RAM: a heap of the memory quota \
                 beside the image, stack and channel buffers",
                self.mem_size >> 20
            ),
        }]
    }

    fn shutdown(&mut self) -> Result<(), PipeError> {
        // Nothing in the guest needs a clean exit: dropping the VM returns it to the pool (reset
        // on reuse) when it is healthy, or destroys it.
        match &mut self.io {
            CellIo::Local(io) => io.vm = None,
            CellIo::Hosted(cell) => *cell = None,
        }
        Ok(())
    }
}

/// Where a cell's VM runs: on the caller's thread, or in a VM host process (`None`: shut down).
// One per cell, never moved on the hot path: the common local VM stays inline.
#[allow(clippy::large_enum_variant)]
enum CellIo {
    Local(VmIo),
    Hosted(Option<HostedCell>),
}

impl CellIo {
    /// Largest batch of frames the guest's buffer takes at once.
    fn frame_cap(&self) -> usize {
        match self {
            CellIo::Local(VmIo { vm: Some(vm), .. }) => vm.frame_cap(),
            CellIo::Hosted(Some(cell)) => cell.frame_cap(),
            // A closed cell sends nothing.
            _ => 0,
        }
    }
}

impl FrameIo for CellIo {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        match self {
            CellIo::Local(io) => io.send_frame(frame),
            CellIo::Hosted(Some(cell)) => cell.send_frame(frame),
            CellIo::Hosted(None) => Err(PipeError::Closed),
        }
    }

    fn recv_frame(
        &mut self,
        deadline: Option<Instant>,
        max_len: u32,
    ) -> Result<Vec<u8>, PipeError> {
        match self {
            CellIo::Local(io) => io.recv_frame(deadline, max_len),
            CellIo::Hosted(Some(cell)) => cell.recv_frame(deadline, max_len),
            CellIo::Hosted(None) => Err(PipeError::Closed),
        }
    }
}

/// Byte-level frame I/O over the VM channel.
struct VmIo {
    vm: Option<Vm>,
    _slot: LocalSlot,
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
