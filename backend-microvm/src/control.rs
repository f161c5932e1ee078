//! What other threads hold of a VM: the kill flag, the thread running its vCPU, the instant the
//! watchdog kicks it, its mailbox (the interrupt word, the guest's heap count) and the CPU time
//! it used; and the handles built on them ([`Killer`], [`Interrupter`], [`Usage`]).
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cpu::{cpu_clock_time, own_cpu_clock};
use crate::layout::{MAILBOX_ADDR, MAILBOX_HEAP_IN_USE, MAILBOX_INTERRUPT};
use crate::signal;

pub(crate) struct Control {
    killed: AtomicBool,
    /// Thread currently inside this VM's run step.
    tid: Mutex<Option<libc::pid_t>>,
    /// When the watchdog kicks the vCPU: the earlier of the call's deadline and the earliest
    /// instant the cell's CPU budget can be spent.
    pub(crate) deadline: Deadline,
    /// Host address of the guest's mailbox while the VM's memory is this cell's (0 once the
    /// memory went back to the pool or the reaper).
    mailbox: Mutex<usize>,
    /// The guest's memory size: the most its heap count may claim.
    mem_size: u64,
    /// CPU time the vCPU spent in the guest (see `Vm::run_once`).
    cpu: Mutex<CpuShare>,
}

/// What another thread needs to tell a VM's CPU time at any instant.
#[derive(Default)]
struct CpuShare {
    /// Charged up to the last exit.
    used: Duration,
    /// While the vCPU runs: the running thread's CPU clock and its time when the run began.
    running: Option<(libc::clockid_t, Duration)>,
}

impl Control {
    /// `mailbox`: host address of the guest's mailbox (see [`Interrupter`], [`Usage`]).
    pub(crate) fn new(mailbox: usize, mem_size: u64) -> Arc<Control> {
        Arc::new(Control {
            killed: AtomicBool::new(false),
            tid: Mutex::new(None),
            deadline: Deadline::default(),
            mailbox: Mutex::new(mailbox),
            mem_size,
            cpu: Mutex::default(),
        })
    }

    fn cpu(&self) -> std::sync::MutexGuard<'_, CpuShare> {
        self.cpu.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The vCPU enters the guest on the calling thread, whose CPU clock reads `start`.
    pub(crate) fn run_begins(&self, start: Duration) {
        self.cpu().running = Some((own_cpu_clock(), start));
    }

    /// The vCPU left the guest; the VM has used `used` in all.
    pub(crate) fn run_ended(&self, used: Duration) {
        let mut cpu = self.cpu();
        cpu.running = None;
        cpu.used = used;
    }

    /// The CPU time used so far, the running part included.
    fn cpu_used_now(&self) -> Duration {
        let cpu = self.cpu();
        // The running thread cannot leave its run step (and end) while this lock is held.
        let running = cpu
            .running
            .and_then(|(clock, start)| cpu_clock_time(clock).map(|now| now.saturating_sub(start)));
        cpu.used + running.unwrap_or_default()
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Publishes (Some) or clears (None) the thread inside this VM's run step.
    pub(crate) fn set_running(&self, tid: Option<libc::pid_t>) {
        *self.tid.lock().unwrap_or_else(|p| p.into_inner()) = tid;
    }

    /// The VM's memory is no longer this cell's: interrupts stop writing to it.
    pub(crate) fn release_memory(&self) {
        *self.mailbox.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    }

    /// Runs `f` on the host address of mailbox field `field` (a `MAILBOX_*` address) while the
    /// VM's memory is this cell's; `None` once it was released.
    fn with_mailbox<T>(&self, field: u64, f: impl FnOnce(usize) -> T) -> Option<T> {
        let mailbox = self.mailbox.lock().unwrap_or_else(|p| p.into_inner());
        (*mailbox != 0).then(|| f(*mailbox + (field - MAILBOX_ADDR) as usize))
    }

    pub(crate) fn killer(self: &Arc<Self>) -> Killer {
        Killer(self.clone())
    }

    pub(crate) fn interrupter(self: &Arc<Self>) -> Interrupter {
        Interrupter(self.clone())
    }

    pub(crate) fn usage(self: &Arc<Self>) -> Usage {
        Usage(self.clone())
    }

    /// Kicks the vCPU out of `KVM_RUN` if a thread is in this VM's run step. The signal is sent
    /// under the lock that thread publishes and clears its tid with, so it lands while the
    /// thread is still in its run step, where the handler's `immediate_exit` pointer is set.
    pub(crate) fn kick_if_running(&self) {
        let tid = self.tid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = *tid {
            signal::kick(t);
        }
    }
}

/// Kills a VM from any thread: the running `KVM_RUN` is interrupted promptly and every later
/// operation fails with [`VmError::Killed`](crate::VmError::Killed).
#[derive(Clone)]
pub struct Killer(Arc<Control>);

impl Killer {
    /// Kills the VM: marks it killed and kicks the vCPU out of the guest if it is running.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.kick_if_running();
    }

    /// Whether [`Killer::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::SeqCst)
    }
}

/// Ends the exec/call running in a VM from any thread without killing it: sets the guest's
/// interrupt word, which the engine's progress callback polls (no VM exit). The guest answers
/// the transaction with `cancelled` and stays usable; the host clears the word when the next
/// transaction starts, so an interrupt that arrives while nothing runs cancels nothing.
#[derive(Clone)]
pub struct Interrupter(Arc<Control>);

impl Interrupter {
    /// Sets the guest's interrupt word: the running exec/call ends with `cancelled`.
    pub fn interrupt(&self) {
        self.0.with_mailbox(MAILBOX_INTERRUPT, |word| {
            // SAFETY: the address is the 4-byte aligned interrupt word inside this VM's guest
            // memory, which stays mapped while it is registered: the VM clears the registration
            // under the lock `with_mailbox` holds before its memory is released. The guest reads
            // it from another CPU; the host only ever accesses it atomically.
            unsafe { AtomicU32::from_ptr(word as *mut u32) }.store(1, Ordering::SeqCst);
        });
    }
}

/// What a VM's cell uses, read from any thread, also while its vCPU runs: the live bytes of the
/// guest's heap, as its allocator counts them in the mailbox, and the CPU time the vCPU spent in
/// the guest (a run in progress read from its thread's CPU clock). A hostile guest can misstate its heap, never past its memory.
#[derive(Clone)]
pub struct Usage(Arc<Control>);

impl Usage {
    /// Live bytes of the guest's heap; `None` once the VM's memory is no longer this cell's.
    pub fn heap_bytes(&self) -> Option<u64> {
        self.0.with_mailbox(MAILBOX_HEAP_IN_USE, |field| {
            // SAFETY: the address is the 8-byte aligned heap count inside this VM's guest memory,
            // mapped while registered (as for `Interrupter::interrupt`); the guest writes it with
            // single aligned stores, so an atomic load sees one of its values.
            let claimed = unsafe { AtomicU64::from_ptr(field as *mut u64) }.load(Ordering::Relaxed);
            claimed.min(self.0.mem_size)
        })
    }

    /// CPU time the vCPU spent in the guest, up to now.
    pub fn cpu_time(&self) -> Duration {
        self.0.cpu_used_now()
    }
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage")
            .field("heap_bytes", &self.heap_bytes())
            .field("cpu_time", &self.cpu_time())
            .finish()
    }
}

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupter").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Killer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Killer")
            .field("killed", &self.is_killed())
            .finish()
    }
}

/// A deadline as nanoseconds since [`epoch`], 0 for none.
#[derive(Default)]
pub(crate) struct Deadline(AtomicU64);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Past deadlines become 1 (passed); ones beyond u64 nanoseconds (584 years) saturate.
fn to_nanos(t: Instant) -> u64 {
    let n = t.saturating_duration_since(epoch()).as_nanos();
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

fn from_nanos(n: u64) -> Instant {
    let d = Duration::from_nanos(n);
    epoch()
        .checked_add(d)
        .unwrap_or_else(|| epoch() + Duration::from_secs(u32::MAX as u64))
}

impl Deadline {
    pub fn get(&self) -> Option<Instant> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(from_nanos(n)),
        }
    }

    pub fn passed(&self) -> bool {
        self.get().is_some_and(|d| Instant::now() >= d)
    }

    pub fn set(&self, t: Instant) {
        self.0.store(to_nanos(t), Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mailbox in host memory: what the host reads of the guest's claims, and when it stops.
    #[test]
    fn the_heap_claim_is_capped_at_the_guests_memory_and_unread_once_released() {
        let mut mailbox = [0u64; 8];
        let control = Control::new(mailbox.as_mut_ptr() as usize, 1 << 20);
        let usage = control.usage();
        let field = (MAILBOX_HEAP_IN_USE - MAILBOX_ADDR) as usize / 8;
        for (claim, read) in [
            (0, 0),
            (4096, 4096),
            (1 << 20, 1 << 20),
            (u64::MAX, 1 << 20),
        ] {
            // SAFETY: the array lives through the test; the probe only loads atomically.
            unsafe { std::ptr::write_volatile(mailbox.as_mut_ptr().add(field), claim) };
            assert_eq!(usage.heap_bytes(), Some(read), "claimed {claim}");
        }
        // An interrupt lands in the word the guest polls.
        control.interrupter().interrupt();
        let word = (MAILBOX_INTERRUPT - MAILBOX_ADDR) as usize;
        // SAFETY: as above; the byte offset is the interrupt word's, 4-byte aligned.
        let set = unsafe {
            std::ptr::read_volatile(mailbox.as_ptr().cast::<u8>().add(word).cast::<u32>())
        };
        assert_eq!(set, 1);
        control.run_ended(Duration::from_micros(1500));
        // A run in progress counts as it goes, read from the running thread's clock.
        let start = crate::cpu::thread_cpu_time();
        control.run_begins(start);
        while crate::cpu::thread_cpu_time() - start < Duration::from_millis(2) {
            std::hint::black_box(());
        }
        assert!(usage.cpu_time() >= Duration::from_micros(3500), "{usage:?}");
        control.run_ended(Duration::from_micros(1500));
        control.release_memory();
        assert_eq!(usage.heap_bytes(), None, "memory no longer the cell's");
        assert_eq!(
            usage.cpu_time(),
            Duration::from_micros(1500),
            "the total stays"
        );
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(mailbox.as_mut_ptr().add(word / 8), 0) };
        control.interrupter().interrupt();
        assert_eq!(mailbox[word / 8], 0, "nothing is written once released");
    }

    #[test]
    fn deadlines_round_trip_and_far_ones_never_pass() {
        let d = Deadline::default();
        assert_eq!(d.get(), None);
        assert!(!d.passed());
        let soon = Instant::now() + Duration::from_secs(60);
        d.set(soon);
        let got = d.get().unwrap();
        assert!(got <= soon && soon - got < Duration::from_micros(1));
        assert!(!d.passed());
        // 2^64 ns + 1 µs from now: beyond what u64 nanoseconds hold; it must saturate, not wrap
        // into the past.
        let far = Instant::now() + Duration::new(18_446_744_073, 709_552_616);
        d.set(far);
        assert!(!d.passed());
        let past = Instant::now();
        d.set(past);
        assert!(d.passed());
    }
}
