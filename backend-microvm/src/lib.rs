//! The `microvm` backend: every cell is a KVM virtual machine built on raw KVM ioctls
//! (`kvm-ioctls`), running a freestanding `no_std` guest image at CPL3 in long mode.
//!
//! * The guest image (`guest/`) is built by `build.rs` and embedded.
//! * [`Vm`] owns one VM with one vCPU; the vCPU runs only while the host waits for a guest frame,
//!   on the calling thread (no thread hop on the hot path).
//! * Frames travel through two shared-memory buffers; the guest rings a doorbell (port I/O).
//!   Guest memory is hostile: every length is checked before use, copies are bounds-checked.
//! * [`Vm::from_snapshot`] starts cells from a template booted once to "engine ready".
#![deny(unsafe_op_in_unsafe_fn)]

// Layers, each using only those listed before it: memory, elf, kvm, signal, cpu (leaves);
// image (files mapped with 2 MiB pages: the image cold VMs share, and the helpers the snapshot's
// copy uses); setup (the layout written into memory); machine (KVM objects); control (what other
// threads hold of a VM); watchdog, reaper and trim (an idle cold VM's unwritten heap given back);
// vm (channel and run loop); greeting (the handshake placed with the first transaction); pool
// (reset VMs kept for reuse); snapshot (templates); hosting (VM host processes, above vm and
// snapshot); backend (the `abi::backend` contract, above hosting). `error` holds the VM errors
// and how each becomes the pipe error every caller sees, in this process or from a VM host.
pub mod backend;
mod cold_spare;
mod control;
mod cpu;
pub mod elf;
mod error;
mod greeting;
mod hosting;
mod image;
mod kvm;
mod machine;
mod memory;
mod pool;
mod reaper;
mod setup;
mod signal;
mod snapshot;
#[doc(hidden)]
pub mod trim;
mod vm;
mod watchdog;

/// Addresses, ports and modes shared with the guest (same source file on both sides).
pub mod layout {
    include!("layout.rs");
}

// The guest's pure logic, compiled into this crate's unit tests: the guest image is a
// freestanding binary with no test harness.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../guest/src/control.rs"]
mod guest_control;
#[cfg(test)]
#[path = "../guest/src/framing.rs"]
mod guest_framing;
#[cfg(test)]
#[path = "../guest/src/growth.rs"]
mod guest_growth;

pub use backend::{MicroVm, MicroVmPipe, StartMode};
pub use control::{Interrupter, Killer, Usage};
pub use error::VmError;
pub use hosting::{children_named, host_children};
pub use kvm::{bench_create_vm, bench_create_vm_vcpu, kvm_available};
pub use setup::{
    DEFAULT_FRAME_CAP, GUEST_ELF, MAX_MEM_SIZE, MIN_MEM_SIZE, VmConfig, max_mem_size,
    mem_size_for_heap,
};
pub use vm::{Recv, Vm};
