//! What a VM host gives up before it runs any guest: once `/dev/kvm` and the page map are open,
//! a VMM needs no file, no network, no privilege, no other process and few system calls. A guest that broke out of
//! KVM into the host's VMM code would find a process that can do little more than its own work.
//!
//! Applied while the host is still single-threaded (its constructor runs before `main` spawns
//! anything), so every thread it starts later inherits all of it.
use std::io;

use rustix::thread::{CapabilitySet, CapabilitySets};

/// The unprivileged user a host runs as when started by root (`nobody`).
const NOBODY: u32 = 65534;

/// The system calls a VM host makes once confined (everything else fails with `EPERM`): KVM's
/// ioctls, memory management, threads and their synchronisation, its sockets (received, never
/// opened), signals to its own threads (the vCPU kick), time, and its own exit. Read off
/// `strace -f` of the hosted conformance suite and the hosting tests, plus the calls of paths
/// those do not take (`mremap` of a large buffer, `write` to standard error, a sleep, an abort).
const SYSCALLS: &[i64] = &[
    // KVM and the descriptors the host holds.
    libc::SYS_ioctl,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ftruncate,
    libc::SYS_memfd_create,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_write,
    libc::SYS_writev,
    // Memory.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mincore,
    libc::SYS_brk,
    // The control and cell sockets.
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_getsockopt,
    // Threads, their synchronisation and the vCPU kick.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_prctl,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // Time, randomness (hash maps), memory size.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_sysinfo,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Which layers took effect, for the host's diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Confined {
    pub user: bool,
    pub landlock: bool,
}

/// Opens what the VMM needs for its life, then drops the rest: an unprivileged user (when
/// root), every capability (bounding set included), `no_new_privs`, not dumpable (no ptrace by
/// other processes of that user), a Landlock domain with no file access, no TCP, no signal or
/// abstract socket outside itself (as far as this kernel supports), and a seccomp allowlist.
pub(crate) fn confine() -> io::Result<Confined> {
    crate::kvm::host().map_err(|e| io::Error::other(e.to_string()))?;
    crate::memory::open_pagemap();
    let mut done = Confined::default();
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    if rustix::process::geteuid().is_root() {
        // Supplementary groups, then group, then user: each step needs the privilege the next
        // one gives up.
        rustix::thread::set_thread_groups(&[])?;
        // A plain numeric id: `nobody` need not exist in /etc/passwd to be used.
        let gid = rustix::process::Gid::from_raw(NOBODY);
        let uid = rustix::process::Uid::from_raw(NOBODY);
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        // Root's bounding set can only be emptied while CAP_SETPCAP is still held.
        drop_bounding_set();
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        done.user = true;
    } else {
        drop_bounding_set();
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    rustix::thread::set_no_new_privs(true)?;
    done.landlock = restrict_landlock();
    install_seccomp()?;
    Ok(done)
}

/// The seccomp filter: [`SYSCALLS`] allowed, any other call `EPERM` (an error the code on that
/// path reports, not a dead host and all its cells).
fn install_seccomp() -> io::Result<()> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let rules = SYSCALLS.iter().map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(io::Error::other)?;
    let program: BpfProgram = filter.try_into().map_err(io::Error::other)?;
    seccompiler::apply_filter(&program).map_err(io::Error::other)
}

/// Empties the capability bounding set (each drop needs CAP_SETPCAP; without it, nothing
/// changes and the empty permitted set below is what counts).
fn drop_bounding_set() {
    for cap in 0..64u32 {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) reads no memory; an unknown cap is EINVAL.
        let _ = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
}

/// The Landlock domain: every file access, TCP bind and connect, and the signal and abstract
/// socket scopes this kernel knows, with no rule granting any of them back.
fn restrict_landlock() -> bool {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, RestrictionStatus, Ruleset, RulesetAttr, RulesetStatus,
        Scope,
    };
    let abi = ABI::V7;
    let status: Result<RestrictionStatus, _> = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self());
    matches!(
        status,
        Ok(RestrictionStatus {
            ruleset: RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced,
            ..
        })
    )
}
