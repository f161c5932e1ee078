//! Kicking a vCPU out of `KVM_RUN`: `immediate_exit` plus a signal to the thread in `KVM_RUN`,
//! for `kill` from any thread and for per-call deadlines (a POSIX timer aimed at this thread).
use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::VmError;

thread_local! {
    /// `immediate_exit` byte of the kvm_run area of the vCPU this thread is running, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
    static TIMER: ThreadTimer = const { ThreadTimer { id: Cell::new(None) } };
}

pub(crate) fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + 6
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only touches a const-initialised thread local holding a raw pointer (no allocation, no
    // lock): async-signal-safe in practice, as Firecracker's vCPU kick handler does.
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is set only while this thread owns the vCPU and its kvm_run
        // mapping is alive (see `RunGuard`); a volatile byte store.
        unsafe { p.write_volatile(1) };
    }
}

static INSTALLED: OnceLock<Result<(), VmError>> = OnceLock::new();

pub(crate) fn install() -> Result<(), VmError> {
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
                .map_err(|e| VmError::kvm("sigaction", e))
        })
        .clone()
}

/// Publishes the vCPU's `immediate_exit` byte to this thread's kick handler while it runs.
pub(crate) struct RunGuard;

impl RunGuard {
    pub fn new(immediate_exit: *mut u8) -> Self {
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        RunGuard
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

pub(crate) fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Send the kick signal to thread `tid` of this process.
pub(crate) fn kick(tid: libc::pid_t) {
    // SAFETY: tgkill only sends a signal; the caller guarantees `tid` is a live thread of this
    // process (it holds the lock under which the running thread publishes its tid).
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
}

struct ThreadTimer {
    id: Cell<Option<libc::timer_t>>,
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        if let Some(id) = self.id.get() {
            // SAFETY: deleting a timer this thread created and nobody else uses.
            unsafe { libc::timer_delete(id) };
        }
    }
}

fn timer_id() -> Result<libc::timer_t, VmError> {
    TIMER.with(|t| {
        if let Some(id) = t.id.get() {
            return Ok(id);
        }
        // SAFETY: zeroed sigevent is a valid starting value; fields set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = kick_signal();
        sev.sigev_notify_thread_id = gettid();
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a sigevent and a timer id out-parameter.
        let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) };
        if r != 0 {
            return Err(VmError::Memory(format!(
                "timer_create: {}",
                std::io::Error::last_os_error()
            )));
        }
        t.id.set(Some(id));
        Ok(id)
    })
}

fn settime(d: std::time::Duration) -> Result<(), VmError> {
    let id = timer_id()?;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `id` is this thread's live timer; `spec` is a valid itimerspec.
    let r = unsafe { libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) };
    if r != 0 {
        return Err(VmError::Memory(format!(
            "timer_settime: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Arms this thread's kick timer for `deadline`; disarms on drop.
pub(crate) struct DeadlineTimer {
    armed: bool,
}

impl DeadlineTimer {
    pub fn arm(deadline: Option<Instant>) -> Result<Self, VmError> {
        let Some(deadline) = deadline else {
            return Ok(DeadlineTimer { armed: false });
        };
        // A zero it_value disarms, so use at least one nanosecond.
        let d = deadline
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_nanos(1));
        settime(d)?;
        Ok(DeadlineTimer { armed: true })
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        if self.armed {
            let _ = settime(std::time::Duration::ZERO);
        }
    }
}
