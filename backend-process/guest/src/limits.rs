//! How the guest turns its limits into errors the host can name instead of crashes:
//! a failed allocation, the CPU-time timer and a stack overflow each end the process
//! with a status of their own ([`exit`]); an interrupt from the host (`SIGUSR1`) sets the
//! flag the engine's progress callback reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use abi::ErrorCode;

use crate::fork_server::fork_protocol::{STACK_BYTES, exit};

// The main thread runs the engine: its stack limit must leave the engine its stack.
const _: () = assert!(runtime::limits::ENGINE_STACK_BYTES as u64 + (1 << 20) <= STACK_BYTES);

/// The system allocator, holding the heap to the cell's quota as every backend counts it: the
/// bytes of the live blocks the program asked for (block sizes as requested, the allocator's
/// own overhead left out), from the fork server's blocks the cell inherited to its engine's.
/// An allocation past the quota, or one the system refuses (the address-space limit), ends the
/// cell with [`exit::OUT_OF_MEMORY`] (reported as `limit_memory`) instead of an abort. The
/// memory cgroup sits above the quota, with room for that overhead, the stack and the runtime:
/// it bounds the process, the quota the script.
struct ExitOnExhaustion;

/// Bytes of the live blocks, as [`ExitOnExhaustion`] counts them.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The most [`LIVE`] may reach: the cell's `memory_mib` (unbounded in the fork server and until
/// [`set_heap_quota`]).
static QUOTA: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Holds the heap to `bytes` from now on (0: unbounded). Call before any script runs.
pub fn set_heap_quota(bytes: u64) {
    let quota = match bytes {
        0 => usize::MAX,
        b => usize::try_from(b).unwrap_or(usize::MAX),
    };
    QUOTA.store(quota, Ordering::Relaxed);
}

fn out_of_memory() -> ! {
    // SAFETY: plain exit.
    unsafe { libc::_exit(exit::OUT_OF_MEMORY) }
}

// The guest has one thread and its signal handlers never allocate, so the count is a plain
// load and store (a locked add at every allocation and free cost about 5 % on a script that
// builds 20,000 strings).

/// Counts `grow` more live bytes, or ends the cell if that would pass the quota.
#[inline(always)]
fn take(grow: usize) {
    let live = LIVE.load(Ordering::Relaxed).saturating_add(grow);
    if live > QUOTA.load(Ordering::Relaxed) {
        out_of_memory()
    }
    LIVE.store(live, Ordering::Relaxed);
}

#[inline(always)]
fn give(shrink: usize) {
    LIVE.store(
        LIVE.load(Ordering::Relaxed).saturating_sub(shrink),
        Ordering::Relaxed,
    );
}

// SAFETY: forwards to the system allocator unchanged; a block is counted before it is made and
// after it is freed, and a null result ends the process.
unsafe impl GlobalAlloc for ExitOnExhaustion {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        take(layout.size());
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            out_of_memory()
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        take(layout.size());
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            out_of_memory()
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
        give(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A block grows by the difference, as the system's realloc (mremap for a large one)
        // holds it: a growing string reaches the same size under the same quota everywhere.
        if new_size > layout.size() {
            take(new_size - layout.size());
        }
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            out_of_memory()
        }
        if new_size < layout.size() {
            give(layout.size() - new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: ExitOnExhaustion = ExitOnExhaustion;

/// Set by `SIGUSR1`, the host's interrupt; cleared when the next exec or call arrives.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The engine's progress callback: `Cancelled` once the host has interrupted.
pub struct Interrupted;

impl runtime::Interrupt for Interrupted {
    fn check(&self, _: u64) -> Option<ErrorCode> {
        INTERRUPTED
            .load(Ordering::Relaxed)
            .then_some(ErrorCode::Cancelled)
    }
}

pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::Relaxed);
}

/// The top of the main thread's stack (roughly: an address in `main`'s frame).
static STACK_TOP: AtomicUsize = AtomicUsize::new(0);

/// Where `SIGSEGV` runs: the faulting stack has no room left.
static mut ALT_STACK: [u8; 64 << 10] = [0; 64 << 10];

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

extern "C" fn on_cpu_time(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(exit::CPU_TIME) }
}

extern "C" fn on_segv(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let top = STACK_TOP.load(Ordering::Relaxed);
    // The main stack grows down to at most STACK_BYTES below its top; a fault there or
    // in the guard gap under it is the stack running out.
    let reach = STACK_BYTES as usize + (2 << 20);
    if addr < top && addr >= top.saturating_sub(reach) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(exit::STACK_OVERFLOW) }
    }
    // Any other fault is a crash: let it happen again with the default action.
    // SAFETY: resetting a handler to SIG_DFL.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
    }
}

fn install(signal: libc::c_int, handler: usize, flags: libc::c_int) {
    // SAFETY: a zeroed sigaction with an empty mask and a handler of the right shape.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Installs the interrupt, CPU-time and stack-overflow handlers (the last on an
/// alternate stack). Call from `main`, before any script runs.
#[inline(never)]
pub fn install_handlers() {
    let here = 0u8;
    STACK_TOP.store(
        std::hint::black_box(&here) as *const u8 as usize + (64 << 10),
        Ordering::Relaxed,
    );
    // SAFETY: the alternate stack is a static used only by this process's signal frames.
    unsafe {
        let stack = libc::stack_t {
            ss_sp: (&raw mut ALT_STACK).cast(),
            ss_flags: 0,
            ss_size: 64 << 10,
        };
        libc::sigaltstack(&stack, std::ptr::null_mut());
    }
    install(
        libc::SIGUSR1,
        on_interrupt as extern "C" fn(libc::c_int) as usize,
        libc::SA_RESTART,
    );
    install(
        libc::SIGXCPU,
        on_cpu_time as extern "C" fn(libc::c_int) as usize,
        0,
    );
    install(
        libc::SIGSEGV,
        on_segv as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize,
        libc::SA_SIGINFO | libc::SA_ONSTACK,
    );
}
