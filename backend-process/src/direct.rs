//! The direct spawn, parent side: everything that allocates is prepared before `clone3`
//! (descriptors, id maps, rlimits, argv, the seccomp program); the child then runs the
//! confinement sequence ([`crate::child`]) and executes the embedded image from a sealed
//! memfd. The parent waits on a close-on-exec status pipe: EOF means the image is
//! running, a `(step, errno)` record names the step that failed.

use std::ffi::{CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ceilings::server_rlimit_values;
use crate::cell::{Prepared, ProcessCell};
use crate::child::{Plan, child_main};
use crate::error::{Error, Result, host};
use crate::fork_protocol::CloneArgs;
use crate::host::{self, high_fd, host_support};
use crate::image::image_fd;
use crate::limits::rlimit_values;
use crate::seccomp::Role;
use crate::spec::SpawnSpec;
use crate::step::{RECORD_LEN, Step, decode_record, record};

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

/// Where the `n`th directly spawned cell of process `pid` takes its host uid in the span. Not
/// `n` alone: every process counts its cells from 0, so the first cells of two supervisors (two
/// `cell run`s at once, or one just after another whose cell is still exiting) would share a uid,
/// and with it `RLIMIT_NPROC`: the second cell's `exec` then fails with EAGAIN. Offset by the
/// process id (times a prime that does not divide the span), cells of processes whose ids are
/// close take uids far apart.
fn cell_uid_offset(pid: u32, n: u64) -> u32 {
    ((u64::from(pid) * 4093 + n) % HOST_UID_SPAN) as u32
}

/// How long the confinement sequence may take before the spawn is abandoned.
const SPAWN_TIMEOUT_MS: c_int = 10_000;

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the fork server keeps, inside its own user namespace only: new namespaces for
/// each cell (`CAP_SYS_ADMIN`), a uid/gid of its own for each (`CAP_SETUID`,
/// `CAP_SETGID`), and the right to empty each cell's bounding set (`CAP_SETPCAP`); its
/// bounding set holds nothing else.
const SERVER_CAPS: [u32; 4] = [6, 7, 8, 21];

/// The id maps of a rootful fork server, which the parent writes when the child asks.
struct MapsByParent<'a> {
    written: OwnedFd,
    uid_map: &'a str,
    gid_map: &'a str,
}

/// Clones a child of the supervisor and confines it step by step, then executes the
/// image (the cell itself, or the fork server).
pub(crate) fn spawn(spec: &SpawnSpec, prepared: Prepared) -> Result<ProcessCell> {
    let hs = host_support();
    let Prepared {
        n,
        mut cgroups,
        layers,
        limits,
    } = prepared;
    let v1_tasks = cgroups
        .v1_self_join_files()
        .map_err(host("open a v1 cgroup's tasks"))?
        .into_iter()
        .map(high_fd)
        .collect::<io::Result<Vec<_>>>()
        .map_err(host("open a v1 cgroup's tasks"))?;
    let landlock = host::landlock_ruleset();
    let image = image_fd(spec.image)?;
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
        let id = HOST_UID_BASE + cell_uid_offset(std::process::id(), n);
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

    let mut args: Vec<CString> = vec![CString::new("cell").expect("static")];
    for a in &spec.args {
        args.push(
            CString::new(a.as_str()).map_err(|_| Error::InvalidLimit("NUL in argument".into()))?,
        );
    }
    let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const c_char; 1] = [std::ptr::null()];

    let mut v1_tasks_fds = [-1; 3];
    for (slot, fd) in v1_tasks_fds.iter_mut().zip(&v1_tasks) {
        *slot = fd.as_raw_fd();
    }
    #[cfg(test)]
    let fault = spec.fault.map_or(0, Step::code);
    #[cfg(not(test))]
    let fault = 0;
    let plan = Plan {
        chan: child_chan.as_raw_fd(),
        image,
        status: status_w.as_raw_fd(),
        v1_tasks: v1_tasks_fds,
        netns: netns.unwrap_or(-1),
        mountpoint: &mountpoint,
        rootful: hs.rootful,
        host_uid,
        host_gid,
        uid_map: uid_map.as_bytes(),
        gid_map: gid_map.as_bytes(),
        map_by_parent,
        maps_written: maps_r.as_raw_fd(),
        rlimits: match spec.role {
            Role::Cell => rlimit_values(&spec.limits),
            Role::ForkServer => server_rlimit_values(),
        },
        landlock: landlock.unwrap_or(-1),
        seccomp: hs.seccomp.then(|| host::seccomp_program(spec.role)),
        keep_caps: match spec.role {
            Role::Cell => &[],
            Role::ForkServer => &SERVER_CAPS,
        },
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        fault,
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
    let clone_args = CloneArgs {
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
            &raw const clone_args,
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
    let maps = map_by_parent.then_some(MapsByParent {
        written: maps_w,
        uid_map: &uid_map,
        gid_map: &gid_map,
    });
    await_exec(&mut cell, &status_r, maps.as_ref())?;
    Ok(cell)
}

/// Waits until the child has executed its image (EOF on the status pipe), writing its
/// id maps when it asks for them; a `(step, errno)` record fails the spawn naming the
/// step.
fn await_exec(cell: &mut ProcessCell, status: &OwnedFd, maps: Option<&MapsByParent>) -> Result<()> {
    let pid = cell.pid();
    let mut report = [0u8; RECORD_LEN];
    let mut got = 0;
    while got < report.len() {
        let mut pfd = libc::pollfd {
            fd: status.as_raw_fd(),
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
                status.as_raw_fd(),
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
        if let Some(maps) = maps
            && got == report.len()
            && report == record(Step::WriteIdMaps, 0)
        {
            got = 0;
            write_maps(pid, maps).map_err(host("writing the fork server's id maps"))?;
        }
    }
    match got {
        0 => Ok(()),
        RECORD_LEN => {
            let (code, errno) = decode_record(report);
            let _ = cell.wait();
            let step = Step::from_code(code)
                .ok_or_else(|| Error::ChildLost(format!("unknown step {code} in status report")))?;
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

/// Writes a child's `uid_map`, `setgroups` = deny and `gid_map` (as root, so a range),
/// then tells it with a byte on the sync pipe.
fn write_maps(pid: i32, maps: &MapsByParent) -> io::Result<()> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    std::fs::write(dir.join("uid_map"), maps.uid_map)?;
    std::fs::write(dir.join("setgroups"), "deny")?;
    std::fs::write(dir.join("gid_map"), maps.gid_map)?;
    // SAFETY: one byte from a valid buffer to our pipe end.
    match unsafe { libc::write(maps.written.as_raw_fd(), [1u8].as_ptr().cast(), 1) } {
        1 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

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

#[cfg(test)]
mod uid_tests {
    use super::*;

    #[test]
    fn cells_of_neighbouring_processes_take_different_uids() {
        // Processes started one after another get neighbouring ids; each spawns a few cells.
        let mut seen = std::collections::HashSet::new();
        for pid in 4_000..4_100u32 {
            for n in 0..8 {
                assert!(seen.insert(cell_uid_offset(pid, n)), "pid {pid}, cell {n}");
            }
        }
    }
}
