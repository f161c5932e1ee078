//! One KVM virtual machine with one vCPU, run on the calling thread: the channel (frames in
//! both directions through the shared buffers), the run loop and how each exit is reported.
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;

use crate::control::{Control, Interrupter, Killer, Usage};
use crate::cpu::{CpuBudget, thread_cpu_time};
use crate::error::VmError;
use crate::layout::*;
use crate::machine::{Machine, Recycle};
use crate::setup::{Layout, VmConfig};
use crate::trim::Trim;
use crate::{reaper, signal, watchdog};

/// Cap on frames queued for a guest that does not consume them.
const MAX_QUEUED: usize = 64;
/// Longest guest panic message copied out.
const MAX_PANIC_MSG: usize = 4096;
/// Bytes of a batch buffer kept between batches at most.
const INBOX_KEEP: usize = 64 * 1024;

/// Outcome of [`Vm::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// One whole frame the guest sent (at most `frame_cap` bytes).
    Frame(Vec<u8>),
    /// The guest is waiting for a host frame and none is queued: nothing can arrive.
    Idle,
    /// The deadline passed while the guest was running; it is paused and resumes on the next call.
    TimedOut,
}

enum Wait {
    /// Bytes `from..to` of the guest->host buffer: whole frames, in the order placed.
    Frame {
        from: u64,
        to: u64,
    },
    Idle,
    TimedOut,
}

enum Exit {
    Doorbell,
    Panic(u32),
    Oom,
    Nop,
    Returned,
    Interrupted,
    Fatal(VmError),
}

const H2G_LEN: u64 = MAILBOX_H2G_LEN;
const G2H_LEN: u64 = MAILBOX_G2H_LEN;
const OOM_SIZE: u64 = MAILBOX_OOM_SIZE;

/// A running (or paused) guest. The vCPU runs only inside [`Vm::recv`], on the calling thread.
pub struct Vm {
    machine: Option<Machine>,
    layout: Layout,
    kill: Arc<Control>,
    queue: VecDeque<Vec<u8>>,
    /// Whether the watchdog knows this VM (it is added once, at its first deadline).
    watched: bool,
    idle: bool,
    dead: Option<VmError>,
    cpu: CpuBudget,
    /// Where the machine goes when this VM is dropped healthy.
    home: Option<Arc<dyn Recycle>>,
    /// Built for this start (not taken from the pool).
    pub(crate) fresh: bool,
    /// Taken from the pool after serving an earlier cell (reset since).
    pub(crate) reused: bool,
    /// Bytes of the guest's current batch already handed over: the guest places one-way frames
    /// without an exit, and frames placed before a stop from outside (a kick) are taken then;
    /// the count returns to 0 at the doorbell that ends the batch.
    taken: u64,
    /// The guest's stop, held back until the frames it placed before it are handed over.
    deferred: Option<VmError>,
    /// A batch of several frames copied out of the guest, handed over one at a time.
    inbox: Vec<u8>,
    inbox_pos: usize,
    /// The guest's answer to a handshake (a frame body), known while the VM is still at its
    /// template's snapshot point: nothing was sent to it yet (see `greeting`).
    pub(crate) known_answer: Option<Arc<[u8]>>,
    /// A cold VM's idle trim: its vCPU runs under the trim's lock.
    trim: Option<Arc<Trim>>,
    /// A cold VM's guest has not rung its doorbell yet: its runs are its boot (and the
    /// handshake that comes with it), the VMM's work of starting a cell, which no backend
    /// charges to the cell's CPU time. (A VM from the snapshot booted before it was copied.)
    starting: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mem_size", &self.layout.boot.mem_size)
            .field("idle", &self.idle)
            .field("dead", &self.dead)
            .finish()
    }
}

impl Vm {
    /// Cold boot: new VM, fresh memory, the guest starts at its entry point.
    pub fn boot(cfg: &VmConfig) -> Result<Vm, VmError> {
        let (machine, layout) = crate::cold_spare::build(cfg)?;
        Ok(Vm::cold(machine, layout))
    }

    pub(crate) fn from_parts(
        machine: Machine,
        layout: Layout,
        home: Option<Arc<dyn Recycle>>,
    ) -> Vm {
        let mailbox = machine.mem.host_addr() + MAILBOX_ADDR;
        let mem_size = layout.boot.mem_size;
        Vm {
            machine: Some(machine),
            layout,
            kill: Control::new(mailbox as usize, mem_size),
            queue: VecDeque::new(),
            watched: false,
            idle: false,
            dead: None,
            cpu: CpuBudget::default(),
            home,
            fresh: true,
            reused: false,
            taken: 0,
            deferred: None,
            inbox: Vec::new(),
            inbox_pos: 0,
            known_answer: None,
            trim: None,
            starting: false,
        }
    }

    /// A cold VM: its heap is given back to the host, but for the pages the guest wrote, when it
    /// idles (`trim`).
    pub(crate) fn cold(machine: Machine, layout: Layout) -> Vm {
        // SAFETY: `take_machine` releases the trim before the machine, and its memory, can leave
        // this VM.
        let trim = unsafe { Trim::start(&machine.mem, &layout) };
        let mut vm = Vm::from_parts(machine, layout, None);
        vm.trim = trim;
        vm.starting = true;
        vm
    }

    /// The guest's answer to any handshake this host sends, when it is known without running
    /// the guest: a VM at its template's snapshot point to which nothing was sent yet.
    pub(crate) fn take_known_answer(&mut self) -> Option<Arc<[u8]>> {
        self.known_answer.take()
    }

    /// Takes the machine out of this VM; its interrupt word is unregistered first, so no
    /// [`Interrupter`] writes into memory that is no longer this cell's.
    pub(crate) fn take_machine(&mut self) -> Option<Machine> {
        self.kill.release_memory();
        if let Some(trim) = self.trim.take() {
            trim.release();
        }
        self.machine.take()
    }

    /// Limits the CPU time the guest may spend running over the VM's life, its boot left out
    /// (None: unlimited). Past it the VM stops with [`VmError::CpuTimeExceeded`].
    pub fn set_cpu_limit(&mut self, limit: Option<Duration>) {
        self.cpu.set_limit(limit);
    }

    /// CPU time the guest has spent running since its boot.
    pub fn cpu_used(&self) -> Duration {
        self.cpu.used()
    }

    /// What the cell uses, read from any thread (see [`Usage`]).
    pub fn usage(&self) -> Usage {
        self.kill.usage()
    }

    /// A handle that interrupts this VM's transaction from another thread.
    pub fn interrupter(&self) -> Interrupter {
        self.kill.interrupter()
    }

    /// Clears the guest's interrupt word: an interrupt only cancels the transaction it arrives
    /// in. One store into guest memory; the guest is not running.
    pub fn clear_interrupt(&self) -> Result<(), VmError> {
        self.machine()?
            .mem
            .atomic_u32(MAILBOX_INTERRUPT)?
            .store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn mem_size(&self) -> u64 {
        self.layout.boot.mem_size
    }

    /// Largest frame accepted in either direction.
    pub fn frame_cap(&self) -> usize {
        self.layout.boot.h2g_cap.min(self.layout.boot.g2h_cap) as usize
    }

    /// Heap bytes the guest allocator manages.
    pub fn heap_size(&self) -> u64 {
        self.layout.boot.heap_size
    }

    /// A handle that kills this VM from another thread.
    pub fn killer(&self) -> Killer {
        self.kill.killer()
    }

    /// The error that stopped this VM, if it is dead.
    pub fn dead_reason(&self) -> Option<&VmError> {
        self.dead.as_ref()
    }

    fn machine(&self) -> Result<&Machine, VmError> {
        self.machine
            .as_ref()
            .ok_or_else(|| VmError::Dead(Box::new(VmError::Killed)))
    }

    fn check_alive(&self) -> Result<(), VmError> {
        if let Some(e) = &self.dead {
            return Err(VmError::Dead(Box::new(e.clone())));
        }
        if self.kill.is_killed() {
            return Err(VmError::Killed);
        }
        Ok(())
    }

    fn fail<T>(&mut self, e: VmError) -> Result<T, VmError> {
        if self.dead.is_none() {
            self.dead = Some(e.clone());
        }
        Err(e)
    }

    /// Queue one frame for the guest; it is delivered when the guest next asks for one.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), VmError> {
        self.check_alive()?;
        // Past the snapshot point: the guest's answers are its own from now on.
        self.known_answer = None;
        let cap = self.layout.boot.h2g_cap;
        if frame.is_empty() || frame.len() as u64 > cap {
            return Err(VmError::HostFrameTooLarge {
                len: frame.len() as u64,
                cap,
            });
        }
        if self.queue.len() >= MAX_QUEUED {
            return self.fail(VmError::Backpressure {
                queued: self.queue.len(),
            });
        }
        // Usually the buffer is free and nothing is queued: place the frame without a copy.
        if self.queue.is_empty() && self.place(frame)? {
            return Ok(());
        }
        self.queue.push_back(frame.to_vec());
        self.pump()
    }

    /// Put `frame` in the host->guest buffer if the guest consumed the last one.
    fn place(&self, frame: &[u8]) -> Result<bool, VmError> {
        let mem = &self.machine()?.mem;
        if mem.read_u32(H2G_LEN)? != 0 {
            return Ok(false);
        }
        mem.write(self.layout.boot.h2g_base, frame)?;
        mem.write_u32(H2G_LEN, frame.len() as u32)?;
        Ok(true)
    }

    /// Move the next queued frame into the host->guest buffer if the guest consumed the last.
    fn pump(&mut self) -> Result<(), VmError> {
        if let Some(f) = self.queue.front()
            && self.place(f)?
        {
            self.queue.pop_front();
        }
        Ok(())
    }

    fn run_once(&mut self) -> Exit {
        let Some(m) = self.machine.as_mut() else {
            return Exit::Fatal(VmError::Killed);
        };
        // Held until the exit is handled: the idle trim never rewrites memory the guest runs on.
        let _running = self.trim.as_deref().map(Trim::running);
        // Order matters (see `watchdog`): the handler's pointer first, then the tid a kick is
        // aimed at, then the checks a kick sent before the tid was visible would have missed.
        let ie: *mut u8 = &mut m.vcpu.get_kvm_run().immediate_exit;
        let guard = signal::RunGuard::new(ie);
        self.kill.set_running(Some(signal::current_tid()));
        let exit = if self.kill.is_killed() {
            Exit::Fatal(VmError::Killed)
        } else if self.kill.deadline.passed() {
            Exit::Interrupted
        } else {
            let counted = !self.starting;
            let start = if counted {
                let start = thread_cpu_time();
                self.kill.run_begins(start);
                start
            } else {
                Duration::ZERO
            };
            let run = m.vcpu.run();
            if counted {
                self.cpu.charge(thread_cpu_time().saturating_sub(start));
                self.kill.run_ended(self.cpu.used());
            }
            match run {
                Ok(VcpuExit::IoIn(PORT_DOORBELL, _)) => Exit::Doorbell,
                Ok(VcpuExit::IoIn(PORT_NOP, _)) => Exit::Nop,
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut v = [0u8; 4];
                    let n = data.len().min(4);
                    v[..n].copy_from_slice(&data[..n]);
                    let value = u32::from_le_bytes(v);
                    match port {
                        PORT_PANIC => Exit::Panic(value),
                        PORT_OOM => Exit::Oom,
                        PORT_NOP => Exit::Nop,
                        PORT_EXIT => Exit::Returned,
                        p => Exit::Fatal(VmError::UndefinedPort {
                            port: p,
                            write: true,
                        }),
                    }
                }
                Ok(VcpuExit::IoIn(port, _)) => {
                    Exit::Fatal(VmError::UndefinedPort { port, write: false })
                }
                Ok(VcpuExit::MmioRead(addr, _)) => {
                    Exit::Fatal(VmError::OutsideMemory { addr, write: false })
                }
                Ok(VcpuExit::MmioWrite(addr, _)) => {
                    Exit::Fatal(VmError::OutsideMemory { addr, write: true })
                }
                Ok(VcpuExit::Shutdown) => Exit::Fatal(match m.vcpu.get_regs() {
                    Ok(regs) if is_stack_overflow(regs.rsp) => {
                        VmError::StackOverflow { rsp: regs.rsp }
                    }
                    _ => VmError::TripleFault,
                }),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the exit union.
                    let sub = unsafe { m.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    if sub == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                        Exit::Fatal(VmError::EmulationFailure)
                    } else {
                        Exit::Fatal(VmError::InternalError { suberror: sub })
                    }
                }
                Ok(VcpuExit::FailEntry(reason, _)) => Exit::Fatal(VmError::FailEntry { reason }),
                Ok(VcpuExit::Intr) => Exit::Interrupted,
                Ok(other) => Exit::Fatal(VmError::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Exit::Interrupted
                }
                Err(e) => Exit::Fatal(VmError::kvm("KVM_RUN", e)),
            }
        };
        self.kill.set_running(None);
        drop(guard);
        m.vcpu.set_kvm_immediate_exit(0);
        exit
    }

    /// Run the guest on this thread until it hands over a frame, waits idle, the deadline
    /// passes, or it stops (typed error; the VM is then dead).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Recv, VmError> {
        match self.wait(deadline)? {
            Wait::Frame { from, to } => {
                let mut buf = vec![0u8; (to - from) as usize];
                self.machine()?
                    .mem
                    .read(self.layout.boot.g2h_base + from, &mut buf)?;
                Ok(Recv::Frame(buf))
            }
            Wait::Idle => Ok(Recv::Idle),
            Wait::TimedOut => Ok(Recv::TimedOut),
        }
    }

    /// Like [`Vm::recv`] for wire frames: each 4-byte length prefix is read from guest memory and
    /// checked against `max_len` and against the bytes the guest handed over before the body is
    /// allocated; returns one body without its prefix (the guest may hand over several frames
    /// at one exit). A bad prefix kills the VM (typed as a wire error).
    pub fn recv_body(&mut self, deadline: Option<Instant>, max_len: u32) -> Result<Recv, VmError> {
        if self.inbox_pos < self.inbox.len() {
            if let Some(e) = &self.dead {
                // Stopped (a bad frame, an abort): the rest of the batch is never handed over.
                return Err(VmError::Dead(Box::new(e.clone())));
            }
            return self.next_in_inbox(max_len);
        }
        let (from, to) = match self.wait(deadline)? {
            Wait::Frame { from, to } => (from, to),
            Wait::Idle => return Ok(Recv::Idle),
            Wait::TimedOut => return Ok(Recv::TimedOut),
        };
        let (base, len) = (self.layout.boot.g2h_base + from, to - from);
        if len < abi::wire::HEADER_LEN as u64 {
            return self.fail(VmError::BadFrame(abi::wire::WireError::Empty));
        }
        let mut head = [0u8; abi::wire::HEADER_LEN];
        self.machine()?.mem.read(base, &mut head)?;
        let n = match abi::wire::body_len(head, max_len) {
            Ok(n) => n as u64,
            Err(e) => return self.fail(VmError::BadFrame(e)),
        };
        if n != len - abi::wire::HEADER_LEN as u64 {
            // Several frames (or a truncated one): copy the batch out once (the guest may
            // rewrite its buffer when it runs again; it is at most the buffer's size) and hand
            // them over one by one, each prefix checked as it comes.
            let mut inbox = std::mem::take(&mut self.inbox);
            inbox.resize(len as usize, 0);
            self.machine()?.mem.read(base, &mut inbox)?;
            self.inbox = inbox;
            self.inbox_pos = 0;
            return self.next_in_inbox(max_len);
        }
        let mut body = vec![0u8; n as usize];
        self.machine()?
            .mem
            .read(base + abi::wire::HEADER_LEN as u64, &mut body)?;
        Ok(Recv::Frame(body))
    }

    /// The next frame of a batch copied out by [`Vm::recv_body`].
    fn next_in_inbox(&mut self, max_len: u32) -> Result<Recv, VmError> {
        let body = match abi::wire::split_first(&self.inbox[self.inbox_pos..], max_len) {
            Ok((body, _)) => body.to_vec(),
            Err(e) => return self.fail(VmError::BadFrame(e)),
        };
        self.inbox_pos += abi::wire::HEADER_LEN + body.len();
        if self.inbox_pos == self.inbox.len() {
            // A large batch's buffer is not kept for the cell's life (a guest could make every
            // idle cell hold one).
            if self.inbox.capacity() > INBOX_KEEP {
                self.inbox = Vec::new();
            }
            self.inbox.clear();
            self.inbox_pos = 0;
        }
        Ok(Recv::Frame(body))
    }

    /// Arms the watchdog for the earlier of `deadline` and the instant the CPU budget could be
    /// spent at the earliest.
    fn arm(&mut self, deadline: Option<Instant>) -> Result<(), VmError> {
        // Unlimited cells do not even read the clock; a boot is not charged.
        let cpu_end = if self.cpu.is_limited() && !self.starting {
            self.cpu.earliest_end(Instant::now())
        } else {
            None
        };
        let kick = match (deadline, cpu_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        watchdog::set_deadline(&self.kill, &mut self.watched, kick)
    }

    fn cpu_exhausted(&mut self) -> Result<(), VmError> {
        match self.cpu.exhausted() {
            Some((limit, used)) => self.fail(VmError::CpuTimeExceeded {
                limit_ms: limit.as_millis() as u64,
                used_ms: used.as_millis() as u64,
            }),
            None => Ok(()),
        }
    }

    /// Frames the guest placed in its buffer without ringing, once it was stopped (a kick, a
    /// crash): they came before the stop, so they are handed over first.
    fn take_placed(&mut self) -> Result<Option<Wait>, VmError> {
        let len = self.machine()?.mem.read_u32(G2H_LEN)? as u64;
        if len <= self.taken {
            return Ok(None);
        }
        let cap = self.layout.boot.g2h_cap;
        if len > cap {
            return self.fail(VmError::FrameTooLarge { len, cap });
        }
        let from = std::mem::replace(&mut self.taken, len);
        Ok(Some(Wait::Frame { from, to: len }))
    }

    /// Stops the VM with `e`, after handing over the frames the guest placed before it.
    fn fail_after_placed(&mut self, e: VmError) -> Result<Wait, VmError> {
        match self.take_placed()? {
            Some(frames) => {
                self.deferred = Some(e);
                Ok(frames)
            }
            None => self.fail(e),
        }
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<Wait, VmError> {
        self.check_alive()?;
        if let Some(e) = self.deferred.take() {
            return self.fail(e);
        }
        self.cpu_exhausted()?;
        self.arm(deadline)?;
        loop {
            self.pump()?;
            if self.idle {
                if self.machine()?.mem.read_u32(H2G_LEN)? == 0 {
                    return Ok(Wait::Idle);
                }
                self.idle = false;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Wait::TimedOut);
            }
            match self.run_once() {
                Exit::Doorbell => {
                    // Booted: from here on the guest runs the cell's code.
                    self.starting = false;
                    self.cpu_exhausted()?;
                    let mem = &self.machine()?.mem;
                    let len = mem.read_u32(G2H_LEN)? as u64;
                    mem.write_u32(G2H_LEN, 0)?;
                    let from = std::mem::take(&mut self.taken);
                    if len == 0 {
                        self.idle = true;
                        continue;
                    }
                    let cap = self.layout.boot.g2h_cap;
                    if len > cap {
                        return self.fail(VmError::FrameTooLarge { len, cap });
                    }
                    if len <= from {
                        // Every frame of the batch was taken at an earlier stop.
                        continue;
                    }
                    return Ok(Wait::Frame { from, to: len });
                }
                Exit::Interrupted => {
                    if let Some(frames) = self.take_placed()? {
                        return Ok(frames);
                    }
                    if self.kill.is_killed() {
                        return self.fail(VmError::Killed);
                    }
                    self.cpu_exhausted()?;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Wait::TimedOut);
                    }
                    if self.cpu.is_limited() {
                        // The kick came at the earliest instant the budget could be spent, but
                        // the thread also ran host code or waited: aim at the new earliest end.
                        self.arm(deadline)?;
                    }
                }
                Exit::Panic(len) => {
                    let n = (len as usize)
                        .min(MAX_PANIC_MSG)
                        .min(self.layout.boot.g2h_cap as usize);
                    let mut buf = vec![0u8; n];
                    self.machine()?
                        .mem
                        .read(self.layout.boot.g2h_base, &mut buf)?;
                    let msg = String::from_utf8_lossy(&buf).into_owned();
                    return self.fail(VmError::GuestPanic(msg));
                }
                Exit::Oom => {
                    let requested = self.machine()?.mem.read_u64(OOM_SIZE)?;
                    // The cell's memory quota (`setup::heap_room`), else the heap's RAM.
                    let limit = match self.layout.boot.heap_quota {
                        0 => self.layout.boot.heap_size,
                        quota => quota,
                    };
                    return self.fail_after_placed(VmError::GuestOutOfMemory { requested, limit });
                }
                Exit::Nop => {
                    return self.fail_after_placed(VmError::UndefinedPort {
                        port: PORT_NOP,
                        write: true,
                    });
                }
                Exit::Returned => return self.fail_after_placed(VmError::GuestExited),
                Exit::Fatal(e) => return self.fail_after_placed(e),
            }
        }
    }

    /// Bench only: `n` round trips of the floor guest (each a bare `out` exit and re-entry).
    #[doc(hidden)]
    pub fn floor_exits(&mut self, n: u64) -> Result<(), VmError> {
        self.check_alive()?;
        for _ in 0..n {
            match self.run_once() {
                Exit::Nop => {}
                Exit::Interrupted => {}
                Exit::Fatal(e) => return self.fail(e),
                _ => return self.fail(VmError::UnexpectedExit("floor guest left its loop".into())),
            }
        }
        Ok(())
    }

    /// Test only: copy guest memory out (bounds checked).
    #[doc(hidden)]
    pub fn debug_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), VmError> {
        self.machine()?.mem.read(addr, buf)
    }

    /// Test only: write guest memory (bounds checked).
    #[doc(hidden)]
    pub fn debug_write(&self, addr: u64, data: &[u8]) -> Result<(), VmError> {
        self.machine()?.mem.write(addr, data)
    }

    /// Test only: guest-physical addresses of the guest pages resident in host memory.
    #[doc(hidden)]
    pub fn debug_resident_pages(&self) -> Result<Vec<u64>, VmError> {
        self.machine()?.mem.resident_pages()
    }

    /// Whether this VM came from the pool (a reset VM of an earlier cell).
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Whether this VM was built for this start: neither a reset VM of an earlier cell nor one
    /// the pool built ahead of demand.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Test only: the boot info the host wrote.
    #[doc(hidden)]
    pub fn boot_info(&self) -> BootInfo {
        self.layout.boot
    }

    /// Stops the VM because the host side refused what the guest did: every later operation
    /// fails with [`VmError::Aborted`], and the guest never runs again.
    pub fn abort(&mut self, reason: abi::CellError) {
        let _ = self.fail::<()>(VmError::Aborted(reason));
    }

    pub(crate) fn reusable(&self) -> bool {
        self.dead.is_none() && self.deferred.is_none() && !self.kill.is_killed()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let Some(m) = self.take_machine() else { return };
        match self.home.clone() {
            Some(home) if self.reusable() => home.recycle(m),
            _ => reaper::destroy_later(m),
        }
    }
}
