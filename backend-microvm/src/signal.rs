//! Kicking a vCPU out of `KVM_RUN`: `immediate_exit` plus a signal to the thread in `KVM_RUN`,
//! for `kill` from any thread and for per-call deadlines (sent by the watchdog thread).
use std::cell::Cell;
use std::sync::OnceLock;

use crate::error::VmError;

thread_local! {
    /// `immediate_exit` byte of the kvm_run area of the vCPU this thread is running, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
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

/// The calling thread's id (cached: `gettid` is a syscall).
pub(crate) fn current_tid() -> libc::pid_t {
    thread_local! {
        static TID: libc::pid_t = gettid();
    }
    TID.with(|t| *t)
}
