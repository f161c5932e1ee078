//! The guest program of a `process` cell: the cell runtime (Rhai bound to the seven
//! operations) serving the host over the channel socket the backend left at fd 3.
//!
//! By the time this runs the backend has confined the process completely (namespaces,
//! empty root, unprivileged uid, rlimits, cgroups, Landlock, seccomp). argv[1] is the
//! frame size cap; nothing else comes in from the host but frames. With `--fork-server` it
//! is the backend's fork server instead ([`fork_server`]), and each forked cell carries on here.
#![cfg_attr(not(test), no_main)]
// The unit tests leave out `main`, so most of the program is unused in them; the
// program build checks these lints.
#![cfg_attr(test, allow(dead_code, unused_imports))]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod fork_server;
mod last_words;
mod limits;

use std::sync::Arc;

use abi::{ErrorCode, GuestFrame, HostFrame, wire};
use fork_server::step::Reporter;
use runtime::{Transport, TransportError, decode_frame, encode_frame};

const CHANNEL: i32 = 3;

/// Length-prefixed frames over the channel socket.
struct Socket {
    /// The channel (fd [`CHANNEL`] in a cell).
    fd: i32,
    max_frame_len: u32,
    inbox: Box<[u8]>,
    start: usize,
    end: usize,
}

fn write_all(fd: i32, bytes: &[u8]) -> Result<(), TransportError> {
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: the range lies inside `bytes`; MSG_NOSIGNAL turns a closed peer into EPIPE.
        let n = unsafe {
            libc::send(
                fd,
                bytes[off..].as_ptr().cast(),
                bytes.len() - off,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            // SAFETY: errno is thread-local and always valid.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return Err(TransportError::Closed);
        }
        off += n as usize;
    }
    Ok(())
}

/// How long a receive polls (yielding the CPU) before it sleeps in `read`: a reply
/// usually comes within microseconds, a cross-CPU wake costs ~25 µs.
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Whether this process may run on more than one CPU (decided once, at start): on a
/// single CPU, spinning only delays the host.
static PARALLEL: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
            && libc::CPU_COUNT(&set) > 1
    }
});

/// Reads at least one byte into `buf`: polls without sleeping for a short while (when
/// the host can answer from another CPU), then blocks.
fn read_some(fd: i32, buf: &mut [u8]) -> Result<usize, TransportError> {
    let spin_until = std::time::Instant::now()
        + if *PARALLEL {
            SPIN
        } else {
            std::time::Duration::ZERO
        };
    let mut flags = libc::MSG_DONTWAIT;
    loop {
        if flags != 0 && std::time::Instant::now() >= spin_until {
            flags = 0;
        }
        // SAFETY: the range lies inside `buf`.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n > 0 {
            return Ok(n as usize);
        }
        if n == 0 {
            return Err(TransportError::Closed);
        }
        // SAFETY: errno is thread-local and always valid.
        let errno = unsafe { *libc::__errno_location() };
        match errno {
            libc::EINTR => {}
            // SAFETY: sched_yield has no preconditions.
            libc::EAGAIN => unsafe {
                libc::sched_yield();
            },
            _ => return Err(TransportError::Closed),
        }
    }
}

impl Socket {
    /// Fills `out` from the channel through the input buffer, so a small frame costs
    /// one `recv` (header and body together).
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), TransportError> {
        let mut off = 0;
        while off < out.len() {
            if self.start == self.end {
                if out.len() - off >= self.inbox.len() {
                    off += read_some(self.fd, &mut out[off..])?;
                    continue;
                }
                self.start = 0;
                self.end = read_some(self.fd, &mut self.inbox)?;
            }
            let take = (out.len() - off).min(self.end - self.start);
            out[off..off + take].copy_from_slice(&self.inbox[self.start..self.start + take]);
            self.start += take;
            off += take;
        }
        Ok(())
    }
}

impl Transport for Socket {
    fn send(&mut self, frame: GuestFrame) -> Result<(), TransportError> {
        let started = matches!(frame, GuestFrame::Ready(_));
        write_all(self.fd, &encode_frame(&frame, self.max_frame_len)?)?;
        if started {
            // The handshake is answered: the cell's CPU time counts from here, not from its
            // start (the engine it built), as on every backend.
            fork_server::confine::start_cpu_timer();
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<HostFrame, TransportError> {
        let mut header = [0u8; wire::HEADER_LEN];
        self.read_exact(&mut header)?;
        let len = wire::body_len(header, self.max_frame_len).map_err(|e| {
            TransportError::Aborted(abi::CellError::new(
                ErrorCode::ProtocolViolation,
                format!("bad host frame header: {e}"),
            ))
        })?;
        let mut body = vec![0u8; len];
        self.read_exact(&mut body)?;
        let frame = decode_frame(&body)?;
        if matches!(frame, HostFrame::Exec { .. } | HostFrame::Call { .. }) {
            // A new transaction: an interrupt meant for an earlier one cancels nothing.
            limits::clear_interrupt();
        }
        Ok(frame)
    }
}

/// What the host tells a cell in its arguments: the frame size cap, then its CPU-time
/// limit in milliseconds (0: none).
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    max_frame_len: u32,
    cpu_ms: u64,
    /// The heap quota in bytes (0: unbounded), held by the allocator (`limits.rs`).
    heap_bytes: u64,
}

impl Settings {
    fn from_args(args: &[String]) -> Settings {
        Settings {
            max_frame_len: args
                .first()
                .and_then(|s| s.parse::<u32>().ok())
                .map_or(wire::DEFAULT_MAX_FRAME_LEN, |n| {
                    n.min(wire::ABSOLUTE_MAX_FRAME_LEN)
                }),
            cpu_ms: args.get(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0),
            heap_bytes: args.get(2).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0),
        }
    }
}

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: i32, argv: *const *const libc::c_char) -> i32 {
    let mut args: Vec<String> = (1..argc as usize)
        // SAFETY: the kernel passes argc valid NUL-terminated strings.
        .map(|i| unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) })
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Freed memory stays with the process instead of going back to the kernel, to be
    // faulted in again (page faults dominate a cold start on a virtualised host); the
    // cell's memory limits still bound what it can hold.
    // SAFETY: mallopt only tunes the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
    let mut reporter = Reporter::EXIT_ONLY;
    if args.first().map(String::as_str) == Some("--fork-server") {
        // Returns only in a forked, confined cell, with that cell's arguments.
        let cell = fork_server::serve(fork_server::Hooks {
            prewarm: runtime::prewarm,
            rehearse: runtime::agent::rehearse,
            faults: false,
        });
        (args, reporter) = (cell.args, cell.reporter);
    }
    // Before any script: a panic reaches the host with its message, the engine's stack
    // limit and interrupt become errors, not crashes, and the CPU-time timer is made (it
    // counts from the handshake's answer: not a spare's rehearsal, not the cell's start).
    last_words::install();
    limits::install_handlers();
    let Settings {
        max_frame_len,
        cpu_ms,
        heap_bytes,
    } = Settings::from_args(&args);
    limits::set_heap_quota(heap_bytes);
    // SAFETY: no script has run yet; the timer's signal ends the cell (limits.rs).
    unsafe { fork_server::confine::arm_cpu_timer(reporter, cpu_ms) };
    let socket = Socket {
        fd: CHANNEL,
        max_frame_len,
        inbox: vec![0; 16 << 10].into_boxed_slice(),
        start: 0,
        end: 0,
    };
    match runtime::agent::serve(Box::new(socket), Arc::new(limits::Interrupted)) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (i32, i32) {
        let mut fds = [0i32; 2];
        // SAFETY: fds points to two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        (fds[0], fds[1])
    }

    fn socket(fd: i32, inbox: usize) -> Socket {
        Socket {
            fd,
            max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
            inbox: vec![0; inbox].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn close(fd: i32) {
        // SAFETY: a descriptor this test opened.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn reads_through_the_inbox_and_past_it_keep_the_byte_order() {
        let (ours, theirs) = pair();
        let bytes: Vec<u8> = (0..200u8).collect();
        write_all(theirs, &bytes).unwrap();
        close(theirs);
        let mut s = socket(ours, 16);
        // Small reads come from the inbox; a read as large as the inbox bypasses it.
        let mut got = Vec::new();
        for len in [3, 5, 16, 40, 1, 135] {
            let mut out = vec![0u8; len];
            s.read_exact(&mut out).unwrap();
            got.extend_from_slice(&out);
        }
        assert_eq!(got, bytes);
        let mut more = [0u8; 1];
        assert!(matches!(
            s.read_exact(&mut more),
            Err(TransportError::Closed)
        ));
        close(ours);
    }

    #[test]
    fn a_sent_frame_is_length_prefixed() {
        let (ours, theirs) = pair();
        let mut s = socket(ours, 64);
        s.send(GuestFrame::Post(abi::Value::Int(42))).unwrap();
        close(ours);
        let mut peer = socket(theirs, 64);
        let mut header = [0u8; wire::HEADER_LEN];
        peer.read_exact(&mut header).unwrap();
        let len = wire::body_len(header, wire::DEFAULT_MAX_FRAME_LEN).unwrap();
        let mut body = vec![0u8; len];
        peer.read_exact(&mut body).unwrap();
        assert!(len > 0);
        let mut rest = [0u8; 1];
        assert!(
            peer.read_exact(&mut rest).is_err(),
            "one frame, nothing after it"
        );
        close(theirs);
    }

    #[test]
    fn settings_come_from_the_arguments_and_are_capped() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Settings::from_args(&args(&["4096", "250", "8388608"])),
            Settings {
                max_frame_len: 4096,
                cpu_ms: 250,
                heap_bytes: 8 << 20,
            }
        );
        assert_eq!(
            Settings::from_args(&[]),
            Settings {
                max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
                cpu_ms: 0,
                heap_bytes: 0,
            }
        );
        let huge = (u64::from(wire::ABSOLUTE_MAX_FRAME_LEN) + 1).min(u64::from(u32::MAX));
        assert_eq!(
            Settings::from_args(&args(&[&huge.to_string(), "x"])).max_frame_len,
            wire::ABSOLUTE_MAX_FRAME_LEN
        );
    }
}
