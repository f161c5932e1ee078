//! [`abi::backend::Backend`] for process cells: spawn a confined child running the
//! cell runtime, move frames over its socketpair, kill it by pidfd and cgroup.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use abi::backend::{
    Backend, CellPipe, FrameIo, HostSide, Killer as AbiKiller, Layer as AbiLayer, PipeError,
    SpawnError, SpawnSpec as AbiSpawnSpec, drive,
};
use abi::wire::{self, HEADER_LEN};

use crate::cell::{Killer, ProcessCell};
use crate::deadline::ChannelDeadline;
use crate::error::Error;
use crate::fork_protocol::last_words;
use crate::fork_server::PoolLease;
use crate::host::host_support;
use crate::layers::{Layer, LayerReport, LayerState};
use crate::limits::Limits;
use crate::read_buf::ReadBuf;
use crate::spec::SpawnSpec;

/// The `process` backend.
#[derive(Clone, Debug)]
pub struct ProcessBackend {
    /// CPU bandwidth per cell (cgroup), in percent of one CPU.
    pub cpu_percent: u32,
    /// Start cells from the pre-confined fork server (the default) rather than
    /// confining a fresh child of the supervisor for each.
    pub fork_server: bool,
    /// Keeps the fork server and its spares while a backend lives: dropping the last
    /// backend shuts them down.
    pub pool: PoolLease,
}

impl Default for ProcessBackend {
    fn default() -> Self {
        ProcessBackend {
            cpu_percent: 100,
            fork_server: true,
            pool: PoolLease::new(),
        }
    }
}

impl ProcessBackend {
    /// A backend whose cells start from the fork server.
    ///
    /// Most users get it through the supervisor; a program of its own registers it like any
    /// backend:
    ///
    /// ```no_run
    /// use abi::backend::Backend;
    /// use cell_backend_process::ProcessBackend;
    ///
    /// let backend = ProcessBackend::new();
    /// assert_eq!(backend.name(), "process");
    /// // What confines its cells on this host, layer by layer (`cell doctor` prints the same).
    /// for layer in backend.host_layers() {
    ///     println!("{}: {}", layer.name, if layer.active { "on" } else { "off" });
    /// }
    /// ```
    pub fn new() -> Self {
        ProcessBackend::default()
    }

    /// The backend-level spawn specification for an ABI spawn spec.
    pub fn spawn_spec(&self, spec: &AbiSpawnSpec) -> Result<SpawnSpec, SpawnError> {
        let mut require = Layer::ALWAYS.to_vec();
        for name in &spec.required_layers {
            let layer = Layer::from_name(name).ok_or_else(|| SpawnError::MissingLayer {
                layer: name.clone(),
                reason: format!(
                    "the process backend has no such layer (it has: {})",
                    Layer::ALL.map(Layer::name).join(", ")
                ),
            })?;
            if !require.contains(&layer) {
                require.push(layer);
            }
        }
        let r = &spec.resources;
        let limits = Limits {
            memory_bytes: r.memory_bytes,
            cpu_time_ms: r.cpu_time_ms,
            cpu_percent: self.cpu_percent,
            max_processes: r.max_processes.max(1),
            open_files: u64::from(r.max_open_files.max(4)),
            file_size_bytes: 0,
        };
        let max = spec.max_frame_len.min(wire::ABSOLUTE_MAX_FRAME_LEN);
        Ok(SpawnSpec {
            limits,
            require,
            fork_server: self.fork_server,
            // The guest arms its CPU-time timer from the second argument and holds its heap
            // to the third.
            args: vec![
                max.to_string(),
                r.cpu_time_ms.to_string(),
                r.memory_bytes.to_string(),
            ],
            ..SpawnSpec::default()
        })
    }
}

/// A layer report in the ABI's terms.
fn abi_layers(report: &LayerReport) -> Vec<AbiLayer> {
    report
        .iter()
        .map(|(layer, state)| AbiLayer {
            name: layer.name().into(),
            active: state.is_active(),
            detail: match state {
                LayerState::Active => String::new(),
                LayerState::Partial(d) | LayerState::Inactive(d) => d.clone(),
            },
        })
        .collect()
}

fn spawn_error(e: Error) -> SpawnError {
    match e {
        Error::LayerUnavailable { layer, reason } => SpawnError::MissingLayer {
            layer: layer.name().into(),
            reason,
        },
        Error::Host { source, .. } => SpawnError::Io(source),
        other => SpawnError::Other(other.to_string()),
    }
}

impl Backend for ProcessBackend {
    fn name(&self) -> &str {
        "process"
    }

    fn available(&self) -> Result<(), String> {
        let hs = host_support();
        if !hs.user_namespaces {
            return Err("user namespaces are disabled on this host".into());
        }
        if !hs.seccomp {
            return Err("the kernel has no seccomp filters".into());
        }
        Ok(())
    }

    fn host_layers(&self) -> Vec<AbiLayer> {
        abi_layers(&host_support().layers())
    }

    fn spawn(
        &self,
        spec: &AbiSpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        let spawn_spec = self.spawn_spec(spec)?;
        let cell = ProcessCell::spawn(&spawn_spec).map_err(spawn_error)?;
        Ok(Box::new(ProcessPipe::new(cell, host, spec.max_frame_len)))
    }
}

impl AbiKiller for Killer {
    fn kill(&self) {
        Killer::kill(self);
    }
}

/// One process cell as the supervisor drives it.
pub struct ProcessPipe {
    io: SocketIo,
    host: Arc<dyn HostSide>,
    max_len: u32,
    interrupter: Arc<ProcessInterrupter>,
}

/// Ends the running exec or call of a process cell with `Cancelled` and leaves the cell
/// usable: `SIGUSR1`, whose handler in the guest sets the flag the engine's progress
/// callback reads. Only sent while an exec or call is in flight (the guest clears the flag
/// when the next one arrives, so a signal that lands between transactions cancels nothing).
#[derive(Debug)]
pub struct ProcessInterrupter {
    pidfd: Arc<std::os::fd::OwnedFd>,
    in_flight: std::sync::atomic::AtomicBool,
}

impl abi::backend::Interrupter for ProcessInterrupter {
    fn interrupt(&self) {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: a valid pidfd of the cell; a null siginfo is allowed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    libc::SIGUSR1,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                );
            }
        }
    }
}

impl ProcessPipe {
    /// The pipe to a spawned `cell`, with frames up to `max_len` bytes, answering to `host`.
    pub fn new(cell: ProcessCell, host: Arc<dyn HostSide>, max_len: u32) -> Self {
        let interrupter = Arc::new(ProcessInterrupter {
            pidfd: cell.pidfd(),
            in_flight: std::sync::atomic::AtomicBool::new(false),
        });
        let deadline = ChannelDeadline::new(cell.channel().as_raw_fd());
        ProcessPipe {
            interrupter,
            io: SocketIo {
                cell,
                deadline,
                buf: ReadBuf::new(),
                broken: false,
            },
            host,
            max_len: max_len.min(wire::ABSOLUTE_MAX_FRAME_LEN),
        }
    }

    /// The underlying cell process.
    pub fn cell(&self) -> &ProcessCell {
        &self.io.cell
    }
}

impl CellPipe for ProcessPipe {
    fn transact(
        &mut self,
        frame: abi::HostFrame,
        deadline: Option<Instant>,
    ) -> Result<(), PipeError> {
        if self.io.broken {
            return Err(self.io.ended());
        }
        let interruptible = matches!(
            frame,
            abi::HostFrame::Exec { .. } | abi::HostFrame::Call { .. }
        );
        let flag = &self.interrupter.in_flight;
        flag.store(interruptible, std::sync::atomic::Ordering::SeqCst);
        if let Some(d) = &self.io.deadline {
            d.arm(deadline);
        }
        let mut res = drive(&mut self.io, &*self.host, &frame, deadline, self.max_len);
        if let Some(d) = &self.io.deadline
            && d.disarm()
            && res.is_ok()
        {
            // The deadline passed as the answer came: the channel's read side is shut.
            res = Err(PipeError::TimedOut);
        }
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = &res {
            // A transaction that broke leaves the stream mid-frame: never reuse it.
            self.io.broken = true;
            if !matches!(
                e,
                PipeError::Killed | PipeError::Closed | PipeError::Crashed(_)
            ) {
                self.io.cell.kill();
            }
        }
        res
    }

    fn killer(&self) -> Arc<dyn AbiKiller> {
        Arc::new(self.io.cell.killer())
    }

    fn interrupter(&self) -> Option<Arc<dyn abi::backend::Interrupter>> {
        Some(self.interrupter.clone())
    }

    fn usage(&self) -> Option<Arc<dyn abi::backend::UsageProbe>> {
        Some(Arc::new(self.io.cell.usage_probe()))
    }

    fn layers(&self) -> Vec<AbiLayer> {
        abi_layers(self.io.cell.layers())
    }

    fn shutdown(&mut self) -> Result<(), PipeError> {
        self.io.broken = true;
        // Dropping the pipe hands the killed process to the reaper thread, which reaps
        // it and removes its cgroups off the caller's path.
        self.io.cell.kill();
        Ok(())
    }
}

impl Drop for ProcessPipe {
    fn drop(&mut self) {
        // The channel closes with the cell, after this: the watchdog must not touch it since.
        if let Some(d) = &self.io.deadline {
            d.close();
        }
    }
}

/// Whether this thread may run on more than one CPU (else spinning only delays the
/// peer, which needs the same CPU). Asked of the kernel once every 256 calls per thread:
/// affinity rarely changes, and a stale answer costs only a little speed.
fn can_run_in_parallel() -> bool {
    thread_local! {
        static CACHED: std::cell::Cell<(u8, bool)> = const { std::cell::Cell::new((0, false)) };
    }
    CACHED.with(|cached| {
        let (age, parallel) = cached.get();
        let parallel = if age == 0 {
            // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
                    && libc::CPU_COUNT(&set) > 1
            }
        } else {
            parallel
        };
        cached.set((age.wrapping_add(1), parallel));
        parallel
    })
}

/// How long a receive polls before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Byte-level frames over the channel socket, with a read buffer so a small frame
/// costs one `read`.
struct SocketIo {
    cell: ProcessCell,
    /// The transaction's deadline, enforced by the watchdog (`None`: by a `poll` per read).
    deadline: Option<Arc<ChannelDeadline>>,
    buf: ReadBuf,
    broken: bool,
}

impl SocketIo {
    /// Why the channel ended: killed by the host, crashed, or closed.
    fn ended(&mut self) -> PipeError {
        if self.deadline.as_ref().is_some_and(|d| d.fired()) {
            return PipeError::TimedOut;
        }
        if self.cell.killer().was_killed() {
            return PipeError::Killed;
        }
        // The peer closed its end; it is exiting or gone. Wait briefly for its status.
        let status = self
            .cell
            .wait_timeout(std::time::Duration::from_millis(500));
        match status {
            Ok(Some(t)) => {
                let words = t.panicked().then(|| self.last_words()).flatten();
                crate::exit::classify(&t, self.cell.limits(), words.as_deref())
            }
            _ => PipeError::Closed,
        }
    }

    /// The message a panicking guest wrote before it exited ([`last_words`]), from the next
    /// frame boundary on: read without waiting, since the writer is gone. `None` when what
    /// is there is no such record.
    fn last_words(&mut self) -> Option<String> {
        let fd = self.cell.channel().as_raw_fd();
        loop {
            let have = self.buf.unread();
            if let Some(text) = last_words::decode(have) {
                return Some(String::from_utf8_lossy(text).into_owned());
            }
            let prefix = have.len().min(last_words::MARKER.len());
            if have[..prefix] != last_words::MARKER[..prefix] {
                return None;
            }
            let n = self.recv_ready(fd);
            if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                return None;
            }
        }
    }

    /// Appends to the buffer what `fd` holds now, without waiting: `recv`'s result.
    fn recv_ready(&mut self, fd: i32) -> isize {
        let spare = self.buf.spare();
        // SAFETY: `spare` is valid writable memory of the given length.
        let n = unsafe {
            libc::recv(
                fd,
                spare.as_mut_ptr().cast(),
                spare.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            self.buf.filled_by(n as usize);
        }
        n
    }

    /// Reads more bytes into the buffer, honouring the deadline.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), PipeError> {
        let fd = self.cell.channel().as_raw_fd();
        // Poll without sleeping for a short while first: the answer usually comes within
        // microseconds, and a sleep/wake across CPUs costs ~25 µs here. On one CPU the
        // peer cannot have answered before this thread sleeps: go straight to sleep.
        let parallel = can_run_in_parallel();
        let spin_until = Instant::now() + SPIN;
        loop {
            if !parallel {
                break;
            }
            let n = self.recv_ready(fd);
            if n > 0 {
                return Ok(());
            }
            if n == 0 {
                return Err(self.ended());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                break;
            }
            let now = Instant::now();
            if now >= spin_until || deadline.is_some_and(|d| now >= d) {
                break;
            }
            std::thread::yield_now();
        }
        // With the watchdog, a blocking read: it shuts the channel's read side at the deadline.
        let poll_for = deadline.filter(|_| self.deadline.is_none());
        loop {
            if let Some(deadline) = poll_for {
                let now = Instant::now();
                if now >= deadline {
                    return Err(PipeError::TimedOut);
                }
                let ms = (deadline - now)
                    .as_micros()
                    .div_ceil(1000)
                    .min(i32::MAX as u128) as i32;
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                if r == 0 {
                    continue;
                }
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(PipeError::Io(e));
                }
            }
            let spare = self.buf.spare();
            // SAFETY: `spare` is valid writable memory of the given length.
            let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
            if n > 0 {
                self.buf.filled_by(n as usize);
                return Ok(());
            }
            if n == 0 {
                return Err(self.ended());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    return Err(self.ended());
                }
                _ => return Err(PipeError::Io(e)),
            }
        }
    }
}

impl FrameIo for SocketIo {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        let fd = self.cell.channel().as_raw_fd();
        let mut off = 0;
        while off < frame.len() {
            // SAFETY: the range lies inside `frame`; MSG_NOSIGNAL: no SIGPIPE in the host.
            let n = unsafe {
                libc::send(
                    fd,
                    frame[off..].as_ptr().cast(),
                    frame.len() - off,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        return Err(self.ended());
                    }
                    _ => return Err(PipeError::Io(e)),
                }
            }
            off += n as usize;
        }
        Ok(())
    }

    fn recv_frame(
        &mut self,
        deadline: Option<Instant>,
        max_len: u32,
    ) -> Result<Vec<u8>, PipeError> {
        while self.buf.unread().len() < HEADER_LEN {
            self.fill(deadline)?;
        }
        let header: [u8; HEADER_LEN] = self.buf.unread()[..HEADER_LEN].try_into().expect("header");
        if header == last_words::MARKER {
            // A panicking guest's last words (left unread for `ended`), not a frame. From a
            // cell that has not ended, it is a length prefix over the cap like any other.
            match self.ended() {
                PipeError::Closed => {}
                ended => return Err(ended),
            }
        }
        // The cap is checked before anything is allocated for the body.
        let len = wire::body_len(header, max_len)?;
        self.buf.consume(HEADER_LEN);
        let mut body = Vec::with_capacity(len);
        loop {
            let take = (len - body.len()).min(self.buf.unread().len());
            body.extend_from_slice(&self.buf.unread()[..take]);
            self.buf.consume(take);
            if body.len() == len {
                return Ok(body);
            }
            self.fill(deadline)?;
        }
    }
}
