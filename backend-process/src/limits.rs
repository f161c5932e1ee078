//! A cell's resource limits: what a policy may ask for on this host, and the rlimits
//! they become.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::fork_protocol::STACK_BYTES;
use crate::host::host_support;

/// Most open files a cell may be given under a root supervisor (the fork server's hard
/// `RLIMIT_NOFILE`); see [`max_open_files`] for this host.
pub const MAX_OPEN_FILES: u64 = 65_536;
/// Most processes and threads a cell may be given under a root supervisor (the fork
/// server's hard `RLIMIT_NPROC`); see [`max_processes`] for this host.
pub const MAX_PROCESSES: u32 = 32_768;

/// Most open files a cell may be given here: [`MAX_OPEN_FILES`], or below it the
/// supervisor's own hard limit when it cannot raise limits (no `CAP_SYS_RESOURCE`, or
/// rootless). Policy validation refuses more.
pub fn max_open_files() -> u64 {
    MAX_OPEN_FILES.min(ceiling(libc::RLIMIT_NOFILE))
}

/// Most processes and threads a cell may be given here: [`MAX_PROCESSES`], or below it
/// the supervisor's own hard limit when it cannot raise limits (no `CAP_SYS_RESOURCE`, or
/// rootless). Policy validation refuses more.
pub fn max_processes() -> u32 {
    u64::from(MAX_PROCESSES).min(ceiling(libc::RLIMIT_NPROC)) as u32
}

/// How high a spawned process's `resource` may go: anything for a supervisor with
/// `CAP_SYS_RESOURCE`, else the supervisor's own hard limit.
fn ceiling(resource: libc::__rlimit_resource_t) -> u64 {
    static SYS_RESOURCE: OnceLock<bool> = OnceLock::new();
    let can_raise = *SYS_RESOURCE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & (1 << 24) != 0) // CAP_SYS_RESOURCE
    });
    if can_raise && host_support().rootful {
        return u64::MAX;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit.
    if unsafe { libc::getrlimit(resource, &mut limit) } < 0 {
        return u64::MAX;
    }
    limit.rlim_max
}
/// Smallest memory limit a cell may be given.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;

/// Most memory a cell may be given: the host's physical memory (`MemTotal`), read once.
pub fn max_memory_bytes() -> u64 {
    static TOTAL: OnceLock<u64> = OnceLock::new();
    *TOTAL.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kib| kib << 10)
    })
}

/// Resource limits of one cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory (cgroup); the address-space rlimit is this plus [`Limits::ADDRESS_SPACE_SLACK`].
    /// At most [`max_memory_bytes`].
    pub memory_bytes: u64,
    /// CPU time over the cell's life, in milliseconds (0 = unlimited): a CPU-time timer the
    /// guest arms before it runs anything ends the cell with `limit_cpu`; `RLIMIT_CPU`, a
    /// second later, is the backstop.
    pub cpu_time_ms: u64,
    /// CPU bandwidth (cgroup), in percent of one CPU.
    pub cpu_percent: u32,
    /// Processes and threads (cgroup pids and RLIMIT_NPROC), at most [`MAX_PROCESSES`].
    pub max_processes: u32,
    /// Open files (RLIMIT_NOFILE), at most [`MAX_OPEN_FILES`].
    pub open_files: u64,
    /// Largest file the cell may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
}

impl Limits {
    /// Address space allowed beyond `memory_bytes` (code, stacks, guard pages).
    pub const ADDRESS_SPACE_SLACK: u64 = 64 << 20;

    pub(crate) fn validate(&self) -> Result<()> {
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(Error::InvalidLimit(format!(
                "memory {} < 8 MiB",
                self.memory_bytes
            )));
        }
        if self.memory_bytes > max_memory_bytes() {
            return Err(Error::InvalidLimit(format!(
                "memory {} MiB > the host's {} MiB",
                self.memory_bytes >> 20,
                max_memory_bytes() >> 20
            )));
        }
        if self.max_processes > max_processes() || self.open_files > max_open_files() {
            return Err(Error::InvalidLimit(format!(
                "at most {} processes and {} open files",
                max_processes(),
                max_open_files()
            )));
        }
        if self.cpu_percent == 0 || self.max_processes == 0 {
            return Err(Error::InvalidLimit(
                "cpu percent and processes must be > 0".into(),
            ));
        }
        if self.open_files < 4 {
            return Err(Error::InvalidLimit("open files must be >= 4".into()));
        }
        Ok(())
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
        l.memory_bytes.saturating_add(Limits::ADDRESS_SPACE_SLACK),
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

/// The fork server's rlimits: the ceilings its cells lower theirs from (a forked process
/// can only lower them). Its memory is bounded by its cgroup, not its address space.
pub(crate) fn server_rlimit_values() -> [u64; 7] {
    [
        ceiling(libc::RLIMIT_AS),
        ceiling(libc::RLIMIT_CPU),
        max_open_files(),
        0,
        0,
        u64::from(max_processes()),
        STACK_BYTES.min(ceiling(libc::RLIMIT_STACK)),
    ]
}
