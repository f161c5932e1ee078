//! How far a cell's limits may go on this host: the ceilings a policy is checked against,
//! and the fork server's rlimits (the ceilings its cells lower theirs from).

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::fork_protocol::STACK_BYTES;
use crate::host::host_support;
use crate::limits::{Limits, MIN_MEMORY_BYTES};

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

impl Limits {
    /// Refuses limits this host cannot give.
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
