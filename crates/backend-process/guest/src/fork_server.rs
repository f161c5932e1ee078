//! Fork-server mode (`argv[1] == "--fork-server"`): the guest program, already confined
//! by the backend (user namespace, empty root, Landlock, seccomp, ...), forks one
//! child per cell on request. It never runs a script itself.
//!
//! Each child is created by `clone3` in new pid, mount, ipc and uts namespaces and
//! with `CLONE_PARENT`, so the supervisor — not this server — is its parent: it reaps
//! it, gets its exit status, and the child's parent-death signal follows the
//! supervisor. Before returning into the program's `main` logic the child drops every
//! capability, lowers its rlimits, starts a new session, closes every fd but its
//! channel, installs the cell's seccomp filter (stacked on the server's, it refuses
//! everything the server needed beyond a cell) and waits for the host's go byte, sent
//! once the host has placed it in its cgroups.

#[path = "../../src/fork_protocol.rs"]
mod fork_protocol;

use std::os::fd::IntoRawFd;

use fork_protocol::{
    CloneArgs, ForkRequest, MAX_MESSAGE, RLIMITS, Reply, decode_setup, recv_message, send_message,
};

/// The control socket the backend leaves at fd 3.
const CONTROL: i32 = 3;
/// Where a forked cell's channel ends up (the cell program's `CHANNEL`).
const CHANNEL: i32 = 3;

fn errno() -> i32 {
    // SAFETY: errno is thread-local and always valid.
    unsafe { *libc::__errno_location() }
}

fn reply(errno: i32, fd: Option<i32>) {
    // A failed send means the host is gone; the next receive ends the server.
    let _ = send_message(CONTROL, &Reply { errno }.encode(), fd);
}

/// Serves fork requests. Returns only in a forked child, already confined, with the
/// arguments the host gave for that cell; the server itself exits when the host
/// closes the control channel.
pub fn serve(prewarm: fn()) -> Vec<String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let filter = match recv_message(CONTROL, &mut buf) {
        Ok(r) if r.fds.is_empty() => decode_setup(&buf[..r.len]),
        _ => None,
    };
    let Some(filter) = filter else {
        // SAFETY: plain exit.
        unsafe { libc::_exit(2) }
    };
    // Work every cell would repeat, done once here and shared copy-on-write.
    prewarm();
    reply(0, None);
    loop {
        let Ok(mut received) = recv_message(CONTROL, &mut buf) else {
            // SAFETY: the host closed the channel: the server's work is over.
            unsafe { libc::_exit(0) }
        };
        let request = ForkRequest::decode(&buf[..received.len]);
        let (Some(request), Some(channel), None) =
            (request, received.fds.pop(), received.fds.pop())
        else {
            reply(libc::EINVAL, None);
            continue;
        };
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
        // SAFETY: clone3 without CLONE_VM forks this single-threaded process; the
        // child continues below on its own copy of memory.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw const args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            become_cell(channel.into_raw_fd(), &request, &filter);
            return request.args;
        }
        drop(channel);
        if pid < 0 {
            reply(errno(), None);
        } else {
            reply(0, Some(pidfd));
            // SAFETY: the pidfd clone3 gave us; the host has its own copy now.
            unsafe { libc::close(pidfd) };
        }
    }
}

/// Confines a freshly forked child as a cell; exits with `64 + step` if a step fails.
fn become_cell(channel: i32, request: &ForkRequest, filter: &[libc::sock_filter]) {
    fn check(step: i32, ret: i64) {
        if ret < 0 {
            // SAFETY: plain exit of the child.
            unsafe { libc::_exit(64 + step) }
        }
    }
    // SAFETY: raw system calls on descriptors and memory of this process.
    unsafe {
        // The server's own fds start at 0 (it has no stdio), so the channel may have
        // arrived anywhere but 3 (the server's control socket, replaced here).
        check(1, libc::dup3(channel, CHANNEL, 0).into());
        check(
            2,
            libc::syscall(libc::SYS_close_range, 0u32, CHANNEL as u32 - 1, 0u32),
        );
        check(
            2,
            libc::syscall(libc::SYS_close_range, CHANNEL as u32 + 1, u32::MAX, 0u32),
        );
        let mut hdr = [0x2008_0522u32, 0];
        let data = [0u32; 6];
        check(
            3,
            libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()),
        );
        check(
            3,
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
            .into(),
        );
        for (resource, value) in RLIMITS.into_iter().zip(request.rlimits) {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            check(4, libc::setrlimit(resource, &limit).into());
        }
        check(5, libc::setsid().into());
        check(
            6,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into(),
        );
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        check(
            7,
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &raw const prog,
            ),
        );
        // The go byte: the host has placed this process in its cgroups.
        let mut go = 0u8;
        loop {
            let n = libc::read(CHANNEL, (&raw mut go).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            libc::_exit(0);
        }
    }
}
