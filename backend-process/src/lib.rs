//! The `process` backend: each cell is a child process running the embedded guest
//! program, confined by the kernel before its first instruction.
//!
//! Layers (all on by default, each reported per cell in a [`LayerReport`]): user,
//! pid, mount, ipc, uts and cgroup namespaces; a pre-made empty network namespace;
//! `pivot_root` into an empty read-only tmpfs; an unprivileged uid; no_new_privs,
//! an empty environment, every fd but the channel closed, a parent-death signal, a
//! new session; rlimits; cgroup memory/pids/cpu limits (v2 where its controllers
//! exist, v1 otherwise) and `cgroup.kill`; Landlock (no filesystem, no TCP); and a
//! seccomp-bpf allowlist compiled to a binary-search tree with an architecture check.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

// In layers, each using only those above it: the shared confinement steps and
// protocol; host facts and resources; a cell's limits, request and process; the
// direct spawn; the fork server; the choice between them; the `Backend` impl.
mod confine;
mod error;
mod fork_protocol;
mod layers;
mod seccomp;
mod step;

mod limits;

mod ceilings;
mod cgroup;
mod host;
mod image;
mod reaper;

mod cell;
mod child;
mod spec;

mod direct;
mod fork_server;
mod spawn;

mod backend;
mod deadline;
mod exit;
mod read_buf;
mod usage;
pub use usage::CgroupUsage;

#[cfg(test)]
mod capacity_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod pipe_tests;
#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod tests;

pub use backend::{ProcessBackend, ProcessInterrupter, ProcessPipe};
pub use ceilings::{
    MAX_OPEN_FILES, MAX_PROCESSES, max_memory_bytes, max_open_files, max_processes,
};
pub use cell::{ExitStatus, Killer, ProcessCell, Termination};
pub use direct::{CELL_UID, HOST_UID_BASE};
pub use error::{Error, Result};
pub use fork_server::{
    PoolLease, SERVER_CAPACITY, SERVER_MEMORY_BYTES, SERVER_MEMORY_PER_CELL, SPARES,
};
pub use host::{HostSupport, doctor, host_support};
pub use layers::{Layer, LayerReport, LayerState};
pub use limits::{Limits, MIN_MEMORY_BYTES};
pub use spec::SpawnSpec;
pub use step::Step;

/// The embedded guest program (a static executable), e.g. for benchmarks that compare
/// a bare fork+exec of it with a confined spawn.
pub fn guest_image() -> &'static [u8] {
    image::GUEST_IMAGE
}
