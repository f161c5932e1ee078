//! The `subinterp` backend: each cell is its own Rhai engine and state inside the supervisor's
//! process. The engine runs on the thread that calls exec/call, so a warm round trip has no
//! thread hop (a wake across vCPUs costs ~25 µs on the target machine). Guest frames go to the
//! host side directly, unencoded, but sized against the same frame cap as the byte-stream pipes.
//!
//! Kill, interrupt and deadlines reach a running script through the engine's progress callback: an atomic
//! flag checked on every operation and the clocks (wall, and the thread CPU clock when the
//! cell has a CPU-time limit) every [`CLOCK_EVERY`] operations.
//!
//! The engine runs on a stack of its own ([`stack`]), so a deep script ends in a limit error
//! and never overflows the caller's stack; a panic inside the engine ends that cell only
//! (`cell_crashed`), never the embedding program.
//!
//! `memory_mib` binds when the program's global allocator is [`AccountingAllocator`]
//! ([`memory`]): every block the engine allocates is charged to its cell, and a cell past its
//! limit is stopped at its next operation and gone with `limit_memory`.

mod cpu;
pub mod memory;
pub mod stack;

pub use memory::AccountingAllocator;

use abi::backend::{
    Backend, CellPipe, Flow, HostSide, Interrupter, Killer, Layer, PipeError, Resource, SpawnError,
    SpawnSpec, UsageProbe,
};
use abi::{CellError, ErrorCode, GuestFrame, HostFrame, wire};
use runtime::{Cell, Interrupt, Step, Transport, TransportError};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Operations between two reads of the clock while a deadline is set.
pub const CLOCK_EVERY: u64 = 1024;

/// The in-process backend.
///
/// Its cells run on the calling thread; `memory_mib` binds only where the program's global
/// allocator is the backend's accounting one:
///
/// ```no_run
/// use abi::backend::Backend;
/// use cell_backend_subinterp::{AccountingAllocator, Subinterp};
///
/// #[global_allocator]
/// static ALLOCATOR: AccountingAllocator = AccountingAllocator;
///
/// assert_eq!(Subinterp.name(), "subinterp");
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Subinterp;

impl Backend for Subinterp {
    fn name(&self) -> &str {
        "subinterp"
    }

    fn host_layers(&self) -> Vec<Layer> {
        vec![interpreter_layer(), memory_layer()]
    }

    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        for layer in &spec.required_layers {
            let reason = match layer.as_str() {
                MEMORY_LAYER if memory::installed() => continue,
                MEMORY_LAYER => {
                    "this program's global allocator is not the backend's AccountingAllocator, so nothing counts a cell's memory"
                }
                _ => {
                    "the subinterp boundary is the interpreter instance only; use the process or microvm backend"
                }
            };
            return Err(SpawnError::MissingLayer {
                layer: layer.clone(),
                reason: reason.into(),
            });
        }
        Ok(Box::new(SubinterpPipe {
            stop: Arc::new(Stop {
                cpu: cpu::CpuBudget::new(spec.resources.cpu_time_ms),
                memory: memory::Account::new(spec.resources.memory_bytes),
                flags: AtomicU8::default(),
                out_of_memory: AtomicBool::default(),
                in_flight: AtomicBool::default(),
                deadline: Mutex::default(),
            }),
            host,
            cell: None,
            greeted: false,
            max_frame_len: spec.max_frame_len,
            abort: Arc::default(),
        }))
    }
}

/// The only boundary this backend has: the interpreter instance.
fn interpreter_layer() -> Layer {
    Layer {
        name: "interpreter".into(),
        active: true,
        detail: "own engine, scope and limits; shares the supervisor's address space".into(),
    }
}

/// The layer that makes `memory_mib` bind in-process: the accounting allocator.
const MEMORY_LAYER: &str = "memory-accounting";

fn memory_layer() -> Layer {
    Layer {
        name: MEMORY_LAYER.into(),
        active: memory::installed(),
        detail: if memory::installed() {
            "every heap block a cell's engine allocates is charged to it against memory_mib".into()
        } else {
            "memory_mib is not enforced: this program's global allocator is not AccountingAllocator"
                .into()
        },
    }
}

/// Why a running script must stop, shared with the engine's progress callback.
struct Stop {
    /// [`KILLED`], [`INTERRUPTED`] and [`ABORTED`]: one word, so that the check the engine makes
    /// on every operation reads one flag word when nothing happened.
    flags: AtomicU8,
    deadline: Mutex<Option<Instant>>,
    /// The cell's CPU-time limit, charged on the thread that runs it.
    cpu: cpu::CpuBudget,
    /// The heap the cell's blocks take, against `memory_mib`.
    /// Held in place, not behind an `Arc`: the check the engine makes on every operation
    /// reaches the account's ledger with one load fewer.
    memory: memory::Account,
    /// Set when a script was stopped for passing `memory_mib`.
    out_of_memory: AtomicBool,
    /// Whether the engine runs a transaction now: only then does an interrupt take.
    in_flight: AtomicBool,
}

/// The cell was killed: every later operation and transaction stops.
const KILLED: u8 = 1;
/// Set by [`Interrupter::interrupt`] during a transaction; taken by the next check.
const INTERRUPTED: u8 = 2;
/// Set by the host side's `Flow::Abort`: the transaction stops as a protocol violation.
const ABORTED: u8 = 4;

impl Stop {
    /// The CPU-time limit and the deadline, read every [`CLOCK_EVERY`] operations (both clocks
    /// are system calls or locks): kept out of line, off the per-operation path.
    #[inline(never)]
    fn check_clocks(&self) -> Option<ErrorCode> {
        if self.cpu.exhausted_now() {
            return Some(ErrorCode::LimitCpu);
        }
        if let Some(deadline) = *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
            && Instant::now() >= deadline
        {
            return Some(ErrorCode::TimedOut);
        }
        None
    }

    fn out_of_memory(&self) -> bool {
        self.out_of_memory.load(Ordering::Relaxed) || self.memory.over_limit()
    }
}

impl Interrupt for Stop {
    /// Inlined into the engine's progress callback (see `Cell::with_stack`): it runs on every
    /// operation, and the common case is two loads and compares.
    #[inline]
    fn check(&self, operations: u64) -> Option<ErrorCode> {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags != 0 {
            if flags & KILLED != 0
                || (flags & INTERRUPTED != 0
                    && self.flags.fetch_and(!INTERRUPTED, Ordering::SeqCst) & INTERRUPTED != 0)
            {
                return Some(ErrorCode::Cancelled);
            }
            if flags & ABORTED != 0 {
                return Some(ErrorCode::ProtocolViolation);
            }
        }
        if self.memory.over_limit() {
            // Sticky: the script's blocks are freed as it unwinds, but the cell is done.
            self.out_of_memory.store(true, Ordering::Relaxed);
            return Some(ErrorCode::LimitMemory);
        }
        if operations.is_multiple_of(CLOCK_EVERY) {
            return self.check_clocks();
        }
        None
    }

    /// From inside one native function's long work: the clocks too, whatever the count (an
    /// engine function that looked a call of 100,000 arguments up among 65,536 permutations
    /// ran 16 s past a 1 s wall time, asking every 256 but never on a multiple of
    /// [`CLOCK_EVERY`]).
    fn check_now(&self, operations: u64) -> Option<ErrorCode> {
        self.check(operations).or_else(|| self.check_clocks())
    }
}

impl Killer for Stop {
    fn kill(&self) {
        self.flags.fetch_or(KILLED, Ordering::Relaxed);
    }
}

impl UsageProbe for Stop {
    fn memory_bytes(&self) -> Option<u64> {
        memory::installed().then(|| self.memory.live_bytes() as u64)
    }

    fn cpu_time(&self) -> Option<std::time::Duration> {
        Some(self.cpu.used())
    }
}

impl Interrupter for Stop {
    fn interrupt(&self) {
        // The script stops at its next operation with `Cancelled`; the host side, told of the
        // interrupt, words it. Outside a transaction there is nothing to stop.
        if self.in_flight.load(Ordering::SeqCst) {
            self.flags.fetch_or(INTERRUPTED, Ordering::SeqCst);
        }
    }
}

/// The guest's transport: frames go straight to the host side; a broker reply comes back as
/// the return value of `on_frame` and waits here for `recv`.
struct Inline {
    host: Arc<dyn HostSide>,
    stop: Arc<Stop>,
    reply: Option<HostFrame>,
    max_frame_len: u32,
    abort: Arc<Mutex<Option<CellError>>>,
}

impl Transport for Inline {
    fn send(&mut self, frame: GuestFrame) -> Result<(), TransportError> {
        if self.stop.cpu.is_exhausted() || self.stop.out_of_memory() {
            // The script's own report of the stop never reaches the host: the backend reports it.
            return Err(TransportError::Closed);
        }
        let len = wire::encoded_len(&frame).map_err(runtime::cannot_send)?;
        if len > self.max_frame_len as usize {
            // Worded as every byte-stream guest words it.
            return Err(runtime::cannot_send(wire::WireError::TooLarge {
                len: len as u64,
                max: self.max_frame_len,
            }));
        }
        // What the host side allocates to handle the frame is the host's, not the cell's, and
        // the time it takes (a wait for a broker reply or for room in the queue) no CPU time.
        match self
            .stop
            .cpu
            .outside(|| memory::uncharged(|| self.host.on_frame(frame)))
        {
            Flow::Reply(reply) => self.reply = Some(reply),
            Flow::Abort(err) => {
                self.stop.flags.fetch_or(ABORTED, Ordering::Relaxed);
                *self.abort.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.clone());
                return Err(TransportError::Aborted(err));
            }
            _ => {}
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<HostFrame, TransportError> {
        self.reply.take().ok_or(TransportError::Closed)
    }
}

/// Runs one host frame through the engine on its own stack, a panic caught as a crash.
fn run_engine(cell: &mut Cell, frame: HostFrame) -> Result<Step, PipeError> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stack::run_on_engine_stack(|| {
            let step = cell.handle(frame);
            (step, cell.take_deepest_stack())
        })
    }));
    match run {
        Ok(Ok(step)) => Ok(step),
        Ok(Err(e)) => Err(PipeError::Crashed(format!(
            "no stack for the engine could be mapped: {e}"
        ))),
        Err(panic) => Err(PipeError::Crashed(format!(
            "the engine panicked: {}",
            panic_text(&*panic)
        ))),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

struct SubinterpPipe {
    stop: Arc<Stop>,
    host: Arc<dyn HostSide>,
    cell: Option<Cell>,
    /// Whether the first frame has come: only then is a missing cell a closed channel.
    greeted: bool,
    max_frame_len: u32,
    /// The host side's reason for stopping the running script, if it gave one.
    abort: Arc<Mutex<Option<CellError>>>,
}

impl SubinterpPipe {
    fn deliver(&self, frame: GuestFrame) -> Result<(), PipeError> {
        match self.host.on_frame(frame) {
            Flow::Abort(err) => Err(PipeError::Aborted(err)),
            _ => Ok(()),
        }
    }
}

impl CellPipe for SubinterpPipe {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        if self.stop.flags.load(Ordering::Relaxed) & KILLED != 0 {
            return Err(PipeError::Killed);
        }
        *self.stop.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        match frame {
            HostFrame::Hello(hello) => {
                self.greeted = true;
                let transport = Inline {
                    host: self.host.clone(),
                    stop: self.stop.clone(),
                    reply: None,
                    max_frame_len: self.max_frame_len,
                    abort: self.abort.clone(),
                };
                // The engine and its state are the cell's from the start.
                let cell = self.stop.memory.charge(|| {
                    Cell::with_stack(
                        &hello,
                        Box::new(transport),
                        self.stop.clone(),
                        stack::ENGINE_BUDGET_BYTES,
                    )
                });
                match cell {
                    Ok(cell) => {
                        self.cell = Some(cell);
                        self.deliver(GuestFrame::Ready(runtime::ready()))
                    }
                    Err(err) => self.deliver(GuestFrame::Refused(err)),
                }
            }
            HostFrame::Shutdown => {
                self.greeted = true;
                self.cell = None;
                Ok(())
            }
            frame => {
                let Some(cell) = self.cell.as_mut() else {
                    if self.greeted {
                        return Err(PipeError::Closed);
                    }
                    // Before any Hello: refuse as the guest runtime's agent loop does.
                    self.greeted = true;
                    return self.deliver(GuestFrame::Refused(CellError::new(
                        ErrorCode::ProtocolViolation,
                        format!("the first frame must be Hello, got {:?}", frame.kind()),
                    )));
                };
                // A limit used up by the last operation stops this one before it runs.
                let run = if self.stop.cpu.exhausted_now() || self.stop.out_of_memory() {
                    None
                } else {
                    self.stop.cpu.start();
                    self.stop.flags.fetch_and(!INTERRUPTED, Ordering::SeqCst);
                    self.stop.in_flight.store(true, Ordering::SeqCst);
                    let run = self.stop.memory.charge(|| run_engine(cell, frame));
                    self.stop.in_flight.store(false, Ordering::SeqCst);
                    self.stop.cpu.stop();
                    Some(run)
                };
                // A panic is the crash it is, whatever its report allocated on the cell's account
                // (a backtrace took it past memory_mib: the cell answered limit_memory where the
                // other backends' guests answered cell_crashed).
                if let Some(Err(crash)) = run {
                    self.cell = None;
                    return Err(crash);
                }
                let used_up = if self.stop.cpu.is_exhausted() {
                    Some((Resource::CpuTime, self.stop.cpu.to_string()))
                } else if self.stop.out_of_memory() {
                    Some((Resource::Memory, self.stop.memory.to_string()))
                } else {
                    None
                };
                let (Some(run), None) = (run, &used_up) else {
                    // As in the other backends, a cell past its CPU time or memory is gone (and
                    // dropping it gives its engine's memory back).
                    self.cell = None;
                    let (resource, detail) =
                        used_up.unwrap_or((Resource::CpuTime, self.stop.cpu.to_string()));
                    return Err(PipeError::Exhausted { resource, detail });
                };
                let step = match run {
                    Ok(step) => step,
                    Err(crash) => {
                        // The engine's state is unknown after a panic: the cell is gone.
                        self.cell = None;
                        return Err(crash);
                    }
                };
                if let Some(err) = self.abort.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(PipeError::Aborted(err));
                }
                match step {
                    Step::Continue => Ok(()),
                    Step::Shutdown => Err(PipeError::Closed),
                    Step::Violation(err) => Err(PipeError::Aborted(err)),
                }
            }
        }
    }

    fn killer(&self) -> Arc<dyn Killer> {
        self.stop.clone()
    }

    fn interrupter(&self) -> Option<Arc<dyn Interrupter>> {
        Some(self.stop.clone())
    }

    fn usage(&self) -> Option<Arc<dyn UsageProbe>> {
        Some(self.stop.clone())
    }

    fn layers(&self) -> Vec<Layer> {
        vec![interpreter_layer()]
    }

    fn shutdown(&mut self) -> Result<(), PipeError> {
        self.cell = None;
        Ok(())
    }
}
