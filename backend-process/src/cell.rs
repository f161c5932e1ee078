//! A cell process once it exists: its handles, its cgroups, how it is killed, and how
//! it is reaped.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::cgroup::{CellCgroups, sweep_stale};
use crate::error::{Error, Result, host};
use crate::host::{self, host_support};
use crate::layers::{Layer, LayerReport, LayerState};
use crate::limits::Limits;
use crate::step::Step;

/// How a cell process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

/// A reaped cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Termination {
    /// How the cell's init process ended.
    pub status: ExitStatus,
    /// The host killed it ([`Killer::kill`]).
    pub killed_by_host: bool,
    /// The kernel's OOM killer killed a process of the cell.
    pub oom_killed: bool,
}

impl Termination {
    /// Ended by a signal the host did not send (a fault, seccomp, a limit).
    pub fn crashed(&self) -> bool {
        matches!(self.status, ExitStatus::Signaled(_)) && !self.killed_by_host
    }

    /// Ended by a panic of the guest program, which wrote its message on the channel
    /// first (`fork_protocol::last_words`).
    pub fn panicked(&self) -> bool {
        self.status == ExitStatus::Exited(crate::fork_protocol::exit::PANICKED)
            && !self.killed_by_host
    }

    /// The confinement step the process failed, when its exit status names one.
    pub fn failed_step(&self) -> Option<Step> {
        match self.status {
            ExitStatus::Exited(code) => Step::from_exit_status(code),
            ExitStatus::Signaled(_) => None,
        }
    }
}

/// Kills a cell from any thread, any number of times.
#[derive(Clone, Debug)]
pub struct Killer {
    pidfd: Arc<OwnedFd>,
    kill_file: Option<PathBuf>,
    killed: Arc<AtomicBool>,
}

impl Killer {
    /// Kills every process of the cell: the cgroup (v2 `cgroup.kill`) and the
    /// namespace init through its pidfd (the kernel then kills the whole pid
    /// namespace, grandchildren included).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Some(file) = &self.kill_file {
            let _ = std::fs::write(file, "1");
        }
        // SAFETY: pidfd is a valid pidfd owned by this handle; a null siginfo is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            );
        }
    }

    /// Whether [`Killer::kill`] was called (on any clone of this handle).
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// A running (or reaped) confined cell process.
#[derive(Debug)]
pub struct ProcessCell {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    channel: UnixStream,
    killer: Killer,
    layers: LayerReport,
    cgroups: CellCgroups,
    limits: Limits,
    termination: Option<Termination>,
}

/// What a cell gets before its process exists: its cgroups, made for `limits`, and
/// the resulting state of every layer.
pub(crate) struct Prepared {
    /// The cell's number in this supervisor process (names its cgroups, picks its host id).
    pub n: u64,
    pub cgroups: CellCgroups,
    pub layers: LayerReport,
    pub limits: Limits,
}

static CELL_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Prepared {
    /// Fails only where the supervisor ran out of descriptors: a cgroup that could not be
    /// made for that reason is not a layer this host lacks, and the cell would otherwise go on
    /// to fail later with a reason nobody can act on.
    pub(crate) fn new(limits: &Limits) -> Result<Prepared> {
        let hs = host_support();
        // Cgroups of supervisors that were killed (a `cell run` stopped by Ctrl-C or SIGKILL
        // cannot remove its own) go at this process's first cell, whichever way it starts.
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep_stale(&hs.cgroups));
        let n = CELL_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("cell-{}-{n}", std::process::id());
        let (cgroups, cg_states) = CellCgroups::create(&hs.cgroups, &name, limits);
        if cg_states
            .iter()
            .any(|(_, state)| matches!(state, LayerState::Inactive(_)))
            && let Err(e) = std::fs::File::open("/dev/null")
            && matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        {
            return Err(Error::Host {
                what: "making the cell's cgroups (the supervisor is out of file descriptors: each live process cell holds two)",
                source: e,
            });
        }
        let mut layers = host::host_layers().clone();
        layers.update(cg_states);
        if host::landlock_ruleset().is_none() {
            layers.update([(
                Layer::Landlock,
                LayerState::Inactive("could not create a Landlock ruleset".into()),
            )]);
        }
        Ok(Prepared {
            n,
            cgroups,
            layers,
            limits: limits.clone(),
        })
    }
}

/// Refuses a cell whose layers miss one of `require`.
pub(crate) fn require(layers: &LayerReport, require: &[Layer]) -> Result<()> {
    match layers.first_missing(require) {
        Some((layer, state)) => Err(Error::LayerUnavailable {
            layer,
            reason: state.to_string(),
        }),
        None => Ok(()),
    }
}

impl ProcessCell {
    /// A cell whose process exists and sits in its cgroups.
    pub(crate) fn from_parts(
        pid: i32,
        pidfd: OwnedFd,
        channel: UnixStream,
        prepared: Prepared,
    ) -> ProcessCell {
        let pidfd = Arc::new(pidfd);
        let killer = Killer {
            pidfd: pidfd.clone(),
            kill_file: prepared.cgroups.kill_file(),
            killed: Arc::new(AtomicBool::new(false)),
        };
        ProcessCell {
            pid,
            pidfd,
            channel,
            killer,
            layers: prepared.layers,
            cgroups: prepared.cgroups,
            limits: prepared.limits,
            termination: None,
        }
    }

    /// Moves the cell's process into its cgroups (a forked cell starts in the fork
    /// server's).
    pub(crate) fn place_in_cgroups(&mut self) -> io::Result<()> {
        self.cgroups.place(self.pid)?;
        self.cgroups.release_fds();
        Ok(())
    }

    /// Rewrites the cell's cgroup limits where `limits` differ from those it was
    /// made with (a spare made ahead of the spawn), updating its layer report.
    pub(crate) fn retarget(&mut self, limits: &Limits) {
        let changed = self.cgroups.retarget(limits);
        self.layers.update(changed);
        self.limits = limits.clone();
    }

    /// The limits the cell was started with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Host pid of the cell's init process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The state of every confinement layer for this cell.
    pub fn layers(&self) -> &LayerReport {
        &self.layers
    }

    /// The host end of the channel.
    pub fn channel(&self) -> &UnixStream {
        &self.channel
    }

    /// The cell's pidfd (signals the backend sends it besides a kill).
    pub(crate) fn pidfd(&self) -> Arc<OwnedFd> {
        self.pidfd.clone()
    }

    /// A handle that kills this cell from any thread.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    /// Kills every process of the cell (see [`Killer::kill`]).
    pub fn kill(&self) {
        self.killer.kill();
    }

    /// Host pids of every process of the cell (needs a pids cgroup).
    pub fn host_pids(&self) -> Option<Vec<i32>> {
        self.cgroups.pids()
    }

    /// A probe of the cell's memory and CPU time, read from its cgroup files.
    pub fn usage_probe(&self) -> crate::usage::CgroupUsage {
        let (memory, cpu_stat) = self.cgroups.usage_files();
        crate::usage::CgroupUsage {
            memory,
            cpu_stat,
            over: self.cgroups.over(),
            pidfd: self.pidfd.clone(),
            pid: self.pid,
        }
    }

    /// The cgroup directories of this cell (removed once it is reaped).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroups.dirs().to_vec()
    }

    /// Reaps the cell if it has ended.
    pub fn try_wait(&mut self) -> Result<Option<Termination>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits up to `timeout` for the cell to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Termination>> {
        if let Some(t) = self.termination {
            return Ok(Some(t));
        }
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(host("poll pidfd")(e));
            }
        }
        self.try_wait()
    }

    /// Waits for the cell to end and reaps it.
    pub fn wait(&mut self) -> Result<Termination> {
        loop {
            if let Some(t) = self.reap(0)? {
                return Ok(t);
            }
        }
    }

    fn reap(&mut self, options: c_int) -> Result<Option<Termination>> {
        if let Some(t) = self.termination {
            return Ok(Some(t));
        }
        // SAFETY: zeroed siginfo is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with our pidfd; info is a valid out-parameter.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | options,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(host("waitid")(e));
        }
        // SAFETY: waitid filled info (si_pid is 0 when WNOHANG found nothing).
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let status = if code == libc::CLD_EXITED {
            ExitStatus::Exited(status)
        } else {
            ExitStatus::Signaled(status)
        };
        let t = Termination {
            status,
            killed_by_host: self.killer.was_killed(),
            oom_killed: self.cgroups.oom_killed(),
        };
        self.termination = Some(t);
        let _ = self.cgroups.release();
        Ok(Some(t))
    }
}

impl Drop for ProcessCell {
    /// Kills a cell still running; the reaper thread then reaps it and removes its
    /// cgroups. ([`ProcessCell::wait`] does both on the caller's thread.)
    fn drop(&mut self) {
        if self.termination.is_none() {
            self.killer.kill();
            crate::reaper::reap_later(crate::reaper::Remains {
                pidfd: self.pidfd.clone(),
                cgroups: std::mem::take(&mut self.cgroups),
            });
        }
    }
}
