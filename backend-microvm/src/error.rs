//! Typed errors of the microvm backend. Everything a guest can do maps to one of these; none of
//! them is ever a host panic.

use abi::backend::{PipeError, Resource};
use abi::wire::{HEADER_LEN, WireError};

/// Why a VM could not be created or why it stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// `/dev/kvm` is missing or unusable.
    #[error("KVM unavailable: {0}")]
    KvmUnavailable(String),
    /// A KVM ioctl failed on the host side.
    #[error("KVM {op} failed: {errno}")]
    Kvm {
        /// The ioctl that failed.
        op: &'static str,
        /// The OS error number it returned.
        errno: i32,
    },
    /// Host mapping problem (mmap, memfd, madvise).
    #[error("guest memory: {0}")]
    Memory(String),
    /// The requested configuration is not usable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// The embedded guest image is malformed.
    #[error("invalid guest image: {0}")]
    BadImage(#[from] crate::elf::ElfError),
    /// A guest-supplied address/length pair fell outside guest RAM.
    #[error("guest range {addr:#x}+{len} is outside guest memory")]
    GuestAddress {
        /// Start of the range, a guest-physical address.
        addr: u64,
        /// Length of the range in bytes.
        len: u64,
    },
    /// The guest triple-faulted (any CPU exception: there is no IDT): `KVM_EXIT_SHUTDOWN`.
    #[error("guest triple-faulted (KVM_EXIT_SHUTDOWN)")]
    TripleFault,
    /// The guest touched an address that is not RAM (`KVM_EXIT_MMIO`).
    #[error("guest {} address {addr:#x} outside its memory", if *.write { "wrote" } else { "read" })]
    OutsideMemory {
        /// The guest-physical address touched.
        addr: u64,
        /// Whether it was a write (else a read).
        write: bool,
    },
    /// The guest used an I/O port the channel does not define.
    #[error("guest used undefined I/O port {port:#x} ({})", if *.write { "out" } else { "in" })]
    UndefinedPort {
        /// The port number.
        port: u16,
        /// Whether it was `out` (else `in`).
        write: bool,
    },
    /// KVM could not emulate a guest instruction.
    #[error("KVM emulation failure")]
    EmulationFailure,
    /// `KVM_EXIT_INTERNAL_ERROR` other than an emulation failure.
    #[error("KVM internal error (suberror {suberror})")]
    InternalError {
        /// KVM's suberror code.
        suberror: u32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the vCPU state was rejected.
    #[error("VM entry failed (reason {reason:#x})")]
    FailEntry {
        /// The hardware entry-failure reason.
        reason: u64,
    },
    /// A VM host process (see `hosting`) could not be started or could not start the cell.
    #[error("VM host: {0}")]
    Host(String),
    /// Any other exit the VMM does not expect.
    #[error("unexpected VM exit: {0}")]
    UnexpectedExit(String),
    /// The guest reported a panic (message is lossy UTF-8, capped).
    #[error("guest panicked: {0}")]
    GuestPanic(String),
    /// The guest's heap (bounded by the memory quota) could not satisfy an allocation.
    #[error(
        "the cell ran out of its {} MiB memory limit (an allocation of {requested} bytes failed)",
        limit >> 20
    )]
    GuestOutOfMemory {
        /// Size of the allocation that failed, in bytes.
        requested: u64,
        /// The cell's memory limit in bytes.
        limit: u64,
    },
    /// The guest ran off the bottom of its stack (a fault in the guard page: the vCPU stopped
    /// with its stack pointer at the guard).
    #[error(
        "the script overflowed the cell's {} KiB stack (calls or expressions nest too deeply)",
        crate::layout::engine_stack_bytes() >> 10
    )]
    StackOverflow {
        /// The stack pointer the vCPU stopped with.
        rsp: u64,
    },
    /// The guest used up the CPU time the cell may use over its life.
    #[error("the cell used up its CPU time limit of {limit_ms} ms ({used_ms} ms used)")]
    CpuTimeExceeded {
        /// The limit, in milliseconds.
        limit_ms: u64,
        /// CPU time used, in milliseconds.
        used_ms: u64,
    },
    /// The host side stopped the cell (a limit or a protocol rule); no guest frame is delivered
    /// after that.
    #[error("stopped by the host: {0}")]
    Aborted(abi::CellError),
    /// The guest announced a frame longer than the channel buffer.
    #[error("guest frame of {len} bytes exceeds the {cap} byte cap")]
    FrameTooLarge {
        /// The announced length in bytes.
        len: u64,
        /// The guest→host buffer's capacity.
        cap: u64,
    },
    /// The guest's frame prefix is invalid (over the cap, empty, or inconsistent with the
    /// length it announced at the doorbell).
    #[error("guest sent a bad frame: {0}")]
    BadFrame(WireError),
    /// A host frame does not fit the host->guest buffer.
    #[error("host frame of {len} bytes exceeds the {cap} byte cap")]
    HostFrameTooLarge {
        /// The frame's length in bytes.
        len: u64,
        /// The host→guest buffer's capacity.
        cap: u64,
    },
    /// The guest is not consuming host frames.
    #[error("guest is not consuming frames ({queued} queued)")]
    Backpressure {
        /// Host frames waiting.
        queued: usize,
    },
    /// The guest's entry point returned.
    #[error("guest exited")]
    GuestExited,
    /// The cell was killed through its [`crate::Killer`].
    #[error("killed")]
    Killed,
    /// The VM stopped earlier with the given error; it cannot run again.
    #[error("VM is dead: {0}")]
    Dead(Box<VmError>),
}

impl VmError {
    pub(crate) fn kvm(op: &'static str, e: vmm_sys_util::errno::Error) -> Self {
        VmError::Kvm {
            op,
            errno: e.errno(),
        }
    }
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
