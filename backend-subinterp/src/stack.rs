//! The stack the engine runs on in-process. The engine runs on the caller's thread, whose stack
//! the embedding program sized for itself; so every transaction switches to a stack of known
//! size (one per thread, reused), which the runtime's stack budget measures against. A script
//! that nests too deep ends with a limit error on this stack, never overflows the caller's.

use corosensei::stack::{DefaultStack, Stack};
use std::cell::RefCell;

/// Stack the engine's budget allows before a script is stopped with `limit_call_depth`:
/// [`runtime::limits::ENGINE_STACK_BYTES`], as on every backend; debug builds (tests) have
/// frames several times larger and get proportionally more.
pub const ENGINE_BUDGET_BYTES: usize = if cfg!(debug_assertions) {
    runtime::limits::ENGINE_STACK_BYTES * 16
} else {
    runtime::limits::ENGINE_STACK_BYTES
};

/// The switched stack: the budget plus generous headroom for one operation's own recursion
/// (a value through the engine's size checks, a conversion). Address space only: pages are
/// touched as used and given back after a transaction that went deep.
pub const STACK_BYTES: usize = ENGINE_BUDGET_BYTES + (256 << 20);

/// Past this much stack used in one transaction, its pages are given back afterwards.
const GIVE_BACK_ABOVE: usize = 2 << 20;

thread_local! {
    static SPARE: RefCell<Option<DefaultStack>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's engine stack (a fresh one if it is in use further up; `Err` if
/// none can be mapped). `f` returns its result and how much stack it used, so that pages
/// touched by a deep script are given back.
pub fn run_on_engine_stack<R>(f: impl FnOnce() -> (R, usize)) -> std::io::Result<R> {
    let mut stack = match SPARE.with(|s| s.borrow_mut().take()) {
        Some(stack) => stack,
        None => DefaultStack::new(STACK_BYTES)?,
    };
    let (r, deepest) = corosensei::on_stack(&mut stack, f);
    if deepest > GIVE_BACK_ABOVE {
        give_back(&stack);
    }
    SPARE.with(|s| *s.borrow_mut() = Some(stack));
    Ok(r)
}

/// Drops the pages of `stack` below its top few hundred KiB (they read as zeros again).
fn give_back(stack: &DefaultStack) {
    let keep = 512 << 10;
    let (limit, base) = (stack.limit().get(), stack.base().get());
    let len = (base - limit).saturating_sub(keep);
    // SAFETY: [limit, limit + len) lies inside the stack's own mapping, below the part that is
    // in use (this runs after the switch back, with nothing of the engine left on it), so
    // dropping its pages discards nothing anyone reads.
    unsafe {
        libc::madvise(limit as *mut libc::c_void, len, libc::MADV_DONTNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closure_runs_on_the_engine_stack_and_it_is_reused() {
        let caller = 0u8;
        let caller = &caller as *const u8 as usize;
        let first = run_on_engine_stack(|| {
            let here = 0u8;
            (std::hint::black_box(&here) as *const u8 as usize, 0)
        })
        .unwrap();
        assert!(first.abs_diff(caller) > 1 << 20, "not on a switched stack");
        // A deep transaction gives its pages back; the stack stays usable.
        let second = run_on_engine_stack(|| {
            let here = 0u8;
            (
                std::hint::black_box(&here) as *const u8 as usize,
                usize::MAX,
            )
        })
        .unwrap();
        assert_eq!(first, second, "the thread's stack is reused");
    }

    #[test]
    fn a_panic_on_the_engine_stack_reaches_the_caller() {
        let r =
            std::panic::catch_unwind(|| run_on_engine_stack(|| -> ((), usize) { panic!("boom") }));
        assert!(r.is_err());
        // The thread's stack was lost with the panic; the next run maps a new one.
        assert_eq!(run_on_engine_stack(|| (7, 0)).unwrap(), 7);
    }
}
