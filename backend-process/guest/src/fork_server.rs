//! Fork-server mode (`argv[1] == "--fork-server"`): the guest program, already confined
//! by the backend (user namespace, empty root, Landlock, seccomp, ...), forks the
//! processes of cells. It never runs a script itself.
//!
//! Each cell process is created by `clone3` in new pid, mount, ipc and uts namespaces
//! and with `CLONE_PARENT`, so the supervisor — not this server — is its parent: it
//! reaps it, gets its exit status, and the child's parent-death signal follows the
//! supervisor. Before anything else the child takes a uid and gid of its own (where the
//! server's namespace maps more than one), drops every capability, starts a new
//! session, keeps only its channel (fd 3), empties its capability bounding set and
//! installs the cell's seccomp filter (stacked on the server's, it refuses everything the
//! server needed beyond a cell). Then it waits for the host to place it in its cgroups,
//! rehearses a cell life there (so its pages are charged to the cell), and waits for the
//! go record, which carries the cell's rlimits (applied at once) and arguments.
//!
//! The server forks only when asked, and answers with the child's pidfd and the host's
//! end of its channel: no child of the server is ever outside the host's hands (the
//! host's keeper thread keeps spares ahead instead).

#[path = "../../src/fork_protocol.rs"]
pub mod fork_protocol;

#[path = "../../src/confine.rs"]
pub mod confine;

#[path = "../../src/step.rs"]
pub mod step;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use fork_protocol::{
    CloneArgs, ForkRequest, MAX_MESSAGE, PLACED, RLIMITS, Reply, decode_setup, is_fork_request,
    recv_message, send_message,
};
use step::{Reporter, Step};

/// The control socket the backend leaves at fd 3.
const CONTROL: i32 = 3;
/// Where a cell's channel ends up (the cell program's `CHANNEL`).
const CHANNEL: i32 = 3;
/// The server's uid and gid in its user namespace (the backend's `CELL_UID`).
const CELL_ID: u32 = 1000;

fn errno() -> i32 {
    // SAFETY: errno is thread-local and always valid.
    unsafe { *libc::__errno_location() }
}

/// What the program does ahead of its cells.
#[derive(Clone, Copy)]
pub struct Hooks {
    /// Once, in the server: work every cell would repeat, shared copy-on-write.
    pub prewarm: fn(),
    /// In each spare, confined, before it waits for its go record: touch what the
    /// cell's first frames will touch, so they do not fault it in on the clock.
    pub rehearse: fn(),
    /// Whether the host may make every forked cell fail a confinement step (the setup's
    /// fault injection): only the test probe allows it.
    pub faults: bool,
}

/// A forked cell, confined and given its go record.
pub struct Cell {
    /// The arguments the host gave this cell.
    pub args: Vec<String>,
    /// How the cell reports a failed step of the rest of its start.
    pub reporter: Reporter,
}

/// A cell process forked ahead, waiting for its go record.
struct Spare {
    pidfd: OwnedFd,
    /// The host's end of the cell's channel.
    channel: OwnedFd,
}

/// What a fork gives each side.
enum Forked {
    Server(Spare),
    /// In the new child, confined and started.
    Cell(Cell),
}

/// Serves fork requests. Returns only in a forked child, confined and placed, with
/// the arguments the host gave for that cell; the server itself exits when the host
/// closes the control channel.
pub fn serve(hooks: Hooks) -> Cell {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let setup = match recv_message(CONTROL, &mut buf) {
        Ok(r) if r.fds.is_empty() => decode_setup(&buf[..r.len]),
        _ => None,
    };
    let Some((ids, fault, filter)) = setup else {
        // SAFETY: plain exit.
        unsafe { libc::_exit(2) }
    };
    let reporter = Reporter {
        status_fd: -1,
        fault: if hooks.faults { fault } else { 0 },
    };
    (hooks.prewarm)();
    let _ = send_message(CONTROL, &Reply { errno: 0 }.encode(), &[]);
    let mut next = 0u32;
    loop {
        let Ok(received) = recv_message(CONTROL, &mut buf) else {
            // SAFETY: the host closed the channel: the server's work is over.
            unsafe { libc::_exit(0) }
        };
        if !received.fds.is_empty() || !is_fork_request(&buf[..received.len]) {
            let _ = send_message(
                CONTROL,
                &Reply {
                    errno: libc::EINVAL,
                }
                .encode(),
                &[],
            );
            continue;
        }
        // Forked only on request, so that every child is at once in the host's hands (its
        // pidfd): the host reaps each one, even one it never starts.
        next = next.wrapping_add(1);
        let ready = match fork_cell(&filter, hooks, reporter, cell_id(ids, next)) {
            Ok(Forked::Cell(cell)) => return cell,
            Ok(Forked::Server(s)) => Ok(s),
            Err(errno) => Err(errno),
        };
        // The child's fds close here, once the host has its copies.
        let _ = match ready {
            Ok(s) => send_message(
                CONTROL,
                &Reply { errno: 0 }.encode(),
                &[s.pidfd.as_raw_fd(), s.channel.as_raw_fd()],
            ),
            Err(errno) => send_message(CONTROL, &Reply { errno }.encode(), &[]),
        };
    }
}

/// The id of the `n`th cell: 1001, 1002, ... within the `ids` mapped from 1000 (the
/// server's own), or 1000 when that is the only one.
fn cell_id(ids: u32, n: u32) -> u32 {
    if ids > 1 {
        CELL_ID + 1 + n % (ids - 1)
    } else {
        CELL_ID
    }
}

/// Forks one cell process; `Err` is the errno of the failed step.
fn fork_cell(
    filter: &[libc::sock_filter],
    hooks: Hooks,
    r: Reporter,
    id: u32,
) -> Result<Forked, i32> {
    let mut pair = [0i32; 2];
    // SAFETY: pair points to two ints.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } < 0
    {
        return Err(errno());
    }
    // SAFETY: socketpair returned two fresh descriptors we own.
    let (host_end, cell_end) = unsafe { (OwnedFd::from_raw_fd(pair[0]), pair[1]) };
    let mut pidfd: i32 = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_PIDFD
            | libc::CLONE_PARENT
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS) as u64,
        pidfd: (&raw mut pidfd) as u64,
        // CLONE_PARENT: the child's exit is signalled to the supervisor as this
        // server's own would be.
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM forks this single-threaded process; the child
    // continues below on its own copy of memory.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: the freshly forked, single-threaded child, which never returns to the
        // server's loop.
        unsafe { confine_cell(r, cell_end, filter, id) };
        wait_until_placed(r);
        (hooks.rehearse)();
        let args = wait_for_go(r);
        return Ok(Forked::Cell(Cell { args, reporter: r }));
    }
    let err = errno();
    // SAFETY: the child's end, which this process no longer needs.
    unsafe { libc::close(cell_end) };
    if pid < 0 {
        return Err(err);
    }
    Ok(Forked::Server(Spare {
        // SAFETY: CLONE_PIDFD stored a fresh descriptor we own.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        channel: host_end,
    }))
}

/// Confines a freshly forked child as cell `id` (its uid and gid), up to its rlimits,
/// with the steps a direct spawn takes ([`confine`]).
///
/// Nothing here can block, and nothing the supervisor's callers read is held: a child
/// whose supervisor is gone (it is the parent, through `CLONE_PARENT`) is killed by its
/// parent-death signal or ends at EOF on its channel.
///
/// # Safety
/// Only in the child, right after the fork.
unsafe fn confine_cell(r: Reporter, channel: i32, filter: &[libc::sock_filter], id: u32) {
    // SAFETY: the caller's contract: each step makes raw system calls on this child's
    // own descriptors and memory.
    unsafe {
        // Ids first: changing them clears the parent-death signal armed next.
        confine::take_ids(r, (id != CELL_ID).then_some(id));
        confine::arm_parent_death(r);
        // The server's own fds start at 0 (it has no stdio), so the channel may have
        // any number but 3 (the server's control socket, replaced here).
        confine::arrange_fds(r, &[(channel, CHANNEL, 0)]);
        confine::close_fds(
            r,
            &[(0, CHANNEL as u32 - 1), (CHANNEL as u32 + 1, u32::MAX)],
        );
        // A supervisor that died before the signal was armed sent none. Then no host end of
        // this cell's channel is left, or soon none: the server's copy goes when its reply
        // fails, one in flight is purged with the supervisor's control socket. Look now, and
        // every later wait is a read of the channel, which ends at EOF.
        confine::exit_if_orphaned(
            CHANNEL,
            libc::POLLRDHUP,
            libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR,
            0,
        );
        // Empty the bounding set (the server kept CAP_SETPCAP for this), so no exec could
        // ever bring a capability back.
        confine::drop_bounding_set(r, 0);
        confine::drop_capabilities(r, &[]);
        confine::new_session(r);
        confine::install_seccomp(r, Some(filter));
    }
}

/// Waits until the host has placed this process in its cgroups; a closed channel ends
/// the process quietly.
fn wait_until_placed(r: Reporter) {
    let mut byte = [0u8; 1];
    read_exact(&mut byte);
    if byte[0] != PLACED {
        r.fail_with(Step::GoRecord, libc::EPROTO);
    }
}

/// Waits for the go record (the host has placed this process in its cgroups),
/// applies its rlimits and returns its arguments.
fn wait_for_go(r: Reporter) -> Vec<String> {
    r.enter(Step::GoRecord);
    let mut len = [0u8; 4];
    read_exact(&mut len);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        r.fail_with(Step::GoRecord, libc::EMSGSIZE);
    }
    let mut record = vec![0u8; len];
    read_exact(&mut record);
    let Some(request) = ForkRequest::decode(&record) else {
        r.fail_with(Step::GoRecord, libc::EPROTO);
    };
    // SAFETY: still the forked child; lowering rlimits needs no privilege.
    unsafe { confine::set_rlimits(r, &RLIMITS, &request.rlimits) };
    request.args
}

/// Reads exactly `buf` from the channel; a closed channel ends the process quietly.
fn read_exact(buf: &mut [u8]) {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the range lies inside `buf`.
        let n = unsafe { libc::read(CHANNEL, buf[off..].as_mut_ptr().cast(), buf.len() - off) };
        if n > 0 {
            off += n as usize;
        } else if n == 0 || errno() != libc::EINTR {
            // SAFETY: plain exit: the host gave this spare up.
            unsafe { libc::_exit(0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_take_the_ids_after_the_servers_in_turn() {
        // One id mapped: every cell shares the server's.
        assert_eq!((1..5).map(|n| cell_id(1, n)).collect::<Vec<_>>(), [1000; 4]);
        // Four mapped (1000..=1003): cells cycle through 1001..=1003, never 1000.
        assert_eq!(
            (1..8).map(|n| cell_id(4, n)).collect::<Vec<_>>(),
            [1002, 1003, 1001, 1002, 1003, 1001, 1002]
        );
        assert!((0..=u32::MAX).step_by(65_537).all(|n| {
            let id = cell_id(65_536, n);
            id > CELL_ID && id < CELL_ID + 65_536
        }));
    }

    #[test]
    fn a_step_reports_the_same_code_on_both_sides() {
        // The guest decodes what the host encodes: the setup message, with its fault byte.
        let filter = [libc::sock_filter {
            code: 6,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        }];
        let msg = fork_protocol::encode_setup(7, Step::SetRlimits.code(), &filter);
        let (ids, fault, decoded) = decode_setup(&msg).unwrap();
        assert_eq!((ids, fault, decoded.len()), (7, Step::SetRlimits.code(), 1));
        assert_eq!(Step::from_code(fault.into()), Some(Step::SetRlimits));
    }
}
