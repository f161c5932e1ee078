//! The supervisor's side of VM hosts: the set of host processes it started, a hosted cell's
//! frame I/O (one request and one answer per step of a transaction), and its kill and interrupt.
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use abi::backend::{
    FrameIo, Interrupter as AbiInterrupter, Killer as AbiKiller, PipeError, UsageProbe,
};
use abi::{CellError, ErrorCode};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::net::{SocketFlags, SocketType};

use super::messages::{
    ANSWER_ROOM, Answer, Control, FromVm, HELLO, HOST_ENV, MAX_CONTROL, ReadError, Start, ToVm,
    Used, encode_control, read_message_within, write_message,
};
use crate::{VmConfig, VmError};

/// How long a new host may take to say it is ready (it execs this binary and runs its
/// constructors; an executable without this crate's entry never answers, or exits).
const HELLO_WAIT_SECS: i64 = 30;

/// One VM host process. Dropping the last handle closes its control socket, which ends it.
pub(crate) struct Host {
    control: OwnedFd,
    /// The executable it runs (a backend uses only hosts of its own executable).
    exe: PathBuf,
    child: Mutex<Option<Child>>,
    /// Cells living in it, or being started there.
    cells: AtomicUsize,
    /// Its control socket failed: it died, no new cell goes there.
    broken: AtomicBool,
}

impl Host {
    fn send(&self, record: &Control, fd: Option<&OwnedFd>) -> io::Result<()> {
        let bytes = encode_control(record);
        debug_assert!(bytes.len() <= MAX_CONTROL);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        let fds;
        if let Some(fd) = fd {
            fds = [fd.as_fd()];
            ancillary.push(SendAncillaryMessage::ScmRights(&fds));
        }
        loop {
            match rustix::net::sendmsg(
                &self.control,
                &[IoSlice::new(&bytes)],
                &mut ancillary,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    self.broken.store(true, Ordering::SeqCst);
                    return Err(e.into());
                }
            }
        }
    }

    /// Reaps the process once its control socket broke (it is dead or dying).
    fn reap(&self) {
        if let Some(mut child) = self.child_slot().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn child_slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One of its cells ended; an empty host is retired unless it is the only idle one (which
    /// stays for the next burst).
    fn release(self: &Arc<Self>) {
        if self.cells.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let mut hosts = lock_hosts();
        let idle = |h: &Arc<Host>| h.cells.load(Ordering::SeqCst) == 0;
        // Reservations happen under this lock, so an idle host seen here stays idle.
        if idle(self) && hosts.iter().filter(|h| idle(h)).count() > 1 {
            hosts.retain(|h| !Arc::ptr_eq(h, self));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The control socket closes when this returns and the host exits on that; its status is
        // collected off this thread (the exit tears down its pooled VMs, which takes a while).
        if let Some(mut child) = self.child_slot().take() {
            let reaped = std::thread::Builder::new()
                .name("cell-vm-host-reap".into())
                .spawn(move || {
                    let _ = child.wait();
                });
            if let Err(e) = reaped {
                eprintln!("cell: no thread to reap a VM host: {e}");
            }
        }
    }
}

/// The hosts this process started, in the order started.
static HOSTS: Mutex<Vec<Arc<Host>>> = Mutex::new(Vec::new());
static NEXT_CELL: AtomicU64 = AtomicU64::new(1);

fn lock_hosts() -> std::sync::MutexGuard<'static, Vec<Arc<Host>>> {
    HOSTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Executables that were started as VM hosts and never said hello (they do not link this crate,
/// as when it is embedded in another language's runtime), with what happened.
static UNAVAILABLE: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// Why `exe` cannot host VMs, once a start of it as a host failed that way.
pub(crate) fn unavailable(exe: &Path) -> Option<String> {
    let known = UNAVAILABLE.lock().unwrap_or_else(PoisonError::into_inner);
    known
        .iter()
        .find(|(p, _)| p == exe)
        .map(|(_, why)| why.clone())
}

/// A host holding fewer than `per_host` cells (its count already taken), starting `exe` as one
/// when all are full. A start (tens of milliseconds; up to the hello bound for an executable
/// that hangs) holds only [`STARTING`], not the host list: spawns into hosts with room and
/// closes of hosted cells go on meanwhile, and starts are one at a time, so concurrent spawns
/// that find every host full start one host, not one each.
fn reserve_host(per_host: usize, exe: &Path) -> Result<Arc<Host>, VmError> {
    if let Some(host) = reserve_in_running(per_host, exe) {
        return Ok(host);
    }
    let _starting = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    // Another start may have ended while this one waited for its turn.
    if let Some(host) = reserve_in_running(per_host, exe) {
        return Ok(host);
    }
    let host = Arc::new(start_host(exe)?);
    host.cells.store(1, Ordering::SeqCst);
    lock_hosts().push(host.clone());
    Ok(host)
}

/// Held while a host is started (see [`reserve_host`]).
static STARTING: Mutex<()> = Mutex::new(());

/// A place in a running host of `exe` holding fewer than `per_host` cells (reaping the hosts
/// that broke), taken under the host list's lock.
fn reserve_in_running(per_host: usize, exe: &Path) -> Option<Arc<Host>> {
    let mut hosts = lock_hosts();
    hosts.retain(|h| {
        let broken = h.broken.load(Ordering::SeqCst);
        if broken {
            h.reap();
        }
        !broken
    });
    hosts.iter().filter(|h| h.exe == exe).find_map(|h| {
        let n = h.cells.load(Ordering::SeqCst);
        (n < per_host
            && h.cells
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok())
        .then(|| h.clone())
    })
}

fn host_error(what: &str, e: impl std::fmt::Display) -> VmError {
    VmError::Host(format!("{what}: {e}"))
}

/// Starts `exe` as a VM host and waits for its hello.
fn start_host(exe: &Path) -> Result<Host, VmError> {
    if let Some(why) = unavailable(exe) {
        return Err(VmError::Host(format!(
            "{} cannot host VMs: {why}",
            exe.display()
        )));
    }
    if std::env::var_os(HOST_ENV).is_some() {
        return Err(VmError::Host(
            "this process was started as a VM host but its executable has no host entry".into(),
        ));
    }
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| host_error("a VM host's control socket", e))?;
    // The extra argument makes a `main` that does not know it refuse to start (a test harness, a
    // command-line parser) should the entry be missing, rather than run as itself.
    let child = Command::new(exe)
        .arg0("cell-vm-host")
        .arg("--cell-vm-host")
        .env(HOST_ENV, std::process::id().to_string())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| host_error("starting a VM host", e))?;
    let host = Host {
        control: ours,
        exe: exe.to_path_buf(),
        child: Mutex::new(Some(child)),
        cells: AtomicUsize::new(0),
        broken: AtomicBool::new(false),
    };
    match wait_hello(&host.control) {
        Ok(()) => Ok(host),
        Err(e) => {
            host.reap();
            let why = e.to_string();
            UNAVAILABLE
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((exe.to_path_buf(), why.clone()));
            Err(VmError::Host(format!(
                "{} did not start as a VM host: {why}",
                exe.display()
            )))
        }
    }
}

fn wait_hello(control: &OwnedFd) -> io::Result<()> {
    let limit = Timespec {
        tv_sec: HELLO_WAIT_SECS,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(control, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&limit)) {
            Ok(0) => return Err(io::Error::other("no answer within 30 s")),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = [0u8; MAX_CONTROL];
    let n = loop {
        match rustix::net::recv(control, &mut buf, rustix::net::RecvFlags::empty()) {
            Ok((n, _)) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if &buf[..n.min(MAX_CONTROL)] == HELLO {
        Ok(())
    } else if n == 0 {
        Err(io::Error::other(
            "it exited first (does this executable link the microvm backend?)",
        ))
    } else {
        Err(io::Error::other("it answered something else"))
    }
}

/// A cell whose VM lives in a host process.
pub(crate) struct HostedCell {
    /// Shared with the killer, which shuts it down: a kill ends a wait for the host's answer
    /// even if the host never gives one.
    stream: Arc<UnixStream>,
    host: Arc<Host>,
    cell: u64,
    /// Frames sent in this step, carried by the next request.
    pending: Vec<Vec<u8>>,
    /// The number of the current (or last) transaction, and whether the next request starts it.
    txn: u64,
    new_transaction: bool,
    /// The transaction running now (0: idle), for the interrupter: an interrupt while idle
    /// cancels nothing, as in this process.
    active: Arc<AtomicU64>,
    /// A request is out and its answer not read: the VM may be running.
    in_flight: bool,
    killed: Arc<AtomicBool>,
    mem_size: u64,
    /// The largest batch of frames the guest's buffer takes at once.
    frame_cap: usize,
    /// The guest's answer to a handshake, known to its host without running it (`greeting`).
    known_answer: Option<Arc<[u8]>>,
    /// The read timeout set on the socket (see [`HostedCell::bound_wait`]).
    read_bound: Option<Duration>,
    /// What the cell used, as its host said with its last answer.
    used: Arc<Reported>,
}

/// What a hosted cell used as of its host's last answer: its VM's memory and CPU clock are in
/// the host process, and change only while a request of this cell runs there.
#[derive(Debug, Default)]
struct Reported {
    /// Live heap bytes plus one (0: not known).
    heap_bytes: AtomicU64,
    cpu_ns: AtomicU64,
}

impl Reported {
    /// Records `used`; a host's claim of more heap than the guest has memory is cut to it.
    fn set(&self, used: Used, mem_size: u64) {
        let heap = used
            .heap_bytes
            .map_or(0, |b| b.min(mem_size).saturating_add(1));
        self.heap_bytes.store(heap, Ordering::Relaxed);
        self.cpu_ns.store(used.cpu_ns, Ordering::Relaxed);
    }

    fn heap_bytes(&self) -> Option<u64> {
        self.heap_bytes.load(Ordering::Relaxed).checked_sub(1)
    }

    fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }
}

/// Starts a cell in a host holding fewer than `per_host` (starting a host if none does).
pub(crate) fn spawn(
    cfg: &VmConfig,
    start: Start,
    cpu_time_ms: u64,
    per_host: usize,
    exe: &Path,
) -> Result<HostedCell, VmError> {
    let mut last = None;
    // A host that died since it was chosen is replaced once.
    for _ in 0..2 {
        let host = reserve_host(per_host.max(1), exe)?;
        match spawn_in(&host, cfg, start, cpu_time_ms) {
            Ok(cell) => return Ok(cell),
            Err(e) => {
                host.release();
                if !host.broken.load(Ordering::SeqCst) {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| VmError::Host("no VM host could start the cell".into())))
}

fn spawn_in(
    host: &Arc<Host>,
    cfg: &VmConfig,
    start: Start,
    cpu_time_ms: u64,
) -> Result<HostedCell, VmError> {
    let (mut ours, theirs) =
        UnixStream::pair().map_err(|e| host_error("a hosted cell's socket", e))?;
    let cell = NEXT_CELL.fetch_add(1, Ordering::Relaxed);
    let record = Control::Spawn {
        cell,
        start,
        mem_size: cfg.mem_size,
        frame_cap: cfg.frame_cap,
        heap_quota: cfg.heap_quota,
        mode: cfg.mode(),
        cpu_time_ms,
    };
    host.send(&record, Some(&OwnedFd::from(theirs)))
        .map_err(|e| host_error("handing a cell to its VM host", e))?;
    match read_message_within::<FromVm>(&mut ours, ANSWER_ROOM) {
        Ok(FromVm::Started {
            mem_size,
            answer,
            used,
        }) => Ok(HostedCell {
            frame_cap: usize::try_from(cfg.frame_cap).unwrap_or(usize::MAX),
            known_answer: answer.map(Arc::from),
            read_bound: None,
            stream: Arc::new(ours),
            host: host.clone(),
            cell,
            pending: Vec::new(),
            txn: 0,
            new_transaction: false,
            active: Arc::default(),
            in_flight: false,
            killed: Arc::default(),
            used: {
                let reported = Arc::new(Reported::default());
                reported.set(used, mem_size);
                reported
            },
            mem_size,
        }),
        Ok(FromVm::SpawnFailed {
            unavailable: true,
            reason,
        }) => Err(VmError::KvmUnavailable(reason)),
        Ok(FromVm::SpawnFailed { reason, .. }) => Err(VmError::Host(reason)),
        Ok(other) => Err(VmError::Host(format!(
            "the VM host answered a spawn with {other:?}"
        ))),
        Err(e) => {
            if matches!(e, ReadError::Closed) {
                host.broken.store(true, Ordering::SeqCst);
            }
            Err(host_error("the VM host did not start the cell", e))
        }
    }
}

impl HostedCell {
    /// The host process's pid.
    pub(crate) fn host_pid(&self) -> u32 {
        self.host.child_slot().as_ref().map_or(0, Child::id)
    }

    /// Guest RAM in bytes.
    pub(crate) fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// The largest batch of frames the guest's buffer takes at once.
    pub(crate) fn frame_cap(&self) -> usize {
        self.frame_cap
    }

    /// The guest's answer to any handshake it accepts, when its host knew it at the start;
    /// once (see `Vm::take_known_answer`).
    pub(crate) fn take_known_answer(&mut self) -> Option<Arc<[u8]>> {
        self.known_answer.take()
    }

    /// A transaction starts: the next request says so.
    pub(crate) fn start_transaction(&mut self) {
        self.txn += 1;
        self.new_transaction = true;
        self.active.store(self.txn, Ordering::SeqCst);
    }

    /// The transaction ended: an interrupt from now on cancels nothing.
    pub(crate) fn end_transaction(&mut self) {
        self.active.store(0, Ordering::SeqCst);
    }

    /// The host side refused what the guest did: the VM never runs again.
    pub(crate) fn abort(&mut self, reason: CellError) {
        if write_message(&mut &*self.stream, &ToVm::Abort(reason)).is_err() {
            self.host.broken.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn killer(&self) -> Arc<dyn AbiKiller> {
        Arc::new(HostedKiller {
            host: self.host.clone(),
            cell: self.cell,
            killed: self.killed.clone(),
            stream: self.stream.clone(),
        })
    }

    /// Tells, without waiting, whether the cell's VM host went away between transactions.
    pub(crate) fn probe(&self) -> Arc<dyn UsageProbe> {
        Arc::new(HostedProbe {
            stream: self.stream.clone(),
            killed: self.killed.clone(),
            used: self.used.clone(),
        })
    }

    pub(crate) fn interrupter(&self) -> Arc<dyn AbiInterrupter> {
        Arc::new(HostedInterrupter {
            host: self.host.clone(),
            cell: self.cell,
            active: self.active.clone(),
        })
    }

    fn lost(&self, e: impl std::fmt::Display) -> PipeError {
        self.host.broken.store(true, Ordering::SeqCst);
        PipeError::Crashed(format!("the cell's VM host process stopped ({e})"))
    }
}

/// How long past a transaction's deadline the supervisor waits for its host's answer.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

impl HostedCell {
    /// Bounds the wait for the host's answer by the transaction's deadline plus
    /// [`DEADLINE_GRACE`] (none without a deadline: a kill ends that wait). The bound is rounded
    /// up to a tenth of a second and set only when it changes, so a cell whose transactions share
    /// one wall time pays for the socket option once, not per transaction.
    fn bound_wait(&mut self, deadline: Option<Instant>) {
        let bound = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now()) + DEADLINE_GRACE;
            Duration::from_millis(left.as_millis().div_ceil(100).saturating_mul(100) as u64)
        });
        if bound != self.read_bound {
            // Fails only for a zero duration, which `DEADLINE_GRACE` rules out.
            if self.stream.set_read_timeout(bound).is_ok() {
                self.read_bound = bound;
            }
        }
    }
}

impl FrameIo for HostedCell {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        if self.killed.load(Ordering::SeqCst) {
            return Err(PipeError::Killed);
        }
        self.pending.push(frame.to_vec());
        Ok(())
    }

    fn recv_frame(
        &mut self,
        deadline: Option<Instant>,
        max_len: u32,
    ) -> Result<Vec<u8>, PipeError> {
        if self.killed.load(Ordering::SeqCst) {
            return Err(PipeError::Killed);
        }
        let request = ToVm::Run {
            txn: self.txn,
            starts: std::mem::take(&mut self.new_transaction),
            frames: std::mem::take(&mut self.pending),
            timeout_us: deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_micros()
                    .min(u64::MAX as u128) as u64
            }),
            max_len,
        };
        self.bound_wait(deadline);
        let stream = &mut &*self.stream;
        let sent = write_message(stream, &request).and_then(|()| stream.flush());
        self.in_flight = true;
        let answer = sent
            .map_err(ReadError::Io)
            .and_then(|()| read_message_within::<Answer>(stream, max_len as usize + ANSWER_ROOM));
        let answer = match answer {
            // The killer shut the socket: the cell is killed, the host is not at fault.
            Err(_) if self.killed.load(Ordering::SeqCst) => return Err(PipeError::Killed),
            // No answer well past the deadline (the host stops the guest at it and answers at
            // once): the host hangs or ignores it. The transaction has timed out either way; the
            // host side then kills the cell, as after any timeout.
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(PipeError::TimedOut);
            }
            other => other.map_err(|e| self.lost(e))?,
        };
        self.in_flight = false;
        self.used.set(answer.used, self.mem_size);
        match answer.reply {
            FromVm::Frame(body) if body.len() <= max_len as usize => Ok(body),
            FromVm::Frame(body) => Err(self.lost(format!(
                "it handed over {} bytes past the cap of {max_len}",
                body.len()
            ))),
            FromVm::TimedOut => Err(PipeError::TimedOut),
            FromVm::Idle => Err(PipeError::Aborted(CellError::new(
                ErrorCode::ProtocolViolation,
                "the guest waits for a host frame in the middle of a transaction",
            ))),
            FromVm::Stop(stop) => Err(stop.into()),
            other => Err(self.lost(format!("it answered a run with {other:?}"))),
        }
    }
}

impl Drop for HostedCell {
    fn drop(&mut self) {
        if self.in_flight {
            // Dropped mid-request (the caller gave up): stop the guest, or it runs on until its
            // deadline with nobody reading.
            let _ = self.host.send(&Control::Kill { cell: self.cell }, None);
        }
        // Ending the socket ends the cell's thread in the host; its VM goes back to the host's
        // pool when it is healthy. Shut, not only closed: a killer handle still holds it.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.host.release();
        // Its VM's memory is no longer the cell's, as for a cell in this process.
        self.used.heap_bytes.store(0, Ordering::Relaxed);
    }
}

struct HostedKiller {
    host: Arc<Host>,
    cell: u64,
    killed: Arc<AtomicBool>,
    stream: Arc<UnixStream>,
}

impl AbiKiller for HostedKiller {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        // The wait for the host's answer ends now, whatever the host does (a stopped or hung
        // host never answers); the record stops the VM in the host. A dead host has nothing
        // left to kill.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.host.send(&Control::Kill { cell: self.cell }, None);
    }
}

/// A hosted cell's usage, as its host last reported it, and its liveness: its VM lives only as
/// long as its host process, whose end of the cell's socket the kernel closes when the process
/// dies (killed from outside, out of memory). A cell in this process can only die inside a
/// transaction, which reports it.
struct HostedProbe {
    stream: Arc<UnixStream>,
    /// Set by this cell's own kill, which shuts the socket down: no end "on its own" then.
    killed: Arc<AtomicBool>,
    used: Arc<Reported>,
}

impl UsageProbe for HostedProbe {
    /// As of the host's last answer: a transaction in flight shows what the cell used before
    /// it.
    fn memory_bytes(&self) -> Option<u64> {
        self.used.heap_bytes()
    }

    fn cpu_time(&self) -> Option<Duration> {
        Some(self.used.cpu_time())
    }

    fn ended(&self) -> bool {
        if self.killed.load(Ordering::SeqCst) {
            return false;
        }
        // The peer's close, not data: an answer left unread (none is, between transactions)
        // would only be readable.
        let mut fds = [PollFd::new(&*self.stream, PollFlags::RDHUP)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(1))
            && fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP)
    }
}

struct HostedInterrupter {
    host: Arc<Host>,
    cell: u64,
    active: Arc<AtomicU64>,
}

impl AbiInterrupter for HostedInterrupter {
    fn interrupt(&self) {
        // The transaction running now, by number: the record travels apart from the cell's own
        // requests, and must neither miss it nor land in the next one.
        let txn = self.active.load(Ordering::SeqCst);
        if txn != 0 {
            let _ = self.host.send(
                &Control::Interrupt {
                    cell: self.cell,
                    txn,
                },
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_usage_claims_are_capped_at_the_guests_memory() {
        let reported = Reported::default();
        assert_eq!(reported.heap_bytes(), None, "nothing said yet");
        for (claim, read) in [
            (Some(0), Some(0)),
            (Some(4096), Some(4096)),
            (Some(u64::MAX), Some(1 << 20)),
            (None, None),
        ] {
            reported.set(
                Used {
                    heap_bytes: claim,
                    cpu_ns: 7,
                },
                1 << 20,
            );
            assert_eq!(reported.heap_bytes(), read, "{claim:?}");
        }
        assert_eq!(reported.cpu_time(), Duration::from_nanos(7));
    }
}
