//! Cell cgroups: v2 where its controllers exist, v1 memory/pids/cpu where that is
//! what the host offers, and v2 `cgroup.kill` for killing a whole cell atomically.
//!
//! A cell's cgroups are created before the child exists, the child is placed in them
//! before any guest instruction (v2 through `CLONE_INTO_CGROUP`, v1 by writing itself
//! to each `tasks` file first thing in the child; a forked cell is moved in by the host),
//! and they are removed after the cell is reaped.
//!
//! About 600 lines because v2 and v1 are handled side by side, step for step (create, place,
//! limit, kill, remove), so that the two paths can be read against each other.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::layers::{Layer, LayerState};
use crate::limits::Limits;

/// The cgroup hierarchies this process can create cells under.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hierarchies {
    /// v1 directories of this process's own cgroup, per controller.
    pub v1_memory: Option<PathBuf>,
    pub v1_pids: Option<PathBuf>,
    pub v1_cpu: Option<PathBuf>,
    /// v2: this process's own cgroup directory.
    pub v2: Option<PathBuf>,
    /// v2 controllers enabled for children of `v2` (memory, pids, cpu).
    pub v2_controllers: Vec<String>,
    pub v2_kill: bool,
}

impl Hierarchies {
    pub(crate) fn detect() -> Hierarchies {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut h = Hierarchies::default();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, mount_point, fstype, opts) = (pre[3], pre[4], post[0], post[2]);
            match fstype {
                "cgroup2" => {
                    if let Some(path) = own_path(&own, None) {
                        h.v2 = Some(join(mount_point, root, &path));
                    }
                }
                "cgroup" => {
                    for ctl in ["memory", "pids", "cpu"] {
                        if opts.split(',').any(|o| o == ctl)
                            && let Some(path) = own_path(&own, Some(ctl))
                        {
                            let dir = join(mount_point, root, &path);
                            match ctl {
                                "memory" => h.v1_memory = Some(dir),
                                "pids" => h.v1_pids = Some(dir),
                                _ => h.v1_cpu = Some(dir),
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(v2) = &h.v2 {
            // The root cgroup has no cgroup.kill file even where the kernel supports it:
            // look at a child cgroup then.
            // With no child yet (a fresh host), make a throw-away one to look.
            h.v2_kill = v2.join("cgroup.kill").exists()
                || fs::read_dir(v2).into_iter().flatten().flatten().any(|e| {
                    e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join("cgroup.kill").exists()
                })
                || probe_child_has_kill(v2);
            let enabled = fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
            h.v2_controllers = enabled
                .split_whitespace()
                .filter(|c| matches!(*c, "memory" | "pids" | "cpu"))
                .map(str::to_owned)
                .collect();
        }
        h
    }

    fn v2_has(&self, ctl: &str) -> bool {
        self.v2.is_some() && self.v2_controllers.iter().any(|c| c == ctl)
    }

    /// Host-level availability of each cgroup layer.
    pub(crate) fn availability(&self) -> [(Layer, LayerState); 4] {
        let ctl = |name: &str, v1: &Option<PathBuf>| {
            if self.v2_has(name) {
                LayerState::Active
            } else if let Some(dir) = v1 {
                if writable(dir) {
                    LayerState::Active
                } else {
                    LayerState::Inactive(format!(
                        "v1 {name} cgroup {} is not writable",
                        dir.display()
                    ))
                }
            } else {
                LayerState::Inactive(format!("no {name} controller in cgroup v2 or v1"))
            }
        };
        let kill = match &self.v2 {
            Some(dir) if self.v2_kill && writable(dir) => LayerState::Active,
            Some(dir) if self.v2_kill => {
                LayerState::Inactive(format!("cgroup v2 {} is not writable", dir.display()))
            }
            _ => LayerState::Inactive("no cgroup v2 with cgroup.kill".into()),
        };
        [
            (Layer::CgroupMemory, ctl("memory", &self.v1_memory)),
            (Layer::CgroupPids, ctl("pids", &self.v1_pids)),
            (Layer::CgroupCpu, ctl("cpu", &self.v1_cpu)),
            (Layer::CgroupKill, kill),
        ]
    }
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn own_path(own: &str, controller: Option<&str>) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => ctls.is_empty(),
            Some(c) => ctls.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_owned())
    })
}

fn join(mount_point: &str, root: &str, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/');
    let mut p = PathBuf::from(mount_point);
    if !rel.is_empty() {
        p.push(rel);
    }
    p
}

/// The cgroups of one cell.
#[derive(Debug, Default)]
pub(crate) struct CellCgroups {
    dirs: Vec<PathBuf>,
    /// v2 directory fd for `CLONE_INTO_CGROUP`.
    pub v2_fd: Option<OwnedFd>,
    /// v1 `cgroup.procs`, open for moving a forked cell in.
    v1_procs: Vec<OwnedFd>,
    /// v2 `cgroup.procs`, open for moving a forked cell in.
    v2_procs: Option<OwnedFd>,
    kill_file: Option<PathBuf>,
    memory_dir: Option<(PathBuf, bool)>,
    pids_dir: Option<PathBuf>,
    /// Each limiting controller's directory and whether it is v2.
    controllers: Vec<(Controller, PathBuf, bool)>,
    /// The limits written.
    limits: Option<Limits>,
    /// Controller directories whose values are unknown (a rewrite failed): never kept.
    unsure: Vec<PathBuf>,
    /// The memory cgroup's `oom_kill` count when this cell got it (a kept cgroup's count
    /// goes on from its earlier cells').
    oom_base: u64,
    /// Set when the cell is over and its cgroups are given up: a usage probe still held
    /// reads nothing from a directory that may serve another cell by then.
    over: Arc<AtomicBool>,
}

/// A cgroup controller that limits a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }

    fn layer(self) -> Layer {
        match self {
            Controller::Memory => Layer::CgroupMemory,
            Controller::Pids => Layer::CgroupPids,
            Controller::Cpu => Layer::CgroupCpu,
        }
    }

    /// The files that set `limits` for this controller, in a safe order for a limit
    /// that is rising (v1 memory+swap must never be below memory).
    /// `pids_bound`: the cell's pids controller is in place (see [`cpu_quota`]).
    fn writes(
        self,
        v2: bool,
        limits: &Limits,
        rising: bool,
        pids_bound: bool,
    ) -> Vec<(&'static str, String)> {
        let mem = limits.cgroup_memory_bytes().to_string();
        let quota = cpu_quota(limits, pids_bound);
        let mut writes = match (self, v2) {
            (Controller::Memory, true) => {
                vec![("memory.max", mem), ("memory.swap.max", "0".into())]
            }
            (Controller::Memory, false) => vec![
                ("memory.limit_in_bytes", mem.clone()),
                ("memory.memsw.limit_in_bytes", mem),
            ],
            (Controller::Pids, _) => vec![("pids.max", limits.max_processes.to_string())],
            // The period stays at its default of 100 ms, which the quota is counted in.
            (Controller::Cpu, true) => vec![(
                "cpu.max",
                quota.map_or_else(|| "max".into(), |q| q.to_string()),
            )],
            (Controller::Cpu, false) => vec![(
                "cpu.cfs_quota_us",
                quota.map_or_else(|| "-1".into(), |q| q.to_string()),
            )],
        };
        if rising && self == Controller::Memory && !v2 {
            writes.reverse();
        }
        writes
    }

    /// Whether `a` and `b` differ in what this controller enforces.
    fn differs(self, a: &Limits, b: &Limits, pids_bound: bool) -> bool {
        match self {
            Controller::Memory => a.memory_bytes != b.memory_bytes,
            Controller::Pids => a.max_processes != b.max_processes,
            Controller::Cpu => cpu_quota(a, pids_bound) != cpu_quota(b, pids_bound),
        }
    }
}

/// The CPU bandwidth quota `limits` ask for, in µs per 100 ms period, or `None` where it could
/// never bind: with the pids controller holding the cell to `max_processes` tasks, each on at
/// most one CPU at a time, a quota of that many CPUs or more only costs its write, and the
/// kernel checks every quota write against the whole tree of CPU cgroups, so that write grew
/// with the number of live cells (0.7 ms per spawn at 1,000 process cells, 3.7 ms at 10,000).
fn cpu_quota(limits: &Limits, pids_bound: bool) -> Option<u64> {
    let cpus_reachable = u64::from(limits.max_processes) * 100;
    if pids_bound && u64::from(limits.cpu_percent) >= cpus_reachable {
        return None;
    }
    Some((u64::from(limits.cpu_percent) * 1000).max(1000))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

impl CellCgroups {
    /// Creates the cell's cgroups and writes its limits. Returns the state of every
    /// cgroup layer for this cell; a layer whose setup fails is reported inactive.
    pub(crate) fn create(
        h: &Hierarchies,
        name: &str,
        limits: &Limits,
    ) -> (CellCgroups, Vec<(Layer, LayerState)>) {
        CellCgroups::create_in(h, name, limits, &KEPT)
    }

    /// [`CellCgroups::create`], taking v1 cgroups kept in `bin` where there are some.
    fn create_in(
        h: &Hierarchies,
        name: &str,
        limits: &Limits,
        bin: &KeptCgroups,
    ) -> (CellCgroups, Vec<(Layer, LayerState)>) {
        let mut cg = CellCgroups::default();
        let mut states = Vec::new();
        let v2_dir = h.v2.as_ref().map(|d| d.join(name));
        let mut v2_ok = false;
        if let Some(dir) = &v2_dir {
            match fs::create_dir(dir) {
                Ok(()) => {
                    cg.dirs.push(dir.clone());
                    match fs::File::open(dir) {
                        Ok(f) => {
                            cg.v2_fd = Some(f.into());
                            v2_ok = true;
                        }
                        Err(e) => {
                            states.push((Layer::CgroupKill, LayerState::Inactive(e.to_string())))
                        }
                    }
                }
                Err(e) => states.push((
                    Layer::CgroupKill,
                    LayerState::Inactive(format!("{}: {e}", dir.display())),
                )),
            }
        }
        let kill_file = v2_dir
            .as_ref()
            .map(|d| d.join("cgroup.kill"))
            .filter(|f| v2_ok && f.exists());
        if kill_file.is_some() {
            cg.kill_file = kill_file;
            states.push((Layer::CgroupKill, LayerState::Active));
        } else if !states.iter().any(|(l, _)| *l == Layer::CgroupKill) {
            states.push((
                Layer::CgroupKill,
                LayerState::Inactive("no cgroup v2 with cgroup.kill".into()),
            ));
        }

        if let Some(dir) = v2_dir.as_ref().filter(|_| v2_ok) {
            cg.v2_procs = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .ok()
                .map(OwnedFd::from);
        }
        let v1_dirs = [&h.v1_memory, &h.v1_pids, &h.v1_cpu];
        for (ctl, v1_dir) in [Controller::Memory, Controller::Pids, Controller::Cpu]
            .into_iter()
            .zip(v1_dirs)
        {
            let name_of = ctl.name();
            let state = if v2_ok && h.v2_has(name_of) {
                let dir = v2_dir.clone().expect("v2_ok");
                apply(&dir, &cg.fresh_writes(ctl, true, limits), name_of)
                    .map(|()| cg.adopt(ctl, dir, true))
            } else if let Some(parent) = v1_dir {
                let kept = bin.take(ctl, parent);
                let dir = kept
                    .as_ref()
                    .map_or_else(|| parent.join(name), |k| k.dir.clone());
                let made = match &kept {
                    // An emptied cgroup of an earlier cell: only the limits that differ are
                    // written, as for a spare retargeted.
                    Some(k) => {
                        if ctl == Controller::Memory {
                            cg.oom_base = oom_kills(&dir, false);
                        }
                        Ok(cg.kept_writes(ctl, &k.limits, limits))
                    }
                    None => fs::create_dir(&dir)
                        .map_err(|e| format!("{}: {e}", dir.display()))
                        .map(|()| cg.fresh_writes(ctl, false, limits)),
                };
                made.and_then(|writes| {
                    cg.dirs.push(dir.clone());
                    apply(&dir, &writes, name_of).inspect_err(|_| cg.unsure.push(dir.clone()))
                })
                .and_then(|()| {
                    let procs = fs::OpenOptions::new()
                        .write(true)
                        .open(dir.join("cgroup.procs"))
                        .map_err(|e| format!("open cgroup.procs: {e}"))?;
                    cg.v1_procs.push(procs.into());
                    cg.adopt(ctl, dir, false);
                    Ok(())
                })
            } else {
                Err(format!("no {name_of} controller in cgroup v2 or v1"))
            };
            states.push((
                ctl.layer(),
                state.map_or_else(LayerState::Inactive, |()| LayerState::Active),
            ));
        }
        cg.limits = Some(limits.clone());
        (cg, states)
    }

    /// What a new cgroup of `ctl` needs written: nothing where the default (no CPU quota)
    /// is what `limits` ask for.
    fn fresh_writes(
        &self,
        ctl: Controller,
        v2: bool,
        limits: &Limits,
    ) -> Vec<(&'static str, String)> {
        let pids_bound = self.pids_dir.is_some();
        if ctl == Controller::Cpu && cpu_quota(limits, pids_bound).is_none() {
            return Vec::new();
        }
        ctl.writes(v2, limits, false, pids_bound)
    }

    /// What a kept cgroup of `ctl` needs written: the limits that differ from `old`, those
    /// of the cell it served last.
    fn kept_writes(
        &self,
        ctl: Controller,
        old: &Limits,
        limits: &Limits,
    ) -> Vec<(&'static str, String)> {
        let pids_bound = self.pids_dir.is_some();
        if !ctl.differs(old, limits, pids_bound) {
            return Vec::new();
        }
        let rising = ctl == Controller::Memory && limits.memory_bytes > old.memory_bytes;
        ctl.writes(false, limits, rising, pids_bound)
    }

    fn adopt(&mut self, ctl: Controller, dir: PathBuf, v2: bool) {
        match ctl {
            Controller::Memory => self.memory_dir = Some((dir.clone(), v2)),
            Controller::Pids => self.pids_dir = Some(dir.clone()),
            Controller::Cpu => {}
        }
        self.controllers.push((ctl, dir, v2));
    }

    /// Rewrites the limits that differ from those written (cgroups made ahead of time
    /// for other limits). Returns the new state of each rewritten layer.
    pub(crate) fn retarget(&mut self, limits: &Limits) -> Vec<(Layer, LayerState)> {
        let Some(old) = self.limits.replace(limits.clone()) else {
            return Vec::new();
        };
        let mut states = Vec::new();
        let pids_bound = self.pids_dir.is_some();
        for (ctl, dir, v2) in &self.controllers {
            if ctl.differs(&old, limits, pids_bound) {
                let rising = match ctl {
                    Controller::Memory => limits.memory_bytes > old.memory_bytes,
                    _ => false,
                };
                let applied = apply(
                    dir,
                    &ctl.writes(*v2, limits, rising, pids_bound),
                    ctl.name(),
                );
                if applied.is_err() {
                    self.unsure.push(dir.clone());
                }
                let state = applied.map_or_else(LayerState::Inactive, |()| LayerState::Active);
                states.push((ctl.layer(), state));
            }
        }
        states
    }

    /// Moves the process `pid` into every cgroup of the cell.
    pub(crate) fn place(&self, pid: i32) -> io::Result<()> {
        let text = pid.to_string();
        for fd in self.v1_procs.iter().chain(&self.v2_procs) {
            // SAFETY: fd is an open cgroup.procs file; the buffer is valid.
            let n = unsafe { libc::write(fd.as_raw_fd(), text.as_ptr().cast(), text.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Closes the descriptors used to place the cell's process (it is placed): a cell
    /// keeps no cgroup descriptor open while it lives.
    pub(crate) fn release_fds(&mut self) {
        self.v1_procs.clear();
        self.v2_procs = None;
        self.v2_fd = None;
    }

    /// The v1 `tasks` files of the cell's cgroups, for a child that writes itself in
    /// ("0") while it is still single-threaded, right after `clone3`.
    ///
    /// Not `cgroup.procs`: moving a whole thread group (or another process by pid) takes
    /// the kernel's global `cgroup_threadgroup_rwsem` for writing, whose first writer
    /// waits out a full RCU grace period (`rcu_sync_enter`; 5-11 ms of a one-shot run on
    /// this host). A thread moving itself takes no such lock, and a single-threaded
    /// process is its one thread.
    pub(crate) fn v1_self_join_files(&self) -> io::Result<Vec<OwnedFd>> {
        self.controllers
            .iter()
            .filter(|(_, _, v2)| !v2)
            .map(|(_, dir, _)| {
                // `cgroup.procs` where `tasks` cannot be opened (a delegation that chowned
                // only the former): slower to join, never less confined.
                let open = |file: &str| fs::OpenOptions::new().write(true).open(dir.join(file));
                Ok(open("tasks").or_else(|_| open("cgroup.procs"))?.into())
            })
            .collect()
    }

    /// Kills every process of the cell's cgroup (v2 `cgroup.kill`), if available.
    pub(crate) fn kill_file(&self) -> Option<PathBuf> {
        self.kill_file.clone()
    }

    /// Host pids of every process in the cell (from the pids controller's cgroup).
    pub(crate) fn pids(&self) -> Option<Vec<i32>> {
        let dir = self.pids_dir.as_ref()?;
        let text = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The files that give the cell's memory now (`memory.current` on v2,
    /// `memory.usage_in_bytes` on v1) and its CPU time (v2 `cpu.stat`), where they exist.
    pub(crate) fn usage_files(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        match &self.memory_dir {
            Some((dir, true)) => (Some(dir.join("memory.current")), Some(dir.join("cpu.stat"))),
            Some((dir, false)) => (Some(dir.join("memory.usage_in_bytes")), None),
            None => (None, None),
        }
    }

    /// Whether the kernel's OOM killer killed something in this cell.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some((dir, v2)) = &self.memory_dir else {
            return false;
        };
        oom_kills(dir, *v2) > self.oom_base
    }

    /// Set once the cell is over (see [`CellCgroups::release`]).
    pub(crate) fn over(&self) -> Arc<AtomicBool> {
        self.over.clone()
    }

    /// Gives the cgroups up once every process of the cell is gone: each v1 controller
    /// cgroup that is empty, holds next to no memory and has known limits is kept for the
    /// next cell ([`CellCgroups::create`] takes it and rewrites the limits that differ:
    /// an `rmdir` and a `mkdir` of a v1 cgroup cost 0.1–0.3 ms of kernel time each here);
    /// the rest, and the v2 cgroup (its `cgroup.kill` is in every [`crate::Killer`] of the
    /// cell), are removed. A cgroup with a process in it is never kept.
    pub(crate) fn release(&mut self) -> io::Result<()> {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        AT_EXIT.call_once(remove_kept_at_exit);
        self.release_to(&KEPT)
    }

    /// [`CellCgroups::release`], keeping cgroups in `bin`.
    fn release_to(&mut self, bin: &KeptCgroups) -> io::Result<()> {
        self.over.store(true, Ordering::SeqCst);
        self.release_fds();
        if let Some(limits) = self.limits.take() {
            for (ctl, dir, v2) in std::mem::take(&mut self.controllers) {
                if !v2 && !self.unsure.contains(&dir) && bin.keep(ctl, &dir, &limits) {
                    self.dirs.retain(|d| *d != dir);
                }
            }
        }
        self.memory_dir = None;
        self.pids_dir = None;
        self.remove()
    }

    /// Directories this cell created (all removed by [`CellCgroups::remove`]).
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cell's cgroups. Call after the cell is reaped; retries briefly
    /// while the kernel finishes tearing the last tasks down.
    pub(crate) fn remove(&mut self) -> io::Result<()> {
        self.v1_procs.clear();
        self.v2_fd = None;
        self.v2_procs = None;
        let mut last = Ok(());
        for dir in self.dirs.drain(..).rev() {
            let mut attempt = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 200 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_micros(500));
                    }
                    Err(e) => {
                        last = Err(e);
                        break;
                    }
                }
            }
        }
        last
    }
}

impl Drop for CellCgroups {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The `oom_kill` count of a memory cgroup (v2 `memory.events`, v1 `memory.oom_control`).
fn oom_kills(dir: &Path, v2: bool) -> u64 {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// An emptied v1 cgroup kept for the next cell, and the limits last written to it.
struct Kept {
    ctl: Controller,
    dir: PathBuf,
    limits: Limits,
}

/// Kept cgroups per controller, at most this many (cells end about as fast as they start;
/// a burst of ends beyond it is removed as before).
const KEPT_PER_CONTROLLER: usize = 4;
/// A kept memory cgroup may still be charged this much (kernel objects freed late, per-CPU
/// charge caches); one holding more is removed instead.
const KEPT_MEMORY_SLACK: u64 = 1 << 20;

/// Emptied cgroups kept for later cells; `None` once the process is exiting (every cgroup
/// given up then is removed).
pub(crate) struct KeptCgroups(Mutex<Option<Vec<Kept>>>);

/// The cgroups every cell of this process gives up and takes.
static KEPT: KeptCgroups = KeptCgroups::new();

impl KeptCgroups {
    const fn new() -> KeptCgroups {
        KeptCgroups(Mutex::new(Some(Vec::new())))
    }

    /// Keeps `dir` of `ctl` for the next cell if it is empty and holds next to no memory.
    fn keep(&self, ctl: Controller, dir: &Path, limits: &Limits) -> bool {
        let empty = fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if !empty {
            return false;
        }
        if ctl == Controller::Memory {
            let held = fs::read_to_string(dir.join("memory.usage_in_bytes"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            if held.is_none_or(|b| b > KEPT_MEMORY_SLACK) {
                return false;
            }
        }
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(kept) = kept.as_mut() else {
            return false;
        };
        if kept.iter().filter(|k| k.ctl == ctl).count() >= KEPT_PER_CONTROLLER {
            return false;
        }
        kept.push(Kept {
            ctl,
            dir: dir.to_path_buf(),
            limits: limits.clone(),
        });
        true
    }

    /// A kept cgroup of `ctl` under `parent`, if there is one.
    fn take(&self, ctl: Controller, parent: &Path) -> Option<Kept> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = kept.as_mut()?;
        let i = kept
            .iter()
            .position(|k| k.ctl == ctl && k.dir.parent() == Some(parent))?;
        Some(kept.swap_remove(i))
    }

    /// Removes every kept cgroup; with `close`, every cgroup given up from now on is removed.
    fn clear(&self, close: bool) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let dirs: Vec<Kept> = if close {
            kept.take().unwrap_or_default()
        } else {
            kept.as_mut().map(std::mem::take).unwrap_or_default()
        };
        drop(kept);
        for k in dirs {
            let _ = fs::remove_dir(&k.dir);
        }
    }

    /// Whether `dir` is kept here.
    #[cfg(test)]
    fn holds(&self, dir: &Path) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .any(|k| k.dir == dir)
    }
}

/// On a normal exit, removes the kept cgroups, and every cgroup given up after.
fn remove_kept_at_exit() {
    extern "C" fn remove_kept() {
        KEPT.clear(true);
    }
    // SAFETY: registers a plain function with no arguments; it takes one lock and removes
    // directories.
    unsafe { libc::atexit(remove_kept) };
}

/// Whether `dir` is a cgroup kept for the next cell.
#[cfg(test)]
pub(crate) fn is_kept(dir: &Path) -> bool {
    KEPT.holds(dir)
}

fn apply(dir: &Path, writes: &[(&str, String)], ctl: &str) -> Result<(), String> {
    for (file, value) in writes {
        let path = dir.join(file);
        // Swap accounting files are optional (kernel built without swap accounting).
        let optional = file.contains("swap") || file.contains("memsw");
        if optional && !path.exists() {
            continue;
        }
        write(&path, value)
            .map_err(|e| format!("{ctl}: writing {value} to {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Whether a new child of the v2 cgroup `dir` gets a `cgroup.kill` file (kernel ≥ 5.14). The
/// probe cgroup is removed again; where `dir` is not writable the answer is no.
fn probe_child_has_kill(dir: &Path) -> bool {
    let probe = dir.join(format!("cell-probe-{}", std::process::id()));
    if fs::create_dir(&probe).is_err() {
        return false;
    }
    let has = probe.join("cgroup.kill").exists();
    let _ = fs::remove_dir(&probe);
    has
}

/// Removes the empty cell cgroups of supervisors that no longer run.
pub(crate) fn sweep_stale(h: &Hierarchies) {
    let parents = [&h.v2, &h.v1_memory, &h.v1_pids, &h.v1_cpu];
    for parent in parents.into_iter().flatten() {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("cell-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if !alive(pid) {
                // Fails (EBUSY) where processes are still inside: then it stays.
                let _ = fs::remove_dir(parent.join(&name));
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    fn limits(cpu_percent: u32, max_processes: u32) -> Limits {
        Limits {
            cpu_percent,
            max_processes,
            ..Limits::default()
        }
    }

    #[test]
    fn a_quota_the_tasks_cannot_reach_is_not_written() {
        // One task runs on one CPU at most: 100 % cannot bind, 50 % can.
        assert_eq!(cpu_quota(&limits(100, 1), true), None);
        assert_eq!(cpu_quota(&limits(50, 1), true), Some(50_000));
        assert_eq!(cpu_quota(&limits(150, 2), true), Some(150_000));
        assert_eq!(cpu_quota(&limits(200, 2), true), None);
        // Without the pids controller nothing bounds the tasks: the quota is written.
        assert_eq!(cpu_quota(&limits(100, 1), false), Some(100_000));
        // A new cgroup gets no CPU write when none binds; a rewrite to an unbinding quota
        // clears the old one.
        assert!(
            Controller::Cpu
                .writes(false, &limits(200, 2), false, true)
                .contains(&("cpu.cfs_quota_us", "-1".into()))
        );
        assert!(Controller::Cpu.differs(&limits(50, 1), &limits(100, 1), true));
        assert!(!Controller::Cpu.differs(&limits(100, 1), &limits(300, 1), true));
    }
}

#[cfg(test)]
mod kept_tests {
    use super::*;

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The v1 controller cgroups of `cg` (the ones that can be kept).
    fn v1_dirs(cg: &CellCgroups) -> Vec<(Controller, PathBuf)> {
        cg.controllers
            .iter()
            .filter(|(_, _, v2)| !v2)
            .map(|(c, d, _)| (*c, d.clone()))
            .collect()
    }

    fn limits(memory_mib: u64, max_processes: u32, cpu_percent: u32) -> Limits {
        Limits {
            memory_bytes: memory_mib << 20,
            max_processes,
            cpu_percent,
            ..Limits::default()
        }
    }

    fn name(tag: &str) -> String {
        format!("test-kept-{}-{tag}", std::process::id())
    }

    #[test]
    fn an_emptied_cgroup_serves_the_next_cell_with_its_limits_rewritten() {
        let h = &crate::host::host_support().cgroups;
        let bin = KeptCgroups::new();
        let (mut a, _) = CellCgroups::create_in(h, &name("a"), &limits(64, 8, 50), &bin);
        let kept = v1_dirs(&a);
        if kept.is_empty() {
            eprintln!("no v1 cgroups on this host: nothing to keep");
            return;
        }
        let all = a.dirs().to_vec();
        a.release_to(&bin).unwrap();
        for (_, dir) in &kept {
            assert!(dir.exists() && bin.holds(dir), "{} not kept", dir.display());
        }
        for dir in all.iter().filter(|d| !kept.iter().any(|(_, k)| k == *d)) {
            assert!(!dir.exists(), "{} (v2) left behind", dir.display());
        }
        // The next cell gets the same directories, with its own limits.
        let (mut b, _) = CellCgroups::create_in(h, &name("b"), &limits(32, 4, 25), &bin);
        assert_eq!(v1_dirs(&b), kept);
        for (ctl, dir) in &kept {
            let (file, want) = match ctl {
                Controller::Memory => (
                    "memory.limit_in_bytes",
                    limits(32, 4, 25).cgroup_memory_bytes().to_string(),
                ),
                Controller::Pids => ("pids.max", "4".into()),
                Controller::Cpu => ("cpu.cfs_quota_us", "25000".into()),
            };
            assert_eq!(read(dir, file), want, "{}", dir.display());
            if *ctl == Controller::Memory {
                assert_eq!(read(dir, "memory.memsw.limit_in_bytes"), want);
            }
        }
        // A cgroup with a process in it is never kept: it is removed once empty.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        b.place(sleeper.id() as i32).unwrap();
        let b_dirs = b.dirs().to_vec();
        let _ = b.release_to(&bin);
        for (_, dir) in &kept {
            assert!(
                !bin.holds(dir),
                "{} kept with a process in it",
                dir.display()
            );
        }
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        for dir in &b_dirs {
            let _ = fs::remove_dir(dir);
        }
        bin.clear(true);
    }

    #[test]
    fn an_oom_kill_in_a_kept_cgroup_is_not_the_next_cells() {
        let h = &crate::host::host_support().cgroups;
        let bin = KeptCgroups::new();
        let (mut a, _) = CellCgroups::create_in(h, &name("oom"), &limits(16, 4, 100), &bin);
        if a.memory_dir.as_ref().is_none_or(|(_, v2)| *v2) {
            eprintln!("no v1 memory cgroup on this host: nothing to keep");
            return;
        }
        let procs = a.v1_self_join_files().unwrap();
        // SAFETY: the child makes only raw system calls (write, mmap, _exit) and writes
        // memory it mapped itself, so forking this multi-threaded test process is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; the child joins the cgroups, then touches 256 MiB.
            unsafe {
                for fd in &procs {
                    libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1);
                }
                let len = 256usize << 20;
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    libc::_exit(3);
                }
                let mut off = 0;
                while off < len {
                    *p.cast::<u8>().add(off) = 1;
                    off += 4096;
                }
                libc::_exit(0);
            }
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "not OOM-killed: {status:#x}"
        );
        assert!(a.oom_killed());
        let (dir, _) = a.memory_dir.clone().unwrap();
        a.release_to(&bin).unwrap();
        assert!(bin.holds(&dir), "the emptied memory cgroup is kept");
        let (mut b, _) = CellCgroups::create_in(h, &name("next"), &limits(16, 4, 100), &bin);
        assert_eq!(b.memory_dir.as_ref().map(|(d, _)| d), Some(&dir));
        assert!(
            !b.oom_killed(),
            "the earlier cell's OOM kill is not this one's"
        );
        b.release_to(&bin).unwrap();
        bin.clear(true);
    }
}
