//! Spawning, confining, killing and reaping a cell process.
//!
//! The parent prepares everything that allocates (paths, id maps, the seccomp
//! program, fds) before `clone3`; the child then runs only raw, async-signal-safe
//! system calls through the confinement sequence and executes the embedded guest
//! image from a sealed memfd. The child never returns into Rust code of the
//! supervisor image: it either `execveat`s the guest or reports the failed step on a
//! close-on-exec status pipe and `_exit`s.

use std::ffi::{CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cgroup::CellCgroups;
use crate::error::{Error, Result, Step, host};
use crate::fork_protocol::{CloneArgs, RLIMITS, STACK_BYTES};
use crate::host::{self, high_fd, host_support};
use crate::layers::{Layer, LayerReport, LayerState};
use crate::seccomp::Role;

/// The guest program, built by build.rs from `guest/` as a static binary.
pub(crate) static GUEST_IMAGE: &[u8] = include_bytes!(env!("CELL_GUEST_BIN"));
/// The escape probe: only unit tests embed it.
#[cfg(test)]
pub(crate) static PROBE_IMAGE: &[u8] = include_bytes!(env!("CELL_PROBE_BIN"));

/// Which embedded program a cell runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Image {
    Guest,
    #[cfg(test)]
    Probe,
}

/// The uid/gid the guest has inside its user namespace.
pub const CELL_UID: u32 = 1000;
/// First host uid used for cells of a root supervisor; each cell gets its own, so
/// per-user process limits are per cell.
pub const HOST_UID_BASE: u32 = 2_000_000_000;
const HOST_UID_SPAN: u64 = 1_000_000;
/// Ids a fork server of a root supervisor maps, from uid/gid 1000 up: its cells take
/// 1001, 1002, ... in turn, so each has host ids of its own (per-user process limits stay
/// per cell). Servers take ranges after the per-cell ids of directly spawned cells.
pub(crate) const SERVER_ID_SPAN: u32 = 65_536;
const SERVER_ID_BASE: u32 = HOST_UID_BASE + HOST_UID_SPAN as u32;
static SERVER_COUNTER: AtomicU64 = AtomicU64::new(0);

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

    fn validate(&self) -> Result<()> {
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

/// What to spawn and what the policy requires.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub limits: Limits,
    /// Layers that must be fully active, or the spawn is refused naming the first
    /// missing one. Defaults to [`Layer::ALWAYS`].
    pub require: Vec<Layer>,
    /// Fork the cell from the pre-confined fork server (started on first use) instead of
    /// cloning and confining a fresh process from the supervisor. Same layers, a
    /// fraction of the start-up cost.
    pub fork_server: bool,
    pub(crate) image: Image,
    pub(crate) args: Vec<String>,
    pub(crate) role: Role,
}

impl Default for SpawnSpec {
    fn default() -> Self {
        SpawnSpec {
            limits: Limits::default(),
            require: Layer::ALWAYS.to_vec(),
            fork_server: true,
            image: Image::Guest,
            args: Vec::new(),
            role: Role::Cell,
        }
    }
}

/// How a cell process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// A reaped cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Termination {
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

static CELL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Everything the child needs, prepared by the parent. Only raw values and pointers
/// into memory the parent keeps alive until the child has exec'd or failed.
struct Plan {
    chan: RawFd,
    image: RawFd,
    status: RawFd,
    v1_procs: [RawFd; 3],
    netns: RawFd,
    mountpoint: *const c_char,
    rootful: bool,
    host_uid: u32,
    host_gid: u32,
    uid_map: *const u8,
    uid_map_len: usize,
    gid_map: *const u8,
    gid_map_len: usize,
    /// Rootful fork server: the parent writes the id maps (a range), asked for through
    /// the status pipe; the child waits on `maps_written` until it has.
    map_by_parent: bool,
    maps_written: RawFd,
    rlimits: [(libc::__rlimit_resource_t, libc::rlimit); 7],
    landlock: RawFd,
    seccomp: bool,
    prog: libc::sock_fprog,
    role: Role,
    argv: *const *const c_char,
    envp: *const *const c_char,
}

/// Refuses a spawn the host cannot serve: invalid limits, or a required layer the
/// host lacks (cgroup layers are decided when the cell's cgroups are made).
fn check_host(spec: &SpawnSpec) -> Result<()> {
    spec.limits.validate()?;
    let layers = host::host_layers();
    for &layer in &spec.require {
        if matches!(
            layer,
            Layer::CgroupMemory | Layer::CgroupPids | Layer::CgroupCpu | Layer::CgroupKill
        ) {
            continue;
        }
        if let LayerState::Inactive(why) | LayerState::Partial(why) = layers.get(layer) {
            return Err(Error::LayerUnavailable {
                layer,
                reason: why.clone(),
            });
        }
    }
    Ok(())
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

impl Prepared {
    pub(crate) fn new(limits: &Limits) -> Prepared {
        let hs = host_support();
        let n = CELL_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("cell-{}-{n}", std::process::id());
        let (cgroups, cg_states) = CellCgroups::create(&hs.cgroups, &name, limits);
        let mut layers = host::host_layers().clone();
        layers.update(cg_states);
        if host::landlock_ruleset().is_none() {
            layers.update([(
                Layer::Landlock,
                LayerState::Inactive("could not create a Landlock ruleset".into()),
            )]);
        }
        Prepared {
            n,
            cgroups,
            layers,
            limits: limits.clone(),
        }
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
    /// Spawns the guest program under every confinement layer.
    pub fn spawn(spec: &SpawnSpec) -> Result<ProcessCell> {
        check_host(spec)?;
        if spec.fork_server && spec.role == Role::Cell {
            return crate::fork_server::spawn(spec);
        }
        let prepared = Prepared::new(&spec.limits);
        require(&prepared.layers, &spec.require)?;
        Self::spawn_direct(spec, prepared)
    }

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

    /// Clones a child of the supervisor and confines it step by step, then executes
    /// the image (the cell itself, or the fork server).
    fn spawn_direct(spec: &SpawnSpec, prepared: Prepared) -> Result<ProcessCell> {
        let hs = host_support();
        let Prepared {
            n,
            mut cgroups,
            layers,
            limits,
        } = prepared;
        for fd in cgroups.v1_procs.iter_mut() {
            let moved = high_fd(fd.try_clone().map_err(host("dup cgroup.procs"))?)
                .map_err(host("dup cgroup.procs"))?;
            *fd = moved;
        }
        let landlock = host::landlock_ruleset();

        let image = host::image_fd(spec.image)?;
        let netns = if hs.rootful {
            host::empty_netns()?
        } else {
            None
        };

        let (parent_chan, child_chan) = channel_pair(spec.role).map_err(host("socketpair"))?;
        let child_chan = high_fd(child_chan).map_err(host("socketpair"))?;
        let (status_r, status_w) = pipe().map_err(host("status pipe"))?;
        let status_w = high_fd(status_w).map_err(host("status pipe"))?;

        let map_by_parent = hs.rootful && spec.role == Role::ForkServer;
        let span = if map_by_parent { SERVER_ID_SPAN } else { 1 };
        let (host_uid, host_gid) = if map_by_parent {
            let k = SERVER_COUNTER.fetch_add(1, Ordering::Relaxed) % 32;
            let id = SERVER_ID_BASE + k as u32 * SERVER_ID_SPAN;
            (id, id)
        } else if hs.rootful {
            let id = HOST_UID_BASE + (n % HOST_UID_SPAN) as u32;
            (id, id)
        } else {
            // SAFETY: getters without preconditions.
            unsafe { (libc::geteuid(), libc::getegid()) }
        };
        let uid_map = format!("{CELL_UID} {host_uid} {span}\n");
        let gid_map = format!("{CELL_UID} {host_gid} {span}\n");
        let (maps_r, maps_w) = pipe().map_err(host("sync pipe"))?;
        let maps_r = high_fd(maps_r).map_err(host("sync pipe"))?;
        let mountpoint = CString::new(if std::path::Path::new("/tmp").is_dir() {
            "/tmp"
        } else {
            "/"
        })
        .expect("static path");

        let values = match spec.role {
            Role::Cell => rlimit_values(&spec.limits),
            Role::ForkServer => server_rlimit_values(),
        };
        let rlimits: [(libc::__rlimit_resource_t, libc::rlimit); 7] = std::array::from_fn(|i| {
            let v = values[i];
            (
                RLIMITS[i],
                libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                },
            )
        });

        let mut args: Vec<CString> = vec![CString::new("cell").expect("static")];
        for a in &spec.args {
            args.push(
                CString::new(a.as_str())
                    .map_err(|_| Error::InvalidLimit("NUL in argument".into()))?,
            );
        }
        let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp: [*const c_char; 1] = [std::ptr::null()];
        let prog_insns = host::seccomp_program(spec.role);

        let v1 = cgroups.v1_proc_fds();
        let mut v1_procs = [-1; 3];
        for (slot, fd) in v1_procs.iter_mut().zip(v1) {
            *slot = fd;
        }
        let plan = Plan {
            chan: child_chan.as_raw_fd(),
            image,
            status: status_w.as_raw_fd(),
            v1_procs,
            netns: netns.unwrap_or(-1),
            mountpoint: mountpoint.as_ptr(),
            rootful: hs.rootful,
            host_uid,
            host_gid,
            uid_map: uid_map.as_ptr(),
            uid_map_len: uid_map.len(),
            gid_map: gid_map.as_ptr(),
            gid_map_len: gid_map.len(),
            map_by_parent,
            maps_written: maps_r.as_raw_fd(),
            rlimits,
            landlock: landlock.unwrap_or(-1),
            seccomp: hs.seccomp,
            prog: libc::sock_fprog {
                len: prog_insns.len() as u16,
                filter: prog_insns.as_ptr().cast_mut(),
            },
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            role: spec.role,
        };

        // The fork server stays in the supervisor's pid namespace: a pid namespace's
        // init cannot fork with CLONE_PARENT. Each cell it forks gets its own.
        let new_pid_ns = if spec.role == Role::Cell {
            libc::CLONE_NEWPID
        } else {
            0
        };
        let mut flags = (libc::CLONE_PIDFD
            | new_pid_ns
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS) as u64;
        if !hs.rootful {
            flags |= (libc::CLONE_NEWUSER | libc::CLONE_NEWNET) as u64;
        }
        let mut cgroup_fd = 0u64;
        if let Some(fd) = &cgroups.v2_fd {
            flags |= CLONE_INTO_CGROUP;
            cgroup_fd = fd.as_raw_fd() as u64;
        }
        let mut pidfd: c_int = -1;
        let args = CloneArgs {
            flags,
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup_fd,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM forks this process. In the child only
        // `child_main` runs, which makes raw, async-signal-safe system calls on
        // memory prepared above (still mapped, copy-on-write) and never returns.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw const args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: we are the freshly cloned child; see child_main.
            unsafe { child_main(&plan) }
        }
        if pid < 0 {
            return Err(host("clone3")(io::Error::last_os_error()));
        }
        let pid = pid as i32;
        // SAFETY: CLONE_PIDFD stored a fresh pidfd we now own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(child_chan);
        drop(status_w);
        drop(maps_r);
        cgroups.release_fds();
        let prepared = Prepared {
            n,
            cgroups,
            layers,
            limits,
        };
        let mut cell = ProcessCell::from_parts(pid, pidfd, parent_chan, prepared);

        // The status pipe closes on exec (EOF) or carries (step, errno).
        let mut report = [0u8; 8];
        let mut got = 0;
        while got < report.len() {
            let mut pfd = libc::pollfd {
                fd: status_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, SPAWN_TIMEOUT_MS) };
            if ready == 0 {
                let stuck = format!(
                    "comm {:?}, wchan {:?}, syscall {:?}",
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .unwrap_or_default()
                        .trim(),
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default(),
                    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                        .unwrap_or_default()
                        .trim(),
                );
                cell.kill();
                let t = cell.wait();
                return Err(Error::ChildLost(format!(
                    "no exec within {SPAWN_TIMEOUT_MS} ms ({stuck}); child ended {t:?}"
                )));
            }
            // SAFETY: the buffer range is valid.
            let r = unsafe {
                libc::read(
                    status_r.as_raw_fd(),
                    report[got..].as_mut_ptr().cast(),
                    report.len() - got,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(host("reading the spawn status")(e));
            }
            if r == 0 {
                break;
            }
            got += r as usize;
            if got == report.len() && map_by_parent && report == map_request() {
                got = 0;
                let written = write_maps(pid, &uid_map, &gid_map).and_then(|()| {
                    // SAFETY: one byte from a valid buffer to our pipe end.
                    match unsafe { libc::write(maps_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) } {
                        1 => Ok(()),
                        _ => Err(io::Error::last_os_error()),
                    }
                });
                if let Err(e) = written {
                    return Err(host("writing the fork server's id maps")(e));
                }
            }
        }
        match got {
            0 => Ok(cell),
            8 => {
                let step = u32::from_le_bytes(report[..4].try_into().expect("4 bytes"));
                let errno = i32::from_le_bytes(report[4..].try_into().expect("4 bytes"));
                let _ = cell.wait();
                let step = Step::from_u32(step).ok_or_else(|| {
                    Error::ChildLost(format!("unknown step {step} in status report"))
                })?;
                Err(Error::Confinement {
                    step,
                    source: io::Error::from_raw_os_error(errno),
                })
            }
            _ => {
                cell.kill();
                let t = cell.wait();
                Err(Error::ChildLost(format!(
                    "truncated status report, child ended {t:?}"
                )))
            }
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

    pub fn kill(&self) {
        self.killer.kill();
    }

    /// Host pids of every process of the cell (needs a pids cgroup).
    pub fn host_pids(&self) -> Option<Vec<i32>> {
        self.cgroups.pids()
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
        let _ = self.cgroups.remove();
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

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds points to two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we own.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// The status record a child sends to ask the parent for its id maps.
fn map_request() -> [u8; 8] {
    let mut r = [0u8; 8];
    r[..4].copy_from_slice(&(Step::WriteIdMaps as u32).to_le_bytes());
    r
}

/// Writes a child's `uid_map`, `setgroups` = deny and `gid_map` (as root, so a range).
fn write_maps(pid: i32, uid_map: &str, gid_map: &str) -> io::Result<()> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    std::fs::write(dir.join("uid_map"), uid_map)?;
    std::fs::write(dir.join("setgroups"), "deny")?;
    std::fs::write(dir.join("gid_map"), gid_map)
}

/// A cell's rlimits, in [`RLIMITS`] order: address space, CPU seconds (the CPU-time
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
fn server_rlimit_values() -> [u64; 7] {
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

/// How long the confinement sequence may take before the spawn is abandoned.
const SPAWN_TIMEOUT_MS: c_int = 10_000;

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// What the fork server keeps, inside its own user namespace only: new namespaces for
/// each cell (`CAP_SYS_ADMIN`), a uid/gid of its own for each (`CAP_SETUID`,
/// `CAP_SETGID`), and the right to empty a cell's bounding set (`CAP_SETPCAP`); its
/// bounding set holds nothing else.
/// `CAP_SETPCAP` lets each cell empty its capability bounding set.
const SERVER_CAPS: [u32; 4] = [6, 7, 8, 21];

/// The supervisor's and the child's ends of the channel: a byte stream for a cell, a
/// message socket (`SOCK_SEQPACKET`) for the fork server's control records.
fn channel_pair(role: Role) -> io::Result<(UnixStream, OwnedFd)> {
    let kind = match role {
        Role::Cell => libc::SOCK_STREAM,
        Role::ForkServer => libc::SOCK_SEQPACKET,
    };
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds points to two ints.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh descriptors we own. `UnixStream` only
    // carries the fd here; the fork server's side is driven with sendmsg/recvmsg.
    unsafe {
        Ok((
            UnixStream::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        ))
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Where the child keeps what it needs, laid out first thing (every source fd is at 16 or
/// above, so no slot overwrites a source).
const FD_CHANNEL: c_int = 3;
const FD_IMAGE: c_int = 4;
const FD_STATUS: c_int = 5;
const FD_MAPS_WRITTEN: c_int = 6;
const FD_NETNS: c_int = 7;
const FD_LANDLOCK: c_int = 8;
const FD_V1_PROCS: [c_int; 3] = [9, 10, 11];

/// Child side of the spawn. Async-signal-safe: raw system calls only, no
/// allocation, no locks, no unwinding. Never returns.
///
/// The first steps make sure the child can never be left behind by a supervisor that
/// exits: it closes every descriptor it inherited but the ones it needs (the
/// supervisor's stdio and its copies of the parent ends of the pipes among them, so
/// nothing it holds keeps a reader of the supervisor waiting), then arms its
/// parent-death signal and exits if the supervisor is already gone. Both come before
/// anything that can block, and the signal is armed again after every change of ids
/// (which clears it).
///
/// # Safety
/// Must only be called in the child right after `clone3`, with `p` prepared by the
/// parent.
unsafe fn child_main(p: &Plan) -> ! {
    let mut status_fd = p.status;
    // SAFETY (whole body): every call is a raw system call on descriptors and memory
    // prepared by the parent; failures are reported and end the child.
    unsafe {
        macro_rules! check {
            ($step:expr, $e:expr) => {
                if ($e as i64) < 0 {
                    fail(status_fd, $step);
                }
            };
        }
        let layout = [
            (p.chan, FD_CHANNEL, 0),
            (p.image, FD_IMAGE, libc::O_CLOEXEC),
            (p.status, FD_STATUS, libc::O_CLOEXEC),
            (p.maps_written, FD_MAPS_WRITTEN, libc::O_CLOEXEC),
            (p.netns, FD_NETNS, libc::O_CLOEXEC),
            (p.landlock, FD_LANDLOCK, libc::O_CLOEXEC),
            (p.v1_procs[0], FD_V1_PROCS[0], libc::O_CLOEXEC),
            (p.v1_procs[1], FD_V1_PROCS[1], libc::O_CLOEXEC),
            (p.v1_procs[2], FD_V1_PROCS[2], libc::O_CLOEXEC),
        ];
        for (source, slot, flags) in layout {
            if source >= 0 {
                check!(Step::ArrangeFds, libc::dup3(source, slot, flags));
            } else {
                libc::close(slot);
            }
        }
        status_fd = FD_STATUS;
        check!(
            Step::CloseFds,
            libc::syscall(libc::SYS_close_range, 0u32, 2u32, 0u32)
        );
        check!(
            Step::CloseFds,
            libc::syscall(libc::SYS_close_range, 12u32, u32::MAX, 0u32)
        );
        arm_parent_death(status_fd);

        for (source, slot) in p.v1_procs.into_iter().zip(FD_V1_PROCS) {
            if source >= 0 {
                check!(Step::JoinCgroup, libc::write(slot, b"0".as_ptr().cast(), 1));
            }
        }
        check!(
            Step::UnshareCgroupNamespace,
            libc::unshare(libc::CLONE_NEWCGROUP)
        );
        if p.netns >= 0 {
            check!(
                Step::JoinNetworkNamespace,
                libc::setns(FD_NETNS, libc::CLONE_NEWNET)
            );
        }
        let proc_fd = libc::open(
            c"/proc/self".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        check!(Step::OpenProc, proc_fd);
        if !p.rootful {
            write_id_maps(p, proc_fd, status_fd);
        }

        check!(
            Step::MakeMountsPrivate,
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            )
        );
        check!(
            Step::MountRoot,
            libc::mount(
                c"cell".as_ptr(),
                p.mountpoint,
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                c"size=16k,nr_inodes=8,mode=0555".as_ptr().cast(),
            )
        );
        check!(Step::PivotRoot, libc::chdir(p.mountpoint));
        check!(
            Step::PivotRoot,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
        );
        check!(
            Step::DetachOldRoot,
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH)
        );
        check!(Step::DetachOldRoot, libc::chdir(c"/".as_ptr()));
        check!(Step::SetHostname, libc::sethostname(c"cell".as_ptr(), 4));
        // Still root on the host (a root supervisor): the fork server's rlimits may rise
        // above the supervisor's (they are the ceilings of its cells').
        for (resource, limit) in &p.rlimits {
            check!(Step::SetRlimits, libc::setrlimit(*resource, limit));
        }

        if p.rootful {
            // Raw system calls: glibc's set*id wrappers synchronise with every thread of
            // the parent image (which do not exist here) and would deadlock.
            check!(
                Step::DropHostIds,
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
            );
            check!(
                Step::DropHostIds,
                libc::syscall(libc::SYS_setresgid, p.host_gid, p.host_gid, p.host_gid)
            );
            check!(
                Step::DropHostIds,
                libc::syscall(libc::SYS_setresuid, p.host_uid, p.host_uid, p.host_uid)
            );
            // Changing ids made us non-dumpable, which would make /proc/self/* root's.
            check!(
                Step::DropHostIds,
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0)
            );
            check!(
                Step::UnshareUserNamespace,
                libc::unshare(libc::CLONE_NEWUSER)
            );
            // The id change cleared the parent-death signal: arm it again before waiting.
            arm_parent_death(status_fd);
            if p.map_by_parent {
                // Only the parent, root outside, may map a range: ask, then wait. The
                // child holds no copy of the pipe's write end, so a parent that dies
                // ends the wait.
                let request = map_request();
                let mut done = 0u8;
                if libc::write(status_fd, request.as_ptr().cast(), 8) != 8
                    || libc::read(FD_MAPS_WRITTEN, (&raw mut done).cast(), 1) != 1
                {
                    fail(status_fd, Step::WriteIdMaps);
                }
            } else {
                write_id_maps(p, proc_fd, status_fd);
            }
        }
        libc::close(proc_fd);

        // A cell keeps no capability. The fork server keeps `SERVER_CAPS` in its own
        // user namespace (nowhere else), as ambient capabilities so they survive the exec.
        let keep = if p.role == Role::ForkServer {
            SERVER_CAPS.iter().fold(0u32, |m, c| m | 1 << c)
        } else {
            0
        };
        // The bounding set goes first (dropping it needs CAP_SETPCAP, which the capset
        // below gives up); the loop ends at the first capability the kernel does not know.
        let mut cap = 0u32;
        while libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) >= 0 {
            if keep & (1u32.checked_shl(cap).unwrap_or(0)) == 0 {
                check!(
                    Step::DropBoundingSet,
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0)
                );
            }
            cap += 1;
        }
        let mut hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [
            CapData {
                effective: keep,
                permitted: keep,
                inheritable: keep,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        check!(
            Step::DropCapabilities,
            libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr())
        );
        if p.role == Role::ForkServer {
            for cap in SERVER_CAPS {
                check!(
                    Step::DropCapabilities,
                    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0)
                );
            }
        }
        check!(Step::NewSession, libc::setsid());
        check!(
            Step::NoNewPrivs,
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        );
        if p.landlock >= 0 {
            check!(
                Step::Landlock,
                libc::syscall(libc::SYS_landlock_restrict_self, FD_LANDLOCK, 0u32)
            );
        }
        arm_parent_death(status_fd);
        check!(
            Step::CloseFds,
            libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32)
        );
        if p.seccomp {
            check!(
                Step::Seccomp,
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &raw const p.prog
                )
            );
        }
        libc::syscall(
            libc::SYS_execveat,
            FD_IMAGE,
            c"".as_ptr(),
            p.argv,
            p.envp,
            libc::AT_EMPTY_PATH,
        );
        fail(status_fd, Step::Exec)
    }
}

/// Arms the parent-death signal, then exits if the parent is already gone: it then held
/// the only reader of the status pipe (every other copy is closed on exec or, in a child
/// being confined, first thing), so the pipe reports an error.
///
/// # Safety
/// Child-only helper (see [`child_main`]).
unsafe fn arm_parent_death(status_fd: c_int) {
    // SAFETY: raw system calls on this process's own descriptor.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
            fail(status_fd, Step::ParentDeathSignal);
        }
        let mut pfd = libc::pollfd {
            fd: status_fd,
            events: 0,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 0) != 0 && pfd.revents & libc::POLLERR != 0 {
            libc::_exit(126);
        }
    }
}

/// Writes `uid_map`, `setgroups` = deny and `gid_map` for the current user namespace.
///
/// # Safety
/// Child-only helper (see [`child_main`]).
unsafe fn write_id_maps(p: &Plan, proc_fd: c_int, status_fd: c_int) {
    // SAFETY: raw system calls on memory prepared by the parent.
    unsafe {
        let files: [(&std::ffi::CStr, *const u8, usize); 3] = [
            (c"uid_map", p.uid_map, p.uid_map_len),
            (c"setgroups", b"deny".as_ptr(), 4),
            (c"gid_map", p.gid_map, p.gid_map_len),
        ];
        for (name, data, len) in files {
            let fd = libc::openat(proc_fd, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, data.cast(), len) != len as isize {
                fail(status_fd, Step::WriteIdMaps);
            }
            libc::close(fd);
        }
    }
}

/// Reports `(step, errno)` on the status pipe and exits.
fn fail(status_fd: c_int, step: Step) -> ! {
    // SAFETY: errno location is thread-local and valid; write/_exit are raw calls.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(step as u32).to_le_bytes());
        buf[4..].copy_from_slice(&errno.to_le_bytes());
        libc::write(status_fd, buf.as_ptr().cast(), 8);
        libc::_exit(127)
    }
}
