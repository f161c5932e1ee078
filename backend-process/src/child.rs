//! The child of a direct spawn: the confinement sequence in its order, from the
//! descriptors the parent prepared to the exec of the guest image. Each step is a
//! function of [`crate::confine`], shared with the fork server's forked cells.

use std::ffi::{CStr, c_char, c_int};

use crate::confine as step;
use crate::fork_protocol::RLIMITS;
use crate::step::Reporter;

/// Where the child keeps what it needs, laid out first thing (every source fd is at 16
/// or above, so no slot overwrites a source).
const FD_CHANNEL: c_int = 3;
const FD_IMAGE: c_int = 4;
const FD_STATUS: c_int = 5;
const FD_MAPS_WRITTEN: c_int = 6;
const FD_NETNS: c_int = 7;
const FD_LANDLOCK: c_int = 8;
const FD_V1_TASKS: [c_int; 3] = [9, 10, 11];

/// Everything the child needs, prepared by the parent: raw descriptors (-1: none) and
/// references into memory the parent keeps alive until the child has exec'd or failed.
pub(crate) struct Plan<'a> {
    pub chan: c_int,
    pub image: c_int,
    pub status: c_int,
    pub v1_tasks: [c_int; 3],
    pub netns: c_int,
    pub mountpoint: &'a CStr,
    pub rootful: bool,
    pub host_uid: u32,
    pub host_gid: u32,
    pub uid_map: &'a [u8],
    pub gid_map: &'a [u8],
    /// Rootful fork server: the parent writes the id maps (a range), asked for through
    /// the status pipe; the child waits on `maps_written` until it has.
    pub map_by_parent: bool,
    pub maps_written: c_int,
    /// In [`RLIMITS`] order.
    pub rlimits: [u64; 7],
    pub landlock: c_int,
    pub seccomp: Option<&'a [libc::sock_filter]>,
    /// Capabilities kept inside the child's user namespace (ambient, so they survive
    /// the exec): none for a cell.
    pub keep_caps: &'a [u32],
    pub argv: *const *const c_char,
    pub envp: *const *const c_char,
    /// The code of a step made to fail (tests only; 0: none).
    pub fault: u8,
}

/// Child side of the spawn. Async-signal-safe: raw system calls only, no allocation, no
/// locks, no unwinding. Never returns: it executes the image or reports the failed step.
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
pub(crate) unsafe fn child_main(p: &Plan) -> ! {
    let layout = [
        (p.chan, FD_CHANNEL, 0),
        (p.image, FD_IMAGE, libc::O_CLOEXEC),
        (p.status, FD_STATUS, libc::O_CLOEXEC),
        (p.maps_written, FD_MAPS_WRITTEN, libc::O_CLOEXEC),
        (p.netns, FD_NETNS, libc::O_CLOEXEC),
        (p.landlock, FD_LANDLOCK, libc::O_CLOEXEC),
        (p.v1_tasks[0], FD_V1_TASKS[0], libc::O_CLOEXEC),
        (p.v1_tasks[1], FD_V1_TASKS[1], libc::O_CLOEXEC),
        (p.v1_tasks[2], FD_V1_TASKS[2], libc::O_CLOEXEC),
    ];
    let slot = |source: c_int, slot: c_int| if source >= 0 { slot } else { -1 };
    let r = Reporter {
        status_fd: p.status,
        fault: p.fault,
    };
    // SAFETY: we are the freshly cloned child (the caller's contract); every step makes
    // raw system calls on descriptors and memory the parent prepared.
    unsafe {
        step::arrange_fds(r, &layout);
        let r = Reporter {
            status_fd: FD_STATUS,
            ..r
        };
        step::close_fds(r, &[(0, 2), (12, u32::MAX)]);
        arm_parent_death(r);

        let v1 = [0, 1, 2].map(|i| slot(p.v1_tasks[i], FD_V1_TASKS[i]));
        step::join_cgroups(r, &v1);
        step::unshare_cgroup_namespace(r);
        step::join_network_namespace(r, slot(p.netns, FD_NETNS));
        let proc_fd = step::open_proc(r);
        if !p.rootful {
            step::write_id_maps(r, proc_fd, p.uid_map, p.gid_map);
        }
        step::make_mounts_private(r);
        step::mount_empty_root(r, p.mountpoint);
        step::pivot_root(r, p.mountpoint);
        step::detach_old_root(r);
        step::set_hostname(r);
        // Still root on the host (a root supervisor): the fork server's rlimits may rise
        // above the supervisor's (they are the ceilings of its cells').
        step::set_rlimits(r, &RLIMITS, &p.rlimits);
        if p.rootful {
            step::drop_host_ids(r, p.host_uid, p.host_gid);
            step::unshare_user_namespace(r);
            // The id change cleared the parent-death signal: arm it again before waiting.
            arm_parent_death(r);
            if p.map_by_parent {
                step::ask_for_id_maps(r, FD_MAPS_WRITTEN);
            } else {
                step::write_id_maps(r, proc_fd, p.uid_map, p.gid_map);
            }
        }
        libc::close(proc_fd);
        // The bounding set goes first: emptying it needs CAP_SETPCAP, which the next
        // step gives up.
        let keep = p.keep_caps.iter().fold(0u64, |m, c| m | 1 << c);
        step::drop_bounding_set(r, keep);
        step::drop_capabilities(r, p.keep_caps);
        step::new_session(r);
        step::no_new_privs(r);
        step::restrict_landlock(r, slot(p.landlock, FD_LANDLOCK));
        arm_parent_death(r);
        step::close_fds(r, &[(6, u32::MAX)]);
        step::install_seccomp(r, p.seccomp);
        step::exec(r, FD_IMAGE, p.argv, p.envp)
    }
}

/// Arms the parent-death signal, then exits if the parent is already gone: it then held
/// the only reader of the status pipe (every other copy is closed on exec or, in a child
/// being confined, first thing), so the pipe reports an error.
///
/// # Safety
/// Child-only (see [`child_main`]).
unsafe fn arm_parent_death(r: Reporter) {
    // SAFETY: the caller's contract.
    unsafe {
        step::arm_parent_death(r);
        step::exit_if_orphaned(r.status_fd, 0, libc::POLLERR, 126);
    }
}
