//! The confinement sequence, one function per step, written once: the child of a
//! direct spawn (`child.rs`) and every cell the fork server forks
//! (`guest/src/fork_server.rs`, which includes this file as it includes
//! `fork_protocol.rs`) run these same functions, so the two cannot drift apart.
//!
//! Each step reports its failure in one vocabulary, [`Step`] (`step.rs`, included
//! beside this file on both sides).
//!
//! Everything here runs in a child between `clone3` and the guest's first script: raw,
//! async-signal-safe system calls only, no allocation, no locks, no unwinding. Each
//! step function is therefore `unsafe`: it may only be called in such a child.

#![allow(dead_code)] // each side runs the steps of its own sequence

use core::ffi::{CStr, c_char, c_int};
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use super::step::{RECORD_LEN, Reporter, Step, record};

/// Places each `(source, slot, flags)`: `dup3(source, slot, flags)`, or closes `slot`
/// where `source` is -1. Every source must lie above every slot.
///
/// # Safety
/// Only in a child being confined (single-threaded, never returning to its parent's code).
pub unsafe fn arrange_fds(r: Reporter, layout: &[(c_int, c_int, c_int)]) {
    r.enter(Step::ArrangeFds);
    for &(source, slot, flags) in layout {
        // SAFETY: plain descriptor calls in a child that owns its descriptor table.
        unsafe {
            if source >= 0 {
                r.check(Step::ArrangeFds, libc::dup3(source, slot, flags).into());
            } else {
                libc::close(slot);
            }
        }
    }
}

/// Closes every descriptor in each inclusive range `(first, last)`.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn close_fds(r: Reporter, ranges: &[(u32, u32)]) {
    r.enter(Step::CloseFds);
    for &(first, last) in ranges {
        // SAFETY: close_range on this child's own descriptor table.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        r.check(Step::CloseFds, ret);
    }
}

/// Arms the parent-death signal (`SIGKILL`). Changing ids clears it, so it is armed
/// again after each change.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn arm_parent_death(r: Reporter) {
    r.enter(Step::ParentDeathSignal);
    // SAFETY: a prctl on this process only.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    r.check(Step::ParentDeathSignal, ret.into());
}

/// Exits with `status` when `fd` shows its other end is gone: polled for `events`, any
/// of `gone` in the result (or a failed poll) means the host has let go.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn exit_if_orphaned(fd: c_int, events: i16, gone: i16, status: c_int) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait; _exit ends only this child.
    unsafe {
        let ready = libc::poll(&mut pfd, 1, 0);
        if ready != 0 && (ready < 0 || pfd.revents & gone != 0) {
            libc::_exit(status);
        }
    }
}

/// Joins the cgroup-v1 hierarchies whose `tasks` files are open at `fds` (-1: none): the
/// calling thread moves itself, which is the whole process while it has one thread.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn join_cgroups(r: Reporter, fds: &[c_int]) {
    r.enter(Step::JoinCgroup);
    for &fd in fds.iter().filter(|&&fd| fd >= 0) {
        // SAFETY: one byte from a static buffer to this child's own descriptor.
        let ret = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        r.check(Step::JoinCgroup, ret as i64);
    }
}

/// Enters a new cgroup namespace.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn unshare_cgroup_namespace(r: Reporter) {
    r.enter(Step::UnshareCgroupNamespace);
    // SAFETY: unshare affects only this child.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWCGROUP) };
    r.check(Step::UnshareCgroupNamespace, ret.into());
}

/// Joins the network namespace open at `fd` (-1: the child already has its own).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn join_network_namespace(r: Reporter, fd: c_int) {
    r.enter(Step::JoinNetworkNamespace);
    if fd >= 0 {
        // SAFETY: setns affects only this child.
        let ret = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        r.check(Step::JoinNetworkNamespace, ret.into());
    }
}

/// Opens `/proc/self` (a path descriptor, for writing the id maps later).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn open_proc(r: Reporter) -> c_int {
    r.enter(Step::OpenProc);
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/proc/self".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    r.check(Step::OpenProc, fd.into());
    fd
}

/// Writes `uid_map`, `setgroups` = deny and `gid_map` of the user namespace the child
/// now is in, through `proc_fd` (`/proc/self`).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn write_id_maps(r: Reporter, proc_fd: c_int, uid_map: &[u8], gid_map: &[u8]) {
    r.enter(Step::WriteIdMaps);
    let files: [(&CStr, &[u8]); 3] = [
        (c"uid_map", uid_map),
        (c"setgroups", b"deny"),
        (c"gid_map", gid_map),
    ];
    for (name, data) in files {
        // SAFETY: a static name under a valid directory descriptor, a live buffer.
        unsafe {
            let fd = libc::openat(proc_fd, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, data.as_ptr().cast(), data.len()) != data.len() as isize {
                r.fail(Step::WriteIdMaps);
            }
            libc::close(fd);
        }
    }
}

/// Asks the parent (root outside, so it may map a range) to write the id maps, with
/// the status record `(WriteIdMaps, 0)`, then waits for its byte on `written`. The
/// child holds no copy of that pipe's write end, so a parent that dies ends the wait.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn ask_for_id_maps(r: Reporter, written: c_int) {
    r.enter(Step::WriteIdMaps);
    let request = record(Step::WriteIdMaps, 0);
    let mut done = 0u8;
    // SAFETY: live buffers, this child's own descriptors.
    unsafe {
        if libc::write(r.status_fd, request.as_ptr().cast(), RECORD_LEN) != RECORD_LEN as isize
            || libc::read(written, (&raw mut done).cast(), 1) != 1
        {
            r.fail(Step::WriteIdMaps);
        }
    }
}

/// Makes every mount of the child's mount namespace private.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn make_mounts_private(r: Reporter) {
    r.enter(Step::MakeMountsPrivate);
    // SAFETY: static arguments; affects only this child's mount namespace.
    let ret = unsafe {
        libc::mount(
            core::ptr::null(),
            c"/".as_ptr(),
            core::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            core::ptr::null(),
        )
    };
    r.check(Step::MakeMountsPrivate, ret.into());
}

/// Mounts an empty, read-only `nosuid,nodev,noexec` tmpfs on `mountpoint`.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn mount_empty_root(r: Reporter, mountpoint: &CStr) {
    r.enter(Step::MountRoot);
    // SAFETY: NUL-terminated strings; affects only this child's mount namespace.
    let ret = unsafe {
        libc::mount(
            c"cell".as_ptr(),
            mountpoint.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            c"size=16k,nr_inodes=8,mode=0555".as_ptr().cast(),
        )
    };
    r.check(Step::MountRoot, ret.into());
}

/// Makes the tmpfs on `mountpoint` the root, the old root stacked under it.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn pivot_root(r: Reporter, mountpoint: &CStr) {
    r.enter(Step::PivotRoot);
    // SAFETY: NUL-terminated paths; affects only this child.
    unsafe {
        r.check(Step::PivotRoot, libc::chdir(mountpoint.as_ptr()).into());
        r.check(
            Step::PivotRoot,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
        );
    }
}

/// Detaches the old root, so nothing of the host's file system stays reachable.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn detach_old_root(r: Reporter) {
    r.enter(Step::DetachOldRoot);
    // SAFETY: static paths; affects only this child's mount namespace.
    unsafe {
        r.check(
            Step::DetachOldRoot,
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into(),
        );
        r.check(Step::DetachOldRoot, libc::chdir(c"/".as_ptr()).into());
    }
}

/// Names the child's uts namespace `cell`.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn set_hostname(r: Reporter) {
    r.enter(Step::SetHostname);
    // SAFETY: a static name of the given length.
    let ret = unsafe { libc::sethostname(c"cell".as_ptr(), 4) };
    r.check(Step::SetHostname, ret.into());
}

/// Sets each `resources[i]` to `values[i]` (soft and hard).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn set_rlimits(r: Reporter, resources: &[libc::__rlimit_resource_t], values: &[u64]) {
    r.enter(Step::SetRlimits);
    for (&resource, &value) in resources.iter().zip(values) {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: a valid rlimit for this process.
        let ret = unsafe { libc::setrlimit(resource, &limit) };
        r.check(Step::SetRlimits, ret.into());
    }
}

/// Sets the real, effective and saved uid and gid (raw system calls: glibc's wrappers
/// synchronise with every thread of the parent image, which do not exist here, and
/// would deadlock).
///
/// # Safety
/// As [`arrange_fds`].
unsafe fn set_ids(r: Reporter, step: Step, uid: u32, gid: u32) {
    // SAFETY: raw id changes of this child only.
    unsafe {
        r.check(step, libc::syscall(libc::SYS_setresgid, gid, gid, gid));
        r.check(step, libc::syscall(libc::SYS_setresuid, uid, uid, uid));
    }
}

/// A root child drops its supplementary groups and becomes the cell's host uid and gid
/// (staying dumpable, so `/proc/self` stays its own for the id maps).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn drop_host_ids(r: Reporter, uid: u32, gid: u32) {
    r.enter(Step::DropHostIds);
    // SAFETY: raw id and prctl calls of this child only.
    unsafe {
        r.check(
            Step::DropHostIds,
            libc::syscall(libc::SYS_setgroups, 0, core::ptr::null::<libc::gid_t>()),
        );
        set_ids(r, Step::DropHostIds, uid, gid);
        // Changing ids made the child non-dumpable, which would make /proc/self/* root's.
        r.check(
            Step::DropHostIds,
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0).into(),
        );
    }
}

/// A forked cell takes uid and gid `id` inside the server's user namespace (`None`: it
/// keeps the server's, the only one mapped).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn take_ids(r: Reporter, id: Option<u32>) {
    r.enter(Step::TakeIds);
    if let Some(id) = id {
        // SAFETY: as set_ids.
        unsafe { set_ids(r, Step::TakeIds, id, id) };
    }
}

/// Enters a new user namespace.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn unshare_user_namespace(r: Reporter) {
    r.enter(Step::UnshareUserNamespace);
    // SAFETY: unshare affects only this child.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    r.check(Step::UnshareUserNamespace, ret.into());
}

/// Drops every capability not in `keep` (a bit mask) from the bounding set, so no exec
/// can bring it back; the loop ends at the first capability the kernel does not know.
/// Dropping needs `CAP_SETPCAP`, so this comes before [`drop_capabilities`].
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn drop_bounding_set(r: Reporter, keep: u64) {
    r.enter(Step::DropBoundingSet);
    let mut cap = 0u32;
    // SAFETY: prctls on this child's own capability sets.
    unsafe {
        while libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) >= 0 {
            if keep & 1u64.checked_shl(cap).unwrap_or(0) == 0 {
                r.check(
                    Step::DropBoundingSet,
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0).into(),
                );
            }
            cap += 1;
        }
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

/// Sets the effective, permitted and inheritable capabilities to `keep` (numbers below
/// 32) and makes exactly those ambient, so they survive the exec (none for a cell).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn drop_capabilities(r: Reporter, keep: &[u32]) {
    r.enter(Step::DropCapabilities);
    let mask = keep.iter().fold(0u32, |m, c| m | 1 << c);
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask,
            permitted: mask,
            inheritable: mask,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset and prctls on this child's own capability sets, live buffers.
    unsafe {
        r.check(
            Step::DropCapabilities,
            libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()),
        );
        if keep.is_empty() {
            r.check(
                Step::DropCapabilities,
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                )
                .into(),
            );
        }
        for &cap in keep {
            r.check(
                Step::DropCapabilities,
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0).into(),
            );
        }
    }
}

/// Starts a new session (no controlling terminal).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn new_session(r: Reporter) {
    r.enter(Step::NewSession);
    // SAFETY: setsid affects only this child.
    let ret = unsafe { libc::setsid() };
    r.check(Step::NewSession, ret.into());
}

/// Sets `no_new_privs`.
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn no_new_privs(r: Reporter) {
    r.enter(Step::NoNewPrivs);
    // SAFETY: a prctl on this process only.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    r.check(Step::NoNewPrivs, ret.into());
}

/// Enters the Landlock domain of the ruleset open at `fd` (-1: no Landlock here).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn restrict_landlock(r: Reporter, fd: c_int) {
    r.enter(Step::Landlock);
    if fd >= 0 {
        // SAFETY: restricts only this process.
        let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
        r.check(Step::Landlock, ret);
    }
}

/// Installs the seccomp `filter` (`None`: a kernel without seccomp filters).
///
/// # Safety
/// As [`arrange_fds`].
pub unsafe fn install_seccomp(r: Reporter, filter: Option<&[libc::sock_filter]>) {
    r.enter(Step::Seccomp);
    let Some(filter) = filter else { return };
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prog points to `filter`, alive for the call; the kernel copies it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &raw const prog,
        )
    };
    r.check(Step::Seccomp, ret);
}

/// Executes the image open at `fd`; returns only by failing the step.
///
/// # Safety
/// As [`arrange_fds`]; `argv` and `envp` are NULL-terminated arrays of NUL-terminated
/// strings, alive for the call.
pub unsafe fn exec(
    r: Reporter,
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> ! {
    r.enter(Step::Exec);
    // SAFETY: the caller's contract on argv and envp.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv,
            envp,
            libc::AT_EMPTY_PATH,
        );
    }
    r.fail(Step::Exec)
}

/// Makes a timer on this process's CPU clock that raises `SIGXCPU` once it has used `ms`
/// milliseconds of CPU (0: no limit), counted from [`start_cpu_timer`], which the guest calls
/// when its handshake is answered: a cell's start (the engine it builds, more than a
/// millisecond of CPU in a process just exec'd) is not counted against its limit, as on every
/// backend. Until then `RLIMIT_CPU` and the host's start deadline bound it.
///
/// # Safety
/// In the guest program, before any script runs.
pub unsafe fn arm_cpu_timer(r: Reporter, ms: u64) {
    r.enter(Step::CpuTimer);
    if ms == 0 {
        return;
    }
    // SAFETY: raw timer calls with live arguments; a zeroed sigevent is valid.
    unsafe {
        let mut event: libc::sigevent = core::mem::zeroed();
        event.sigev_notify = libc::SIGEV_SIGNAL;
        event.sigev_signo = libc::SIGXCPU;
        let mut timer: c_int = 0;
        r.check(
            Step::CpuTimer,
            libc::syscall(
                libc::SYS_timer_create,
                libc::CLOCK_PROCESS_CPUTIME_ID,
                &raw mut event,
                &raw mut timer,
            ),
        );
        CPU_TIMER.store(timer, Ordering::Relaxed);
        CPU_TIMER_MS.store(ms, Ordering::Relaxed);
    }
}

/// The timer [`arm_cpu_timer`] made (-1: none) and its limit, for [`start_cpu_timer`].
static CPU_TIMER: AtomicI32 = AtomicI32::new(-1);
static CPU_TIMER_MS: AtomicU64 = AtomicU64::new(0);

/// The timer setting that fires once `ms` more milliseconds of CPU are used.
fn cpu_timer_spec(ms: u64) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        },
    }
}

/// Starts the timer [`arm_cpu_timer`] made: it fires once the process has used its limit of
/// CPU from now. A no-op without a limit. Should `timer_settime` fail, the cell runs without
/// its timer and `RLIMIT_CPU` (a second past the limit) stops it: still `limit_cpu`.
pub fn start_cpu_timer() {
    let timer = CPU_TIMER.load(Ordering::Relaxed);
    if timer < 0 {
        return;
    }
    let spec = cpu_timer_spec(CPU_TIMER_MS.load(Ordering::Relaxed));
    // SAFETY: timer_settime on the timer this process created, with a spec we own.
    unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            timer,
            0,
            &raw const spec,
            core::ptr::null_mut::<libc::itimerspec>(),
        );
    }
}
