//! The contract a backend implements, so the supervisor and the conformance suite can drive it.
//!
//! A backend owns one thing: the containment boundary. It spawns a cell, moves frames across the
//! boundary and kills the cell. Protocol semantics — correlation, validation of every guest frame,
//! the event queue, broker dispatch — live once, in the [`HostSide`] the supervisor hands to
//! [`Backend::spawn`]; every pipe delivers each guest frame to it and obeys the [`Flow`] it returns.
//!
//! A transaction is one host frame (Hello, Exec, Call) and the guest frames it causes, up to the
//! one the host side answers with [`Flow::Done`]. Byte-stream backends implement [`FrameIo`] and
//! get the whole transaction loop from [`drive`]; in-process backends may call the host side
//! directly, without encoding, as long as they honour the same flow.
//!
//! Third-party backends implement [`Backend`] and [`CellPipe`], register with the supervisor and
//! run the conformance suite (`cell-conformance`) against themselves.

pub mod watchdog;

use crate::{CellError, ErrorCode, GuestFrame, Hello, HostFrame, wire};
use std::{boxed::Box, string::String, sync::Arc, time::Instant, vec::Vec};

/// What the host side tells the pipe after each guest frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum Flow {
    /// Keep delivering guest frames.
    Continue,
    /// Send this frame to the guest (a broker reply), then keep delivering.
    Reply(HostFrame),
    /// The transaction is complete.
    Done,
    /// Stop: the guest broke the protocol or a limit; the cell must be killed.
    Abort(CellError),
}

/// The host side of the protocol for one cell. Implemented once, by the supervisor.
pub trait HostSide: Send + Sync {
    /// Handles one frame from the guest and says how the transaction goes on.
    fn on_frame(&self, frame: GuestFrame) -> Flow;

    /// The most memory one decoded guest frame may take ([`wire::decode_body_within`]), which
    /// [`drive`] enforces while decoding; `None`: no ceiling beyond the frame cap.
    fn max_frame_memory(&self) -> Option<usize> {
        None
    }
}

/// Kills a cell from any thread, at any time, promptly. Idempotent.
pub trait Killer: Send + Sync {
    /// Kills the cell: its process, VM or engine stops, and any transaction in flight fails.
    fn kill(&self);
}

/// Ends the exec/call running in a cell from any thread and leaves the cell usable: the
/// transaction in flight fails with `Cancelled`, state defined before it stays. Idempotent; a
/// no-op when nothing runs.
pub trait Interrupter: Send + Sync {
    /// Interrupts the exec/call in flight, if any.
    fn interrupt(&self);
}

/// What a cell uses now, as its boundary counts it, read from any thread (also while it runs).
pub trait UsageProbe: Send + Sync {
    /// Bytes of memory the cell holds now; `None` where the boundary does not count them.
    fn memory_bytes(&self) -> Option<u64>;
    /// CPU time the cell has used over its life (up to the end of its last transaction, or
    /// now); `None` where the boundary does not count it.
    fn cpu_time(&self) -> Option<core::time::Duration>;
    /// Whether the cell's boundary ended on its own while no transaction ran (its process was
    /// killed from outside, say), told without waiting. A transaction would find out by
    /// failing; this lets the embedder say so before one runs. `false` where the boundary
    /// cannot end between transactions or cannot tell.
    fn ended(&self) -> bool {
        false
    }
}

/// Resource limits the boundary enforces (beyond the engine limits in [`Hello`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Memory the cell may use: address space, cgroup limit or guest RAM.
    pub memory_bytes: u64,
    /// CPU time over the cell's life, in milliseconds (0 = unlimited).
    pub cpu_time_ms: u64,
    /// Processes or threads the cell may create (process backend).
    pub max_processes: u32,
    /// Open file descriptors (process backend).
    pub max_open_files: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            memory_bytes: 64 << 20,
            cpu_time_ms: 0,
            max_processes: 1,
            max_open_files: 16,
        }
    }
}

/// A confinement layer and whether it is active for a cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Name of the layer (e.g. `seccomp`, `landlock`, `kvm`), as a policy's `require` names it.
    pub name: String,
    /// Whether the layer confines this cell.
    pub active: bool,
    /// Why it is inactive, or what it enforces.
    pub detail: String,
}

/// Everything a backend needs to spawn one cell.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    /// The handshake the host will send; carries the name, engine limits and modules.
    pub hello: Hello,
    /// Memory, CPU and process limits the backend enforces.
    pub resources: Resources,
    /// Cap on any frame in either direction, checked before allocation.
    pub max_frame_len: u32,
    /// Confinement layers the policy requires; a backend that cannot provide one refuses to spawn.
    pub required_layers: Vec<String>,
}

/// Why a backend could not spawn a cell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The backend cannot run on this host (no /dev/kvm, no guest binary, ...).
    #[error("backend {backend} is unavailable here: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: String,
        /// What is missing.
        reason: String,
    },
    /// The policy requires a confinement layer this backend cannot provide here.
    #[error("required confinement layer {layer} is not available: {reason}")]
    MissingLayer {
        /// The layer's name.
        layer: String,
        /// Why it is not available.
        reason: String,
    },
    /// An OS call failed while spawning.
    #[error("spawn failed: {0}")]
    Io(#[from] std::io::Error),
    /// Any other spawn failure, with its reason.
    #[error("spawn failed: {0}")]
    Other(String),
}

/// A resource of the boundary a cell can use up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// [`Resources::memory_bytes`].
    Memory,
    /// [`Resources::cpu_time_ms`].
    CpuTime,
    /// The stack the engine runs on: something nested deeper than the stack budget's checks
    /// see (a value cloned or dropped level by level) reached the guard page.
    Stack,
}

/// Why a transaction did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeError {
    /// [`Killer::kill`] stopped the cell.
    #[error("the cell was killed")]
    Killed,
    /// The transaction's deadline passed and the cell was stopped.
    #[error("the cell ran past its deadline")]
    TimedOut,
    /// The cell's end of the channel closed before the transaction completed.
    #[error("the cell closed its channel")]
    Closed,
    /// The cell died (a signal, a panic, a VM exit), with what is known of why.
    #[error("the cell crashed: {0}")]
    Crashed(String),
    /// A frame from the cell failed to decode or broke the frame rules.
    #[error("the cell sent a bad frame: {0}")]
    Wire(#[from] wire::WireError),
    /// The host side aborted the transaction (a [`Flow::Abort`]).
    #[error("{0}")]
    Aborted(CellError),
    /// The channel's read or write failed.
    #[error("channel i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The boundary stopped the cell for using up `resource` (an OOM kill, SIGXCPU, ...). The
    /// host side words the message the same for every backend; `detail` is for logs.
    #[error("the cell used up its {resource:?} limit: {detail}")]
    Exhausted {
        /// The resource used up.
        resource: Resource,
        /// What the boundary reported, for logs.
        detail: String,
    },
}

impl PipeError {
    /// The error a caller of exec/call sees when the transaction broke.
    pub fn to_cell_error(&self) -> CellError {
        let code = match self {
            PipeError::Killed => ErrorCode::Cancelled,
            PipeError::TimedOut => ErrorCode::TimedOut,
            PipeError::Closed | PipeError::Crashed(_) | PipeError::Io(_) => ErrorCode::CellCrashed,
            PipeError::Wire(wire::WireError::TooLarge { .. }) => ErrorCode::LimitFrameSize,
            PipeError::Wire(wire::WireError::OverMemory { .. }) => ErrorCode::LimitValue,
            PipeError::Wire(_) => ErrorCode::ProtocolViolation,
            PipeError::Exhausted {
                resource: Resource::Memory,
                ..
            } => ErrorCode::LimitMemory,
            PipeError::Exhausted {
                resource: Resource::CpuTime,
                ..
            } => ErrorCode::LimitCpu,
            PipeError::Exhausted {
                resource: Resource::Stack,
                ..
            } => ErrorCode::LimitCallDepth,
            PipeError::Aborted(e) => return e.clone(),
        };
        CellError::new(code, std::format!("{self}"))
    }
}

/// A spawned cell as its backend sees it.
pub trait CellPipe: Send {
    /// Sends `frame` and delivers every guest frame it causes to the host side until the host
    /// side says [`Flow::Done`]. Past `deadline` the transaction fails with [`PipeError::TimedOut`].
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError>;

    /// A handle that kills this cell from any thread, including while `transact` runs.
    fn killer(&self) -> Arc<dyn Killer>;

    /// A handle that interrupts the running transaction without killing the cell, if the
    /// backend can (`None`: only [`CellPipe::killer`] stops a running script).
    fn interrupter(&self) -> Option<Arc<dyn Interrupter>> {
        None
    }

    /// Reads what the cell uses now, from any thread; `None` where the backend has no probe.
    fn usage(&self) -> Option<Arc<dyn UsageProbe>> {
        None
    }

    /// The confinement layers and whether each is active.
    fn layers(&self) -> Vec<Layer> {
        Vec::new()
    }

    /// Asks the cell to exit and releases its resources. Killing first is allowed.
    fn shutdown(&mut self) -> Result<(), PipeError>;
}

/// A containment boundary that spawns cells.
pub trait Backend: Send + Sync {
    /// Short name used in policies and on the command line (`subinterp`, `process`, `microvm`).
    fn name(&self) -> &str;

    /// `Ok` if cells can be spawned on this host, else why not.
    fn available(&self) -> Result<(), String> {
        Ok(())
    }

    /// The confinement layers this backend can provide on this host, and whether each works
    /// here (for `cell doctor`). A layer a policy requires must be listed active here.
    fn host_layers(&self) -> Vec<Layer> {
        Vec::new()
    }

    /// Spawns a cell; every guest frame it ever sends goes to `host`.
    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError>;
}

/// Byte-level frame transport for backends whose boundary carries bytes (sockets, shared memory).
pub trait FrameIo: Send {
    /// Sends one whole encoded frame (length prefix included).
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError>;

    /// Receives the next whole frame body from the guest, without its prefix. Implementations
    /// check the prefix with [`wire::body_len`] against `max_len` before allocating the body.
    fn recv_frame(&mut self, deadline: Option<Instant>, max_len: u32)
    -> Result<Vec<u8>, PipeError>;
}

/// The transaction loop every byte-stream backend shares: send `frame`, then decode each guest
/// frame, hand it to `host` and follow its [`Flow`] until [`Flow::Done`].
pub fn drive<I: FrameIo + ?Sized>(
    io: &mut I,
    host: &dyn HostSide,
    frame: &HostFrame,
    deadline: Option<Instant>,
    max_len: u32,
) -> Result<(), PipeError> {
    io.send_frame(&wire::encode(frame, max_len)?)?;
    let max_memory = host.max_frame_memory();
    loop {
        let body = io.recv_frame(deadline, max_len)?;
        let guest: GuestFrame = match max_memory {
            Some(max) => wire::decode_body_within(&body, max)?,
            None => wire::decode_body(&body)?,
        };
        match host.on_frame(guest) {
            Flow::Continue => {}
            Flow::Reply(reply) => io.send_frame(&wire::encode(&reply, max_len)?)?,
            Flow::Done => return Ok(()),
            Flow::Abort(err) => return Err(PipeError::Aborted(err)),
        }
    }
}
