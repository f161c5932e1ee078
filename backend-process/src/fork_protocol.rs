//! The fork server's control protocol, shared word for word by the host
//! (`fork_server.rs`) and the guest program (`guest/src/fork_server.rs` includes this
//! file), so the two sides cannot drift apart.
//!
//! The control channel is a `SOCK_SEQPACKET` socketpair: one message per record.
//!
//! * host → server, once: [`encode_setup`], how many ids its user namespace maps (its
//!   cells take uid/gid 1001, 1002, ... in turn when it maps more than one) and the
//!   seccomp filter every forked cell installs before it runs anything;
//! * server → host: a [`Reply`] (errno 0 = ready);
//! * host → server, per cell: [`FORK_REQUEST`];
//! * server → host: a [`Reply`], and when its errno is 0 the new process's pidfd and
//!   the host's end of its channel (a stream socketpair), as `SCM_RIGHTS`.
//!
//! Then, on the cell's channel, the host sends [`PLACED`] once it has placed the process in
//! its cgroups (the process rehearses only then, so the pages it touches are charged to the
//! cell, not to the server), and the go record ([`ForkRequest::go_record`]: the cell's
//! rlimits and arguments) when a spawn takes it.

#![allow(dead_code)] // each side uses its half

/// Largest control message either side sends.
pub const MAX_MESSAGE: usize = 16 << 10;

const SETUP: u8 = b'S';
const FORK: u8 = b'F';

/// The byte the host sends a forked process once it sits in its cgroups.
pub const PLACED: u8 = b'P';

/// The host's request for one cell process.
pub const FORK_REQUEST: [u8; 1] = [FORK];

/// Whether `msg` is [`FORK_REQUEST`].
pub fn is_fork_request(msg: &[u8]) -> bool {
    msg == FORK_REQUEST
}

/// The rlimits a request carries, in this order.
pub const RLIMITS: [libc::__rlimit_resource_t; 7] = [
    libc::RLIMIT_AS,
    libc::RLIMIT_CPU,
    libc::RLIMIT_NOFILE,
    libc::RLIMIT_FSIZE,
    libc::RLIMIT_CORE,
    libc::RLIMIT_NPROC,
    libc::RLIMIT_STACK,
];

/// The stack a cell's main thread (the engine's) may grow to: `RLIMIT_STACK`, set by the host
/// and checked by the guest against the stack the engine needs.
pub const STACK_BYTES: u64 = 8 << 20;

/// Exit statuses the guest program uses to tell the host why it ended, so the host can
/// report a limit as that limit rather than as a crash.
pub mod exit {
    /// An allocation failed (the address-space limit): `limit_memory`.
    pub const OUT_OF_MEMORY: i32 = 80;
    /// The cell's CPU-time timer fired: `limit_cpu`.
    pub const CPU_TIME: i32 = 81;
    /// The engine ran off its stack (the guard page faulted): `limit_call_depth`.
    pub const STACK_OVERFLOW: i32 = 82;
    /// The guest program panicked, after writing its [`super::last_words`] on the channel:
    /// `cell_crashed`, with the panic's message.
    pub const PANICKED: i32 = 83;
}

/// A cell's last words: the record a panicking guest writes on its channel, at a frame
/// boundary, just before it exits with [`exit::PANICKED`]. Its first four bytes sit where
/// a frame's length prefix would and announce more than any frame may hold
/// (`wire::ABSOLUTE_MAX_FRAME_LEN`), so no frame is ever mistaken for it; then the
/// message's length (u16, little-endian, at most [`last_words::MAX_TEXT`]) and the
/// message (UTF-8).
pub mod last_words {
    /// The record's first four bytes, little-endian: "PNC!", 558 MB as a length prefix.
    pub const MARKER: [u8; 4] = *b"PNC!";
    /// The marker and the message's length.
    pub const HEAD_LEN: usize = 6;
    /// The longest message a record carries (the guest cuts it at a char boundary).
    pub const MAX_TEXT: usize = 1024;

    const _: () = assert!(u32::from_le_bytes(MARKER) > abi::wire::ABSOLUTE_MAX_FRAME_LEN);
    const _: () = assert!(MAX_TEXT <= u16::MAX as usize);

    /// The message of the record at the start of `bytes`: `None` while `bytes` do not yet
    /// hold all of it (or do not start with [`MARKER`]).
    pub fn decode(bytes: &[u8]) -> Option<&[u8]> {
        let (head, rest) = bytes.split_first_chunk::<HEAD_LEN>()?;
        if head[..4] != MARKER {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([head[4], head[5]])).min(MAX_TEXT);
        rest.get(..len)
    }
}

/// The setup message: the number of ids mapped from 1000 up, the code of a confinement
/// step every forked cell is to fail (fault injection for tests, honoured by the test
/// probe only; 0: none), then the cell filter.
pub fn encode_setup(ids: u32, fault: u8, filter: &[libc::sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + 8 * filter.len());
    out.push(SETUP);
    out.extend_from_slice(&ids.to_le_bytes());
    out.push(fault);
    for ins in filter {
        out.extend_from_slice(&ins.code.to_le_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_le_bytes());
    }
    out
}

/// Parses a setup message (ids, fault, filter); `None` if it is not one.
pub fn decode_setup(msg: &[u8]) -> Option<(u32, u8, Vec<libc::sock_filter>)> {
    let body = msg.strip_prefix(&[SETUP])?;
    let (ids, body) = body.split_first_chunk::<4>()?;
    let ids = u32::from_le_bytes(*ids);
    let (&fault, body) = body.split_first()?;
    if ids == 0 || body.is_empty() || body.len() % 8 != 0 || body.len() / 8 > u16::MAX as usize {
        return None;
    }
    let filter = body
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some((ids, fault, filter))
}

/// What a forked cell gets in its go record: its rlimits (in [`RLIMITS`] order) and
/// its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkRequest {
    pub rlimits: [u64; 7],
    pub args: Vec<String>,
}

impl ForkRequest {
    /// The go record: a u32 length, then [`ForkRequest::encode`].
    pub fn go_record(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORK];
        for v in self.rlimits {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for a in &self.args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    /// Parses a request; `None` if it is not one.
    pub fn decode(msg: &[u8]) -> Option<ForkRequest> {
        let body = msg.strip_prefix(&[FORK])?;
        const LEN: usize = 8 * RLIMITS.len();
        if body.len() < LEN {
            return None;
        }
        let mut rlimits = [0u64; RLIMITS.len()];
        for (slot, c) in rlimits.iter_mut().zip(body[..LEN].chunks_exact(8)) {
            *slot = u64::from_le_bytes(c.try_into().ok()?);
        }
        let rest = &body[LEN..];
        let mut args = Vec::new();
        if !rest.is_empty() {
            let rest = rest.strip_suffix(&[0])?;
            for a in rest.split(|&b| b == 0) {
                args.push(String::from_utf8(a.to_vec()).ok()?);
            }
        }
        Some(ForkRequest { rlimits, args })
    }
}

/// The server's answer: 0, or the errno of the step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub errno: i32,
}

impl Reply {
    pub fn encode(self) -> [u8; 4] {
        self.errno.to_le_bytes()
    }

    pub fn decode(msg: &[u8]) -> Option<Reply> {
        Some(Reply {
            errno: i32::from_le_bytes(msg.try_into().ok()?),
        })
    }
}

/// `struct clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// Sends one message on `socket`, with `fds` (at most two) attached as `SCM_RIGHTS`.
pub fn send_message(socket: i32, bytes: &[u8], fds: &[i32]) -> std::io::Result<()> {
    assert!(fds.len() <= 2, "at most two fds per message");
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut cmsg = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let len = (4 * fds.len()) as u32;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE/FIRSTHDR/DATA address the control buffer just attached,
        // which is large enough for two fds.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
            let data = libc::CMSG_DATA(c).cast::<i32>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(*fd);
            }
        }
    }
    loop {
        // SAFETY: msg describes valid buffers.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n == bytes.len() as isize {
            return Ok(());
        }
        let e = if n < 0 {
            std::io::Error::last_os_error()
        } else {
            std::io::Error::other("short send")
        };
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One received message: its length and the fds it carried (now owned by the caller).
pub struct Received {
    pub len: usize,
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// Receives one message from `socket` into `buf`. EOF, a truncated message or
/// truncated ancillary data is an error.
pub fn recv_message(socket: i32, buf: &mut [u8]) -> std::io::Result<Received> {
    use std::os::fd::FromRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    let n = loop {
        // SAFETY: msg describes valid buffers.
        let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in; each
    // SCM_RIGHTS entry is a fresh descriptor now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(
                        data.add(i).read_unaligned(),
                    ));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(std::io::Error::other("truncated message"));
    }
    Ok(Received {
        len: n as usize,
        fds,
    })
}
