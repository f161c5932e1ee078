//! The seccomp-bpf allowlist of a cell, compiled to a binary-search tree.
//!
//! Layout: check the architecture (anything but x86_64, i.e. the i386 entry point,
//! kills the process), kill any x32 syscall number, then a binary search over the
//! sorted allowlist; each leaf returns its own action. Everything not listed returns
//! `EPERM`. The tree keeps the install and per-syscall cost low (about log2(n)
//! comparisons instead of a linear scan).

use libc::sock_filter;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// The fd the image is executed from (set up by the spawner, close-on-exec).
pub(crate) const IMAGE_FD: u32 = 4;

/// Namespace flags a guest may never pass to `clone`.
pub(crate) const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Allow,
    Errno(u16),
    /// `clone` without any namespace flag.
    CloneWithoutNamespaces,
    /// `execveat(IMAGE_FD, "", .., AT_EMPTY_PATH)`: the single exec of the cell image.
    /// After that exec the fd is closed and the guest can create no fd at all, so no
    /// further exec can succeed.
    ExecImageOnly,
}

/// System calls a cell may make. The guest runtime needs memory management, the
/// channel, time, randomness and its own exit; the rest is libc start-up.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getsid,
    libc::SYS_capget,
    libc::SYS_clock_gettime,
    // The guest's CPU-time limit: a timer on its own CPU clock, armed before any script.
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_arch_prctl,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_pause,
    libc::SYS_wait4,
    libc::SYS_waitid,
    // Signals stay inside the cell's own pid namespace.
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
];

/// What the fork server needs beyond a cell: it forks cells with `clone3` (namespace
/// flags, `CLONE_PARENT`, `CLONE_PIDFD`) and makes their channels (`socketpair`), and
/// each forked child takes its own uid/gid, drops its capabilities,
/// lowers its rlimits, starts a session, arranges its fds and installs the cell filter.
/// That cell filter stacks on this one and refuses all of these again.
const FORK_SERVER_EXTRA: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_capset,
    libc::SYS_prctl,
    libc::SYS_setsid,
    libc::SYS_seccomp,
    libc::SYS_close_range,
    libc::SYS_dup3,
    libc::SYS_socketpair,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
];

/// Who a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Cell,
    ForkServer,
}

fn rules(role: Role) -> Vec<(u32, Rule)> {
    let mut rules: Vec<(u32, Rule)> = Vec::new();
    if role == Role::ForkServer {
        rules.extend(FORK_SERVER_EXTRA.iter().map(|&nr| (nr as u32, Rule::Allow)));
    }
    rules.extend(ALLOWED.iter().map(|&nr| (nr as u32, Rule::Allow)));
    rules.push((libc::SYS_clone as u32, Rule::CloneWithoutNamespaces));
    rules.push((libc::SYS_execveat as u32, Rule::ExecImageOnly));
    // glibc falls back to clone when clone3 is "not implemented"; clone3 flags live
    // in memory that seccomp cannot inspect.
    rules.push((libc::SYS_clone3 as u32, Rule::Errno(libc::ENOSYS as u16)));
    // Stable sort + dedup keeps the first rule of a number: the fork server's allow.
    rules.sort_by_key(|r| r.0);
    rules.dedup_by_key(|r| r.0);
    rules
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

fn leaf(rule: Rule) -> Vec<sock_filter> {
    match rule {
        Rule::Allow => vec![stmt(BPF_RET_K, RET_ALLOW)],
        Rule::Errno(e) => vec![stmt(BPF_RET_K, errno(e as i32))],
        Rule::CloneWithoutNamespaces => vec![
            stmt(BPF_LD_W_ABS, off_arg_lo(0)),
            jump(BPF_JSET_K, NAMESPACE_FLAGS, 1, 0),
            stmt(BPF_RET_K, RET_ALLOW),
            stmt(BPF_RET_K, errno(libc::EPERM)),
        ],
        Rule::ExecImageOnly => vec![
            stmt(BPF_LD_W_ABS, off_arg_lo(0)),
            jump(BPF_JEQ_K, IMAGE_FD, 0, 3),
            stmt(BPF_LD_W_ABS, off_arg_lo(4)),
            jump(BPF_JEQ_K, libc::AT_EMPTY_PATH as u32, 0, 1),
            stmt(BPF_RET_K, RET_ALLOW),
            stmt(BPF_RET_K, errno(libc::EPERM)),
        ],
    }
}

/// Emits the search over `rules` (sorted). The syscall number is in the accumulator
/// on entry; every path ends in a return.
fn tree(rules: &[(u32, Rule)]) -> Vec<sock_filter> {
    if rules.len() <= 3 {
        let mut code = Vec::new();
        for &(nr, rule) in rules {
            let body = leaf(rule);
            code.push(jump(BPF_JEQ_K, nr, 0, body.len() as u8));
            code.extend(body);
        }
        code.push(stmt(BPF_RET_K, errno(libc::EPERM)));
        return code;
    }
    let mid = rules.len() / 2;
    let left = tree(&rules[..mid]);
    let right = tree(&rules[mid..]);
    let mut code = Vec::with_capacity(2 + left.len() + right.len());
    // nr >= pivot: fall into the unconditional jump over the left half.
    code.push(jump(BPF_JGE_K, rules[mid].0, 0, 1));
    code.push(stmt(BPF_JA, left.len() as u32));
    code.extend(left);
    code.extend(right);
    code
}

/// The complete filter program for `role`.
pub(crate) fn program(role: Role) -> Vec<sock_filter> {
    let mut code = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ];
    code.extend(tree(&rules(role)));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the subset we emit, to check the program
    /// against the rule table without a kernel.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    let o = ins.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                BPF_JEQ_K => pc += if acc == ins.k { ins.jt } else { ins.jf } as usize,
                BPF_JGE_K => pc += if acc >= ins.k { ins.jt } else { ins.jf } as usize,
                BPF_JSET_K => pc += if acc & ins.k != 0 { ins.jt } else { ins.jf } as usize,
                BPF_JA => pc += ins.k as usize,
                BPF_RET_K => return ins.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn every_syscall_number_gets_the_action_of_its_rule() {
        let prog = program(Role::Cell);
        let table = rules(Role::Cell);
        for nr in 0..600u32 {
            let got = run(&prog, AUDIT_ARCH_X86_64, nr, [0; 6]);
            let want = match table.iter().find(|r| r.0 == nr).map(|r| r.1) {
                Some(Rule::Allow) | Some(Rule::CloneWithoutNamespaces) => RET_ALLOW,
                Some(Rule::Errno(e)) => errno(e as i32),
                Some(Rule::ExecImageOnly) | None => errno(libc::EPERM),
            };
            assert_eq!(got, want, "syscall {nr}");
        }
    }

    #[test]
    fn foreign_architectures_and_x32_are_killed() {
        let prog = program(Role::Cell);
        assert_eq!(run(&prog, 0x4000_0003, 20, [0; 6]), RET_KILL_PROCESS); // i386
        let x32_getpid = X32_SYSCALL_BIT | libc::SYS_getpid as u32;
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, x32_getpid, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn clone_with_a_namespace_flag_is_refused() {
        let prog = program(Role::Cell);
        let nr = libc::SYS_clone as u32;
        let fork_flags =
            (libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, nr, [fork_flags, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
        ] {
            let flags = fork_flags | flag as u64;
            assert_eq!(
                run(&prog, AUDIT_ARCH_X86_64, nr, [flags, 0, 0, 0, 0, 0]),
                errno(libc::EPERM)
            );
        }
        let clone3 = libc::SYS_clone3 as u32;
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, clone3, [0; 6]),
            errno(libc::ENOSYS)
        );
    }

    #[test]
    fn only_the_image_fd_may_be_executed() {
        let prog = program(Role::Cell);
        let nr = libc::SYS_execveat as u32;
        let empty = libc::AT_EMPTY_PATH as u64;
        assert_eq!(
            run(
                &prog,
                AUDIT_ARCH_X86_64,
                nr,
                [IMAGE_FD as u64, 0, 0, 0, empty, 0]
            ),
            RET_ALLOW
        );
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, nr, [3, 0, 0, 0, empty, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            run(
                &prog,
                AUDIT_ARCH_X86_64,
                nr,
                [IMAGE_FD as u64, 0, 0, 0, 0, 0]
            ),
            errno(libc::EPERM)
        );
        let execve = libc::SYS_execve as u32;
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, execve, [0; 6]),
            errno(libc::EPERM)
        );
    }

    #[test]
    fn denied_calls_named_by_the_issue_are_not_allowed() {
        let prog = program(Role::Cell);
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_open,
            libc::SYS_execve,
            libc::SYS_seccomp,
            libc::SYS_prctl,
        ] {
            assert_eq!(
                run(&prog, AUDIT_ARCH_X86_64, nr as u32, [0; 6]),
                errno(libc::EPERM),
                "syscall {nr}"
            );
        }
    }

    #[test]
    fn the_fork_server_filter_adds_only_its_extras() {
        let cell = program(Role::Cell);
        let server = program(Role::ForkServer);
        for nr in 0..600u32 {
            let c = run(&cell, AUDIT_ARCH_X86_64, nr, [0; 6]);
            let s = run(&server, AUDIT_ARCH_X86_64, nr, [0; 6]);
            if FORK_SERVER_EXTRA.contains(&(nr as i64)) {
                assert_eq!(s, RET_ALLOW, "syscall {nr}");
                assert_ne!(c, RET_ALLOW, "syscall {nr}");
            } else {
                assert_eq!(s, c, "syscall {nr}");
            }
        }
    }
}
