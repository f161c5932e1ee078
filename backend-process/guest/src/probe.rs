//! Test-only escape probe. It runs under exactly the confinement of a real cell and
//! attempts one forbidden thing, named by argv[1], then reports what the kernel said
//! on the channel as one text line ("errno N", "ok ...", ...). It is embedded by the
//! backend's unit tests only; the library never contains it, no script can reach it.
#![cfg_attr(not(test), no_main)]
// The unit tests leave out `main`, so most of the program is unused in them; the
// program build checks these lints.
#![cfg_attr(test, allow(dead_code, unused_imports))]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod fork_server;
mod last_words;

use core::ffi::CStr;

const CHANNEL: i32 = 3;

fn say(text: &str) {
    let bytes = text.as_bytes();
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: valid buffer range.
        let n = unsafe { libc::write(CHANNEL, bytes[off..].as_ptr().cast(), bytes.len() - off) };
        if n <= 0 {
            return;
        }
        off += n as usize;
    }
}

fn errno() -> i32 {
    // SAFETY: errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

/// Reports the outcome of a raw syscall return value.
fn outcome(ret: i64) -> String {
    if ret < 0 {
        format!("errno {}\n", errno())
    } else {
        format!("ok {ret}\n")
    }
}

fn probe(name: &str) {
    // SAFETY: (the whole function) raw syscalls with valid, live arguments; the probe's
    // purpose is to attempt them and report the result.
    unsafe {
        match name {
            "env" => {
                let mut n = 0;
                let mut p = environ_ptr();
                while !p.is_null() && !(*p).is_null() {
                    n += 1;
                    p = p.add(1);
                }
                say(&format!("ok {n}\n"));
            }
            "ids" => {
                let mut hdr = CapHeader {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let mut data = [CapData::default(); 2];
                let r = libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr());
                say(&format!(
                    "uid {} gid {} pid {} sid {} capget {} eff {:x}{:x} perm {:x}{:x}\n",
                    libc::getuid(),
                    libc::getgid(),
                    libc::getpid(),
                    libc::getsid(0),
                    r,
                    data[1].effective,
                    data[0].effective,
                    data[1].permitted,
                    data[0].permitted,
                ));
            }
            "open_read" => {
                let r = libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY);
                say(&outcome(r as i64));
            }
            "open_write" => {
                let r = libc::open(
                    c"/cell-escape".as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o644,
                );
                say(&outcome(r as i64));
            }
            "exec" => {
                let argv = [c"sh".as_ptr(), core::ptr::null()];
                let envp = [core::ptr::null::<libc::c_char>()];
                let a = libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr());
                let ea = errno();
                // fd 4 carried the image before exec and is close-on-exec.
                let b = libc::syscall(
                    libc::SYS_execveat,
                    4,
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                let eb = errno();
                let c = libc::syscall(
                    libc::SYS_execveat,
                    CHANNEL,
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                let ec = errno();
                say(&format!(
                    "execve {a} {ea} execveat4 {b} {eb} execveat3 {c} {ec}\n"
                ));
            }
            "fork_bomb" => {
                let mut count = 0u32;
                loop {
                    let pid = libc::fork();
                    if pid == 0 {
                        loop {
                            libc::pause();
                        }
                    }
                    if pid < 0 {
                        say(&format!("errno {} after {count}\n", errno()));
                        break;
                    }
                    count += 1;
                    if count >= 100_000 {
                        say("unbounded\n");
                        break;
                    }
                }
                loop {
                    libc::pause();
                }
            }
            "grandchildren" => {
                let child = libc::fork();
                if child == 0 {
                    let grandchild = libc::fork();
                    if grandchild == 0 {
                        loop {
                            libc::pause();
                        }
                    }
                    loop {
                        libc::pause();
                    }
                }
                say(&outcome(child as i64));
                loop {
                    libc::pause();
                }
            }
            "socket_inet" => say(&outcome(
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64
            )),
            "socket_unix" => say(&outcome(
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64
            )),
            "socketpair" => {
                let mut fds = [0i32; 2];
                say(&outcome(
                    libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) as i64,
                ))
            }
            "connect" => {
                // Reuse the channel fd: connect() itself must be refused.
                let mut addr: libc::sockaddr_in = core::mem::zeroed();
                addr.sin_family = libc::AF_INET as u16;
                addr.sin_port = 80u16.to_be();
                addr.sin_addr.s_addr = u32::from_be_bytes([1, 1, 1, 1]).to_be();
                let r = libc::connect(
                    CHANNEL,
                    (&raw const addr).cast(),
                    core::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                say(&outcome(r as i64));
            }
            "ptrace" => say(&outcome(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0))),
            "mount" => {
                let r = libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    core::ptr::null(),
                );
                say(&outcome(r as i64));
            }
            "unshare" => say(&outcome(libc::unshare(libc::CLONE_NEWUSER) as i64)),
            "setns" => say(&outcome(libc::setns(CHANNEL, 0) as i64)),
            "clone_newuser" => {
                let r = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64,
                    0,
                    0,
                    0,
                    0,
                );
                if r == 0 {
                    libc::_exit(0);
                }
                say(&outcome(r));
            }
            "clone3" => {
                let args = [0u64; 11];
                let r = libc::syscall(libc::SYS_clone3, args.as_ptr(), 88usize);
                if r == 0 {
                    libc::_exit(0);
                }
                say(&outcome(r));
            }
            "io_uring" => {
                let mut params = [0u8; 120];
                say(&outcome(libc::syscall(
                    libc::SYS_io_uring_setup,
                    4,
                    params.as_mut_ptr(),
                )))
            }
            "bpf" => say(&outcome(libc::syscall(libc::SYS_bpf, 0, 0, 0))),
            "userfaultfd" => say(&outcome(libc::syscall(libc::SYS_userfaultfd, 0))),
            "keyctl" => say(&outcome(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0))),
            "perf_event_open" => say(&outcome(libc::syscall(
                libc::SYS_perf_event_open,
                0,
                0,
                -1,
                -1,
                0,
            ))),
            "i386" => {
                say("trying\n");
                let mut ret: i64 = 20; // getpid in the i386 table
                core::arch::asm!("int 0x80", inout("rax") ret, options(nostack));
                say(&format!("survived {ret}\n"));
            }
            "x32" => {
                say("trying\n");
                let r = libc::syscall(0x4000_0000 | libc::SYS_getpid);
                say(&format!("survived {r} {}\n", errno()));
            }
            "tiocsti" => {
                let c = b'x';
                let a = libc::ioctl(CHANNEL, libc::TIOCSTI, &c);
                let ea = errno();
                let b = libc::ioctl(0, libc::TIOCSTI, &c);
                let eb = errno();
                say(&format!("fd3 {a} {ea} fd0 {b} {eb}\n"));
            }
            "memory" => {
                // Touch 1 MiB at a time, reporting each MiB that really got backed.
                let mut mib = 0u64;
                loop {
                    let p = libc::mmap(
                        core::ptr::null_mut(),
                        1 << 20,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        say(&format!("errno {} after {mib}\n", errno()));
                        break;
                    }
                    core::ptr::write_bytes(p.cast::<u8>(), 0xa5, 1 << 20);
                    mib += 1;
                    say("+");
                    if mib > 1 << 16 {
                        say("unbounded\n");
                        break;
                    }
                }
            }
            "cpu" => {
                say("spinning\n");
                let mut x = 0u64;
                loop {
                    x = core::hint::black_box(x.wrapping_add(1));
                }
            }
            "fds" => {
                let mut open = Vec::new();
                for fd in 0..4096 {
                    let mut p = libc::pollfd {
                        fd,
                        events: 0,
                        revents: 0,
                    };
                    if libc::poll(&mut p, 1, 0) >= 0 && p.revents & libc::POLLNVAL == 0 {
                        open.push(fd);
                    }
                }
                say(&format!("open {open:?}\n"));
            }
            "sleep" => {
                say("ok\n");
                loop {
                    libc::pause();
                }
            }
            "crash_mid_frame" => {
                // A length prefix announcing 100 bytes, 3 of them sent, then a fault.
                say("\x64\x00\x00\x00abc");
                core::ptr::write_volatile(core::ptr::null_mut::<u8>(), 1);
            }
            "huge_frame" => {
                // A length prefix of 4 GiB - 1: the host must refuse it before allocating.
                say("\u{ff}");
                let rest = [0xffu8; 3];
                libc::write(CHANNEL, rest.as_ptr().cast(), 3);
                loop {
                    libc::pause();
                }
            }
            "panic" => {
                // A panic in a cell, reported as the guest program reports one.
                last_words::install();
                let n = core::hint::black_box(7);
                panic!("probe panic requested ({n})");
            }
            "live_last_words" => {
                // A panic record's head from a cell that goes on living.
                say("PNC!\x04\x00oops");
                loop {
                    libc::pause();
                }
            }
            "silent" => loop {
                libc::pause();
            },
            other => say(&format!("unknown probe {other}\n")),
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

unsafe extern "C" {
    static environ: *const *const libc::c_char;
}

fn environ_ptr() -> *const *const libc::c_char {
    // SAFETY: reading the process-global environ pointer (single-threaded probe).
    unsafe { environ }
}

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: i32, argv: *const *const libc::c_char) -> i32 {
    let mut args: Vec<String> = (1..argc as usize)
        // SAFETY: the kernel passes argc valid NUL-terminated strings in argv.
        .map(|i| unsafe { CStr::from_ptr(*argv.add(i)) })
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.first().map(String::as_str) == Some("--fork-server") {
        // Probes run in forked cells exactly as they do in directly spawned ones.
        let cell = fork_server::serve(fork_server::Hooks {
            prewarm: || {},
            rehearse: || {},
            faults: true,
        });
        args = cell.args;
        // The guest's last start-up step, so a test can make it fail here too.
        // SAFETY: nothing has run yet; no limit (0) arms no timer.
        unsafe { fork_server::confine::arm_cpu_timer(cell.reporter, 0) };
    }
    let Some(name) = args.first() else {
        say("missing probe name\n");
        return 2;
    };
    probe(name);
    0
}
