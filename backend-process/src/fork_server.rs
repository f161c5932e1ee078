//! The fork server: a pre-confined guest process that forks cells.
//!
//! A direct spawn clones a child of the supervisor and walks it through the whole
//! confinement sequence (namespaces, pivot_root, ids, Landlock, seccomp) before
//! executing the guest image. The fork server pays that once: it is the guest image
//! itself, spawned through the same sequence (keeping only `CAP_SYS_ADMIN`,
//! `CAP_SETUID` and `CAP_SETGID` inside its own user namespace), and then forks each
//! cell's process with new pid, mount, ipc and uts namespaces and, where the host lets
//! it map a range of ids (a root supervisor), a uid and gid of its own. The supervisor's memory, secrets and fds are never in it: it
//! is a fresh exec of the embedded image, and it only ever holds cells' channels.
//!
//! Cells are forked with `CLONE_PARENT`, so the supervisor is their parent and reaps
//! them exactly like directly spawned cells. The forked process confines itself the
//! rest of the way (capabilities, session, fds, the cell seccomp filter) and waits for
//! its go record, which the host sends only after it has moved the process into the
//! cell's cgroups; the record carries the cell's rlimits and arguments.
//!
//! A keeper thread per image keeps [`SPARES`] such processes ready — forked, confined,
//! placed in cgroups made for the limits of the latest spawn — so a spawn takes one,
//! rewrites the limits that differ, and sends the go record. The keeper thread lives
//! as long as the supervisor process: it spawned the server, so it is the parent of
//! every cell and their parent-death signals follow it. A server that died is
//! replaced by the keeper on the next demand.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ceilings::{max_memory_bytes, max_open_files, max_processes};
use crate::cell::{Prepared, ProcessCell, require};
use crate::direct::{self, SERVER_ID_SPAN};
use crate::error::{Error, Result, host};
use crate::fork_protocol::{
    FORK_REQUEST, ForkRequest, MAX_MESSAGE, PLACED, Reply, encode_setup, recv_message, send_message,
};
use crate::host::{host_support, seccomp_program};
use crate::image::Image;
use crate::limits::{Limits, rlimit_values};
use crate::reaper::EXIT_WAIT;
use crate::seccomp::Role;
use crate::spec::{SpawnSpec, check_host};

/// Processes kept ready per image.
pub const SPARES: usize = 2;

/// How long spawns must have been quiet before the keeper refills a pool that still has
/// a spare.
const QUIET: Duration = Duration::from_millis(1);

/// How long a spawn waits for a spare before giving up.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a pool's server is made for: its image and, in tests, the confinement step
/// its cells are made to fail (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    image: Image,
    fault: u8,
}

impl Key {
    fn of(spec: &SpawnSpec) -> Key {
        Key {
            image: spec.image,
            #[cfg(test)]
            fault: spec.fault.map_or(0, crate::step::Step::code),
            #[cfg(not(test))]
            fault: 0,
        }
    }
}

/// The spares of one image, shared by the spawning threads and the keeper.
struct Pool {
    state: Mutex<State>,
    /// Signalled when a spare is taken or made, the shape changes, or a demand comes.
    changed: Condvar,
}

struct State {
    /// The fork server process, while the keeper is not using it.
    server: Option<ProcessCell>,
    /// The keeper is making a spare (it holds the server meanwhile).
    busy: bool,
    /// The supervisor process is exiting: the keeper starts nothing more.
    closing: bool,
    /// The last [`PoolLease`] is gone: no server, no spares until the next spawn.
    retired: bool,
    spares: VecDeque<ProcessCell>,
    /// The limits spares are made for: those of the latest spawn.
    shape: Limits,
    /// Why the last spare could not be made; taken by the spawn that reports it, cleared
    /// by the next demand.
    failure: Option<Error>,
    /// Spawns that found no spare and wait for one.
    waiting: usize,
    /// When a spawn last took a spare.
    last_take: Option<Instant>,
}

/// The pool of `key`, its keeper started on first use.
fn pool(key: Key) -> &'static Pool {
    // Found by a short scan: one pool per image (and, in tests, per injected fault).
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, pool)) = pools.iter().find(|(k, _)| *k == key) {
        return pool;
    }
    let pool: &'static Pool = Box::leak(Box::new(Pool {
        state: Mutex::new(State {
            server: None,
            busy: false,
            closing: false,
            retired: false,
            spares: VecDeque::new(),
            shape: Limits::default(),
            failure: None,
            waiting: 0,
            last_take: None,
        }),
        changed: Condvar::new(),
    }));
    std::thread::Builder::new()
        .name("cell-fork-keeper".into())
        .spawn(move || keep(key, pool))
        .expect("spawning the fork-server keeper thread");
    if pools.is_empty() {
        at_exit();
    }
    pools.push((key, pool));
    pool
}

/// Shuts `pool` down when the supervisor process exits normally: the keeper starts
/// nothing more, the spare it may be making is waited for, then the server and every
/// spare are killed and reaped and their cgroups removed; cells dropped just before are
/// reaped too. (When the process dies otherwise, the kernel kills the server, the spares
/// and the cells through their parent-death signal; their empty cgroups are swept by the
/// next supervisor.)
fn at_exit() {
    extern "C" fn clean_up() {
        let pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (_, pool) in pools {
            let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.closing = true;
            pool.changed.notify_all();
            // A spare being made is a few milliseconds away; a keeper stuck longer is
            // left to the kernel (parent-death signals) and the sweep.
            let (mut state, _) = pool
                .changed
                .wait_timeout_while(state, EXIT_WAIT, |s| s.busy)
                .unwrap_or_else(PoisonError::into_inner);
            let server = state.server.take();
            let cells: Vec<ProcessCell> = state.spares.drain(..).chain(server).collect();
            drop(state);
            for cell in &cells {
                cell.kill();
            }
            for mut cell in cells {
                let _ = cell.wait();
            }
        }
        crate::reaper::wait_idle(EXIT_WAIT);
    }
    // SAFETY: registers a plain function with no arguments; it only takes locks
    // without blocking and makes ordinary calls.
    unsafe { libc::atexit(clean_up) };
}

/// Every pool started in this process.
static POOLS: Mutex<Vec<(Key, &'static Pool)>> = Mutex::new(Vec::new());

/// Keeps the fork servers running: held by every [`crate::ProcessBackend`] (each clone
/// holds one). When the last lease is dropped, each pool kills its server and spares
/// (the reaper reaps them and removes their cgroups) and makes no more until a spawn
/// asks; cells already started live on.
pub struct PoolLease(());

static LEASES: Mutex<usize> = Mutex::new(0);

impl PoolLease {
    /// Takes a lease (the pools run while any is held).
    pub fn new() -> PoolLease {
        *LEASES.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        PoolLease(())
    }
}

impl Default for PoolLease {
    fn default() -> Self {
        PoolLease::new()
    }
}

impl Clone for PoolLease {
    fn clone(&self) -> Self {
        PoolLease::new()
    }
}

impl std::fmt::Debug for PoolLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolLease")
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let mut leases = LEASES.lock().unwrap_or_else(PoisonError::into_inner);
        *leases -= 1;
        if *leases > 0 {
            return;
        }
        drop(leases);
        let pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (_, pool) in pools {
            let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.retired = true;
            let server = state.server.take();
            let cells: Vec<ProcessCell> = state.spares.drain(..).chain(server).collect();
            // Dropped under the lock, as the keeper drops what it made once retired: each drop
            // hands its process to the reaper before an exiting process's clean-up can look.
            drop(cells);
            pool.changed.notify_all();
            drop(state);
        }
    }
}

/// Starts a cell from a spare of the fork server of `spec.image`.
pub(crate) fn spawn(spec: &SpawnSpec) -> Result<ProcessCell> {
    let go = ForkRequest {
        rlimits: rlimit_values(&spec.limits),
        args: spec.args.clone(),
    }
    .go_record();
    if go.len() > MAX_MESSAGE {
        return Err(Error::InvalidLimit(format!(
            "cell arguments longer than the fork server's {MAX_MESSAGE}-byte record"
        )));
    }
    let pool = pool(Key::of(spec));
    let mut cell = {
        let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.shape != spec.limits {
            state.shape = spec.limits.clone();
        }
        state.failure = None;
        state.retired = false;
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        let cell = loop {
            if let Some(cell) = state.spares.pop_front() {
                break cell;
            }
            if let Some(e) = state.failure.take() {
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::ForkServer(format!(
                    "no cell process within {SPAWN_TIMEOUT:?}"
                )));
            }
            state.waiting += 1;
            pool.changed.notify_all();
            state = pool
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting -= 1;
        };
        state.last_take = Some(Instant::now());
        pool.changed.notify_all();
        cell
    };
    // A spare that failed a confinement step is gone already: say which step.
    if let Some(t) = cell.try_wait()? {
        return Err(ended(&t));
    }
    // A failure below drops the cell, which kills it.
    cell.retarget(&spec.limits);
    require(cell.layers(), &spec.require)?;
    inherit_affinity(cell.pid());
    if let Err(e) = cell.channel().write_all(&go) {
        return Err(failure_of(&mut cell, host("sending the go record")(e)));
    }
    Ok(cell)
}

/// The keeper: starts the server, keeps `SPARES` processes ready for the current
/// shape, replaces a server that died. After a failure it waits for a spawn to ask
/// again, so a broken host does not make it spin.
fn keep(key: Key, pool: &'static Pool) {
    let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if state.closing
            || (state.retired && state.waiting == 0)
            || state.spares.len() >= SPARES
            || (state.failure.is_some() && state.waiting == 0)
        {
            state = pool
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        // With a spare still ready and nobody waiting, refill once spawns have been quiet
        // for a while: on two CPUs a spare made at once would compete with the cell just
        // started for the CPU its first frames need.
        if state.waiting == 0
            && !state.spares.is_empty()
            && let Some(quiet_at) = state.last_take.map(|t| t + QUIET)
        {
            let now = Instant::now();
            if now < quiet_at {
                state = pool
                    .changed
                    .wait_timeout(state, quiet_at - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
        }
        let shape = state.shape.clone();
        let mut server = state.server.take();
        state.busy = true;
        drop(state);
        let made = make_spare(&mut server, key, &shape).or_else(|e| match e {
            // The server died (or broke its protocol): replace it, once.
            Error::ForkServer(_) => {
                server = None;
                make_spare(&mut server, key, &shape)
            }
            other => Err(other),
        });
        state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.retired && state.waiting == 0 {
            // Retired meanwhile: what was made goes (dropping kills, the reaper reaps and
            // removes the cgroups). Dropped before `busy` is cleared, under the lock: an
            // exiting process's clean-up waits for `busy` to clear and then for the reaper's
            // pending work, which these two must have joined by then. (Dropped after, they
            // could still be on their way when the process exited, leaving the server's and
            // the spare's cgroups behind: about one `cell run` in a thousand under load.)
            drop((server, made));
            state.busy = false;
            pool.changed.notify_all();
            continue;
        }
        state.busy = false;
        state.server = server;
        match made {
            Ok(cell) => state.spares.push_back(cell),
            Err(e) => state.failure = Some(e),
        }
        pool.changed.notify_all();
    }
}

/// Forks one process from the server (started first if there is none) and places
/// it in cgroups made for `shape`.
fn make_spare(server: &mut Option<ProcessCell>, key: Key, shape: &Limits) -> Result<ProcessCell> {
    if server.is_none() {
        *server = Some(start(key)?);
    }
    let control = server
        .as_ref()
        .expect("started above")
        .channel()
        .as_raw_fd();
    send_message(control, &FORK_REQUEST, &[])
        .map_err(|e| Error::ForkServer(format!("sending a fork request: {e}")))?;
    let (reply, mut fds) = recv(control)?;
    let (pidfd, channel) = match (reply.errno, fds.len()) {
        (0, 2) => {
            let channel = fds.pop().expect("two");
            (fds.pop().expect("two"), channel)
        }
        (0, _) => {
            return Err(Error::ForkServer(
                "a fork reply without a pidfd and a channel".into(),
            ));
        }
        (errno, _) => {
            return Err(Error::Host {
                what: "the fork server's clone3",
                source: io::Error::from_raw_os_error(errno),
            });
        }
    };
    let pid = pid_of(&pidfd)?;
    let mut cell =
        ProcessCell::from_parts(pid, pidfd, UnixStream::from(channel), Prepared::new(shape)?);
    if let Err(e) = cell.place_in_cgroups() {
        return Err(failure_of(
            &mut cell,
            host("placing the cell in its cgroups")(e),
        ));
    }
    // Only now does it rehearse: the pages it touches are charged to its own cgroups.
    if let Err(e) = cell.channel().write_all(&[PLACED]) {
        return Err(failure_of(
            &mut cell,
            host("telling the cell it is placed")(e),
        ));
    }
    Ok(cell)
}

/// The error for a forked process that could not be handed on because of `e`: the
/// confinement step it failed, when it ended by failing one (it is killed and reaped
/// first; a killed process keeps the exit status it already had).
fn failure_of(cell: &mut ProcessCell, e: Error) -> Error {
    cell.kill();
    match cell.wait() {
        Ok(t) if t.failed_step().is_some() => ended(&t),
        _ => e,
    }
}

/// The error for a forked process that ended before its go record.
fn ended(t: &crate::cell::Termination) -> Error {
    match (t.failed_step(), t.status) {
        (Some(step), crate::cell::ExitStatus::Exited(code)) => Error::Confinement {
            step,
            source: io::Error::other(format!("reported by exit status {code}")),
        },
        _ => Error::ChildLost(format!("the forked cell process ended: {t:?}")),
    }
}

/// Spawns a fork server for `key` (on the keeper thread) and hands it the cell filter.
fn start(key: Key) -> Result<ProcessCell> {
    let spec = server_spec(key.image);
    check_host(&spec)?;
    let process = direct::spawn(&spec, Prepared::new(&spec.limits)?)?;
    #[cfg(test)]
    if key.fault == 0 {
        test_hooks::started(key.image, process.pid());
    }
    let control = process.channel().as_raw_fd();
    let ids = if host_support().rootful {
        SERVER_ID_SPAN
    } else {
        1
    };
    send_message(
        control,
        &encode_setup(ids, key.fault, seccomp_program(Role::Cell)),
        &[],
    )
    .map_err(|e| Error::ForkServer(format!("sending the setup: {e}")))?;
    match recv(control)? {
        (Reply { errno: 0 }, fds) if fds.is_empty() => Ok(process),
        (reply, _) => Err(Error::ForkServer(format!("setup refused: {reply:?}"))),
    }
}

/// Memory the fork server's cgroup allows: its own (a few MiB) plus, for every live cell
/// it forked, what the kernel charges to the server when it forks one (page tables, the
/// kernel stack and task structures: ~[`SERVER_MEMORY_PER_CELL`]; the pages a cell touches
/// are charged to the cell, which rehearses only once it sits in its own cgroups), for up
/// to [`SERVER_CAPACITY`] live cells.
pub const SERVER_MEMORY_BYTES: u64 = (64 << 20) + SERVER_CAPACITY * SERVER_MEMORY_PER_CELL;
/// Kernel memory charged to the server per forked cell, with headroom (measured: see the
/// README).
pub const SERVER_MEMORY_PER_CELL: u64 = 128 << 10;
/// Live forked cells the server's cgroup is sized for.
pub const SERVER_CAPACITY: u64 = 20_000;

/// The fork server's own spawn: every layer but a pid namespace of its own (cells get
/// theirs), no CPU-time limit; its rlimits are the ceilings of every cell's
/// (`server_rlimit_values`), its memory cgroup is sized for the cells it serves.
fn server_spec(image: Image) -> SpawnSpec {
    SpawnSpec {
        limits: Limits {
            memory_bytes: SERVER_MEMORY_BYTES.min(max_memory_bytes()),
            cpu_time_ms: 0,
            cpu_percent: 100,
            max_processes: max_processes(),
            open_files: max_open_files(),
            file_size_bytes: 0,
        },
        require: Vec::new(),
        fork_server: false,
        image,
        args: vec!["--fork-server".into()],
        role: Role::ForkServer,
        #[cfg(test)]
        fault: None,
    }
}

/// Receives one reply and the fds it carries. The server is trusted no more than it
/// must be: a malformed reply is an error.
fn recv(control: i32) -> Result<(Reply, Vec<OwnedFd>)> {
    let mut buf = [0u8; 64];
    let received = recv_message(control, &mut buf).map_err(|e| {
        Error::ForkServer(if e.kind() == io::ErrorKind::UnexpectedEof {
            "the fork server closed its channel".into()
        } else {
            format!("reading its reply: {e}")
        })
    })?;
    let reply = Reply::decode(&buf[..received.len])
        .filter(|_| received.fds.len() <= 2)
        .ok_or_else(|| Error::ForkServer("a malformed reply".into()))?;
    Ok((reply, received.fds))
}

/// Gives the cell the CPU affinity of the spawning thread, as a child it forked itself
/// would have (the server's own affinity is that of whichever thread started it).
fn inherit_affinity(pid: i32) {
    // SAFETY: a zeroed cpu_set_t is valid; both calls read or write only `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut set) == 0 {
            libc::sched_setaffinity(pid, size, &set);
        }
    }
}

/// The pid of a pidfd's process in the supervisor's pid namespace.
fn pid_of(pidfd: &OwnedFd) -> Result<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(host("reading the pidfd's fdinfo"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| Error::ForkServer("the forked cell is already gone".into()))
}

/// Which process serves each image, for tests that kill it.
#[cfg(test)]
pub(crate) mod test_hooks {
    use super::Image;
    use std::sync::Mutex;

    static SERVERS: Mutex<Vec<(Image, i32)>> = Mutex::new(Vec::new());

    pub(super) fn started(image: Image, pid: i32) {
        let mut servers = SERVERS.lock().unwrap();
        servers.retain(|(i, _)| *i != image);
        servers.push((image, pid));
    }

    pub(crate) fn server_pid(image: Image) -> Option<i32> {
        let servers = SERVERS.lock().unwrap();
        servers.iter().find(|(i, _)| *i == image).map(|(_, p)| *p)
    }
}
