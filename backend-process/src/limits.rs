//! A cell's resource limits and the rlimits they become (what this host allows is in
//! `ceilings.rs`).

use crate::fork_protocol::STACK_BYTES;

/// Smallest memory limit a cell may be given.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;

/// Resource limits of one cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory: the heap the guest's allocator holds the cell to (the bytes of its live blocks,
    /// as every backend counts them). The memory cgroup is [`Limits::cgroup_memory_bytes`],
    /// above it; the address-space rlimit that plus [`Limits::ADDRESS_SPACE_SLACK`].
    /// At most [`crate::max_memory_bytes`].
    pub memory_bytes: u64,
    /// CPU time over the cell's life, in milliseconds (0 = unlimited): a CPU-time timer the
    /// guest starts when its handshake is answered ends the cell with `limit_cpu`; `RLIMIT_CPU`, a
    /// second later, is the backstop.
    pub cpu_time_ms: u64,
    /// CPU bandwidth (cgroup), in percent of one CPU.
    pub cpu_percent: u32,
    /// Processes and threads (cgroup pids and RLIMIT_NPROC), at most [`crate::MAX_PROCESSES`].
    pub max_processes: u32,
    /// Open files (RLIMIT_NOFILE), at most [`crate::MAX_OPEN_FILES`].
    pub open_files: u64,
    /// Largest file the cell may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
}

impl Limits {
    /// Address space allowed beyond the memory cgroup's bound (code, stacks, guard pages).
    pub const ADDRESS_SPACE_SLACK: u64 = 64 << 20;

    /// The memory cgroup's bound: the heap quota ([`Limits::memory_bytes`]), half as much
    /// again for the allocator's own overhead (glibc's 8-byte chunk header and 16-byte
    /// rounding, 32 bytes at least: a block of 24 bytes or less takes 32), and 16 MiB for the
    /// stack (up to 8 MiB)
    /// and the runtime. It bounds the process; the guest's allocator stops a script at the
    /// quota first, as the other backends do.
    pub fn cgroup_memory_bytes(&self) -> u64 {
        self.memory_bytes
            .saturating_add(self.memory_bytes / 2)
            .saturating_add(16 << 20)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            cpu_time_ms: 30_000,
            cpu_percent: 100,
            max_processes: 16,
            open_files: 32,
            file_size_bytes: 0,
        }
    }
}

/// A cell's rlimits, in [`crate::fork_protocol::RLIMITS`] order: address space, CPU seconds (the CPU-time
/// timer's backstop: a second past it, rounded up), open files, file size, core = 0,
/// processes, stack.
pub(crate) fn rlimit_values(l: &Limits) -> [u64; 7] {
    [
        l.cgroup_memory_bytes()
            .saturating_add(Limits::ADDRESS_SPACE_SLACK),
        if l.cpu_time_ms == 0 {
            libc::RLIM_INFINITY
        } else {
            l.cpu_time_ms.div_ceil(1000) + 1
        },
        l.open_files,
        l.file_size_bytes,
        0,
        u64::from(l.max_processes),
        STACK_BYTES,
    ]
}
