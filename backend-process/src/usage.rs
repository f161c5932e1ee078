//! What a process cell uses now, read from its cgroup: the kernel's own count of the cell's
//! memory (every process in it, page cache included) and CPU time. Under cgroup v1, which has
//! no CPU count in the memory controller, the CPU time is the cell process's own CPU clock (its
//! threads; children it forked and reaped are not counted). A dead cell reads as "not counted",
//! never as another process's figures: its files go with the cgroup, or the cgroup is kept for a
//! later cell and the probe says nothing once the cell is over; its process clock is read only
//! while its pidfd says it has not exited. Whether the cell's process ended between transactions
//! comes from that pidfd.

use abi::backend::UsageProbe;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Reads a cell's cgroup files on demand.
#[derive(Debug, Clone)]
pub struct CgroupUsage {
    /// `memory.current` (v2) or `memory.usage_in_bytes` (v1).
    pub(crate) memory: Option<PathBuf>,
    /// `cpu.stat` (v2), whose `usage_usec` line is the cell's CPU time.
    pub(crate) cpu_stat: Option<PathBuf>,
    /// Set when the cell is over (its cgroups may serve another cell by then).
    pub(crate) over: Arc<AtomicBool>,
    /// The cell process's pidfd: readable once the process has exited.
    pub(crate) pidfd: Arc<OwnedFd>,
    /// The cell process's host pid, whose CPU clock is read where there is no `cpu.stat`.
    pub(crate) pid: libc::pid_t,
}

impl CgroupUsage {
    /// Whether the cell's process has exited (a zombie or reaped: its pid may be reused).
    fn exited(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a pidfd this probe keeps open; a zero timeout never
        // blocks.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n == 1 && fd.revents & libc::POLLIN != 0
    }

    /// The CPU time of the cell's process, by its CPU clock. Taken only if the process had not
    /// exited after the read: it was then the cell's process that was read, not a later one
    /// given its pid.
    fn process_cpu_time(&self) -> Option<Duration> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: writes one clockid we own.
        if unsafe { libc::clock_getcpuclockid(self.pid, &mut clock) } != 0 {
            return None;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec we own.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 || self.exited() {
            return None;
        }
        Some(Duration::new(
            u64::try_from(ts.tv_sec).ok()?,
            u32::try_from(ts.tv_nsec).ok()?,
        ))
    }
}

impl UsageProbe for CgroupUsage {
    fn memory_bytes(&self) -> Option<u64> {
        if self.over.load(Ordering::SeqCst) {
            return None;
        }
        let text = std::fs::read_to_string(self.memory.as_ref()?).ok()?;
        text.trim().parse().ok()
    }

    fn cpu_time(&self) -> Option<Duration> {
        if self.over.load(Ordering::SeqCst) {
            return None;
        }
        match &self.cpu_stat {
            Some(file) => {
                let text = std::fs::read_to_string(file).ok()?;
                parse_usage_usec(&text).map(Duration::from_micros)
            }
            None => self.process_cpu_time(),
        }
    }

    fn ended(&self) -> bool {
        !self.over.load(Ordering::SeqCst) && self.exited()
    }
}

/// The `usage_usec` figure of a `cpu.stat` file.
fn parse_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// A pidfd of this test process: never readable while the test runs.
    fn own_pidfd() -> Arc<OwnedFd> {
        // SAFETY: pidfd_open of this process; the descriptor is checked, then owned.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor just returned by pidfd_open, owned from here on.
        Arc::new(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    #[test]
    fn usage_usec_is_read_from_cpu_stat() {
        let text = "usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\n";
        assert_eq!(parse_usage_usec(text), Some(12345));
        assert_eq!(parse_usage_usec("user_usec 1\n"), None);
    }

    #[test]
    fn missing_files_read_as_not_counted() {
        let probe = CgroupUsage {
            memory: Some("/nonexistent/memory.current".into()),
            cpu_stat: Some("/nonexistent/cpu.stat".into()),
            over: Arc::default(),
            pidfd: own_pidfd(),
            pid: std::process::id() as libc::pid_t,
        };
        assert_eq!(probe.memory_bytes(), None);
        assert_eq!(probe.cpu_time(), None);
        assert!(!probe.ended(), "a live process reads as not ended");
    }

    #[test]
    fn without_cpu_stat_the_cpu_time_is_the_live_process_clock_and_none_once_it_exited() {
        // This process: alive, its clock counts what this test spent so far.
        let probe = CgroupUsage {
            memory: None,
            cpu_stat: None,
            over: Arc::default(),
            pidfd: own_pidfd(),
            pid: std::process::id() as libc::pid_t,
        };
        assert!(probe.cpu_time().unwrap() > Duration::ZERO);
        // An exited child, not yet reaped: its clock is not read (its pid could be reused).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        // SAFETY: pidfd_open of our own child, checked, then owned.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor just returned by pidfd_open.
        let pidfd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let exited = CgroupUsage {
            memory: None,
            cpu_stat: None,
            over: Arc::default(),
            pidfd,
            pid,
        };
        let mut pfd = libc::pollfd {
            fd: fd as i32,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; `true` exits at once, the bound is a hang guard.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
        assert!(exited.ended());
        assert_eq!(exited.cpu_time(), None);
        child.wait().unwrap();
    }

    #[test]
    fn a_cell_that_is_over_reads_as_not_counted() {
        // Files that read fine: once the cell is over (its cgroup may serve another), nothing.
        let dir = std::env::temp_dir().join(format!("usage-over-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 7\n").unwrap();
        let probe = CgroupUsage {
            memory: Some(dir.join("memory.current")),
            cpu_stat: Some(dir.join("cpu.stat")),
            over: Arc::default(),
            pidfd: own_pidfd(),
            pid: std::process::id() as libc::pid_t,
        };
        assert_eq!(probe.memory_bytes(), Some(4096));
        assert_eq!(probe.cpu_time(), Some(Duration::from_micros(7)));
        probe.over.store(true, Ordering::SeqCst);
        assert_eq!(probe.memory_bytes(), None);
        assert_eq!(probe.cpu_time(), None);
        assert!(!probe.ended());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
