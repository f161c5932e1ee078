//! The VM host process: the executable started again with [`HOST_ENV`] set runs [`serve`] from
//! a constructor, before its `main`, and never returns to it. Every binary that links this crate
//! can therefore host VMs, whatever its `main` does (the `cell` command, the service, a test
//! binary).
//!
//! Its standard input is the control socket. Each `Spawn` record brings a cell's stream socket;
//! a thread per cell builds the VM and then runs it exactly as the supervisor's own process would
//! ([`Vm::recv_body`] on that thread), answering one message per request. The host ends when the
//! supervisor closes the control socket (the supervisor exited): its VMs end with it.
use std::collections::HashMap;
use std::io::{self, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, SocketType};

use super::messages::{
    Answer, Control, FromVm, HELLO, HOST_ENV, MAX_CONTROL, ReadError, Start, ToVm, Used,
    read_message, write_message,
};
use crate::error::pipe_error;
use crate::{Interrupter, Killer, Vm, VmConfig, VmError};

/// Stack of a cell's thread: the run loop and the frame copies (bodies live on the heap).
const CELL_THREAD_STACK: usize = 256 * 1024;

#[ctor::ctor(unsafe)]
fn enter_if_vm_host() {
    // Runs before `main` in every process of a binary linking this crate; only a process that a
    // supervisor started as a VM host (the variable set) goes further, and it never returns.
    let Some(parent) = std::env::var_os(HOST_ENV) else {
        return;
    };
    let code = match serve(&parent.to_string_lossy()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cell VM host {}: {e}", std::process::id());
            1
        }
    };
    std::process::exit(code);
}

/// What the control thread holds of a live cell's VM.
struct Handles {
    killer: Killer,
    interrupter: Interrupter,
    txns: Txns,
}

/// Which transaction an interrupt is for: interrupt records travel on the control socket, apart
/// from the cell's requests, so one may arrive before its transaction has started here.
#[derive(Debug, Default, PartialEq)]
struct Txns {
    /// The transaction the cell's thread last started.
    current: u64,
    /// A later transaction an interrupt arrived for before its thread started it.
    pending: u64,
}

impl Txns {
    /// An interrupt of transaction `txn`: true if it runs now; remembered if it has not started;
    /// dropped if it has ended.
    fn interrupt(&mut self, txn: u64) -> bool {
        if txn > self.current {
            self.pending = txn;
        }
        txn == self.current
    }

    /// Transaction `txn` starts: true if its interrupt came early.
    fn start(&mut self, txn: u64) -> bool {
        self.current = txn;
        self.pending == txn
    }
}

impl Handles {
    fn interrupt(&mut self, txn: u64) {
        if self.txns.interrupt(txn) {
            self.interrupter.interrupt();
        }
    }

    /// Transaction `txn` starts: its interrupt word is cleared (an interrupt cancels only the
    /// transaction it was meant for), then set again if its interrupt came early.
    fn start(&mut self, txn: u64, vm: &Vm) -> Result<(), VmError> {
        let early = self.txns.start(txn);
        vm.clear_interrupt()?;
        if early {
            self.interrupter.interrupt();
        }
        Ok(())
    }
}

/// Each live cell's handles, for the control thread's kills and interrupts.
type Registry = Arc<Mutex<HashMap<u64, Handles>>>;

fn serve(parent: &str) -> io::Result<()> {
    // SAFETY: the supervisor passed the control socket as standard input; nothing else in this
    // process uses descriptor 0, which is owned from here on.
    let control = unsafe { OwnedFd::from_raw_fd(0) };
    if rustix::net::sockopt::socket_type(&control)? != SocketType::SEQPACKET {
        return Err(io::Error::other(
            "standard input is not a VM host control socket",
        ));
    }
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if parent.parse::<i32>().ok() != Some(ppid) {
        return Err(io::Error::other(format!(
            "started by pid {ppid}, not by the supervisor {parent}"
        )));
    }
    // `main` never runs here, so neither does the Rust runtime's start-up that ignores SIGPIPE:
    // a write to a pipe whose reader is gone (standard error is the supervisor's, perhaps a
    // pipe) must be an error, not the signal that ends the host and all its cells. (Socket
    // writes pass MSG_NOSIGNAL already: an answer on a socket a kill shut is an error either way.)
    // SAFETY: installs the SIG_IGN disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Each VM holds two descriptors and each cell a socket: the soft limit goes to the hard one.
    let mut nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    nofile.current = nofile.maximum;
    rustix::process::setrlimit(rustix::process::Resource::Nofile, nofile)?;
    // Still one thread: everything started from here on inherits the confinement.
    let confined = super::confine::confine()?;
    if !confined.landlock {
        eprintln!(
            "cell VM host {}: this kernel has no Landlock",
            std::process::id()
        );
    }
    // What `ps` shows (the executable is whatever binary the supervisor is).
    rustix::thread::set_name(c"cell-vm-host")?;
    rustix::net::send(&control, HELLO, SendFlags::NOSIGNAL)?;

    let registry: Registry = Arc::default();
    loop {
        let mut buf = [0u8; MAX_CONTROL];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            &control,
            &mut [IoSliceMut::new(&mut buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if got.bytes == 0 {
            // The supervisor closed its end: it exited.
            return Ok(());
        }
        let mut socket = None;
        for msg in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for fd in fds {
                    socket.get_or_insert(fd);
                }
            }
        }
        let Ok(record) = postcard::from_bytes::<Control>(&buf[..got.bytes.min(MAX_CONTROL)]) else {
            continue;
        };
        match record {
            Control::Spawn {
                cell,
                start,
                mem_size,
                frame_cap,
                heap_quota,
                mode,
                cpu_time_ms,
            } => {
                let Some(socket) = socket else { continue };
                let mut cfg = VmConfig::new(mem_size).with_test_mode(mode);
                cfg.frame_cap = frame_cap;
                cfg.heap_quota = heap_quota;
                let registry = registry.clone();
                let stream = UnixStream::from(socket);
                let spawned = std::thread::Builder::new()
                    .name("cell-vm".into())
                    .stack_size(CELL_THREAD_STACK)
                    .spawn(move || serve_cell(cell, start, &cfg, cpu_time_ms, stream, &registry));
                if let Err(e) = spawned {
                    // The stream went with the closure; the supervisor reads end-of-file.
                    eprintln!("cell VM host: no thread for cell {cell}: {e}");
                }
            }
            Control::Kill { cell } => {
                if let Some(h) = lock(&registry).get(&cell) {
                    h.killer.kill();
                }
            }
            Control::Interrupt { cell, txn } => {
                if let Some(h) = lock(&registry).get_mut(&cell) {
                    h.interrupt(txn);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One cell's thread: build the VM, then answer each request until the supervisor closes the
/// socket (the VM then returns to this host's pool or is destroyed, as in the supervisor).
fn serve_cell(
    cell: u64,
    start: Start,
    cfg: &VmConfig,
    cpu_time_ms: u64,
    mut stream: UnixStream,
    registry: &Registry,
) {
    let built = match start {
        Start::Snapshot => Vm::from_snapshot(cfg),
        Start::Cold => Vm::boot(cfg),
    };
    let mut vm = match built {
        Ok(vm) => vm,
        Err(e) => {
            let failed = FromVm::SpawnFailed {
                unavailable: matches!(e, VmError::KvmUnavailable(_)),
                reason: e.to_string(),
            };
            let _ = write_message(&mut stream, &failed);
            return;
        }
    };
    vm.set_cpu_limit((cpu_time_ms > 0).then(|| Duration::from_millis(cpu_time_ms)));
    let handles = Handles {
        killer: vm.killer(),
        interrupter: vm.interrupter(),
        txns: Txns::default(),
    };
    lock(registry).insert(cell, handles);
    let usage = vm.usage();
    let started = FromVm::Started {
        mem_size: vm.mem_size(),
        answer: vm.take_known_answer().map(|a| a.to_vec()),
        used: Used::of(&usage),
    };
    if write_message(&mut stream, &started).is_ok() {
        loop {
            match read_message::<ToVm>(&mut stream) {
                Ok(ToVm::Run {
                    txn,
                    starts,
                    frames,
                    timeout_us,
                    max_len,
                }) => {
                    let started = if starts {
                        lock(registry)
                            .get_mut(&cell)
                            .map_or(Ok(()), |h| h.start(txn, &vm))
                    } else {
                        Ok(())
                    };
                    let reply = match started {
                        Ok(()) => run(&mut vm, &frames, timeout_us, max_len),
                        Err(e) => FromVm::Stop(pipe_error(e).into()),
                    };
                    let answer = Answer {
                        used: Used::of(&usage),
                        reply,
                    };
                    if write_message(&mut stream, &answer)
                        .and_then(|()| stream.flush())
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(ToVm::Abort(reason)) => vm.abort(reason),
                Err(ReadError::Closed) => break,
                Err(e) => {
                    eprintln!("cell VM host: cell {cell}: {e}");
                    vm.abort(abi::CellError::new(
                        abi::ErrorCode::CellCrashed,
                        "the supervisor's channel to the VM host broke",
                    ));
                    break;
                }
            }
        }
    }
    lock(registry).remove(&cell);
}

/// One request: what [`crate::MicroVmPipe`] does in the supervisor's process for one
/// `send`s-then-`recv` step of a transaction.
fn run(vm: &mut Vm, frames: &[Vec<u8>], timeout_us: Option<u64>, max_len: u32) -> FromVm {
    let mut step = || -> Result<crate::Recv, VmError> {
        for frame in frames {
            vm.send(frame)?;
        }
        let deadline = timeout_us.map(|us| Instant::now() + Duration::from_micros(us));
        vm.recv_body(deadline, max_len)
    };
    match step() {
        Ok(crate::Recv::Frame(body)) => FromVm::Frame(body),
        Ok(crate::Recv::Idle) => FromVm::Idle,
        Ok(crate::Recv::TimedOut) => FromVm::TimedOut,
        Err(e) => FromVm::Stop(pipe_error(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Txns;

    #[test]
    fn an_interrupt_lands_in_its_own_transaction_whenever_it_arrives() {
        let mut t = Txns::default();
        // Sent while transaction 1 runs, arriving after it started: applies now.
        assert!(!t.start(1));
        assert!(t.interrupt(1));
        // Sent while 2 runs, arriving before its thread started it: applies at its start.
        assert!(!t.interrupt(2));
        assert!(t.start(2));
        // Sent while 2 ran, arriving after 3 started: dropped (3 is not interrupted).
        assert!(!t.start(3));
        assert!(!t.interrupt(2));
        assert!(!t.start(4), "nothing was pending for 4");
    }
}
