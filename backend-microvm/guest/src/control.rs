//! What the engine's progress callback polls on every operation: the stack left and the host's
//! interrupt word. Both are a register read or one load: no VM exit, no allocation.
use crate::layout::*;
use abi::ErrorCode;

// The engine gets at least the stack every backend promises it (`runtime::limits`).
const _: () = assert!(
    engine_stack_bytes() >= runtime::limits::ENGINE_STACK_BYTES as u64,
    "the microvm guest stack is smaller than runtime::limits::ENGINE_STACK_BYTES: \
     grow STACK_TOP - STACK_BOTTOM (layout.rs) or move the stack above the image"
);

/// The current stack pointer.
#[inline(always)]
fn stack_pointer() -> u64 {
    let rsp: u64;
    // SAFETY: reads a register; touches no memory.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
    };
    rsp
}

/// Why the running script must stop now, given the stack pointer and the interrupt word.
pub fn verdict(rsp: u64, interrupt: u32) -> Option<ErrorCode> {
    if rsp < STACK_BOTTOM + STACK_PROBE_RESERVE {
        Some(ErrorCode::LimitCallDepth)
    } else if interrupt != 0 {
        Some(ErrorCode::Cancelled)
    } else {
        None
    }
}

/// How often (in operations) a running script publishes its heap's live bytes to the host.
const PUBLISH_EVERY: u64 = 4096;

/// The runtime's [`runtime::Interrupt`] in the microVM.
pub struct GuestControl;

impl runtime::Interrupt for GuestControl {
    fn check(&self, operations: u64) -> Option<ErrorCode> {
        // A long script's memory shows while it runs, not only at its next exit. (Not in the
        // host crate's unit tests of this file, which have no guest runtime.)
        if operations.is_multiple_of(PUBLISH_EVERY) {
            #[cfg(not(test))]
            crate::rt::publish_heap();
        }
        // SAFETY: the mailbox lives in the boot page, mapped and writable; the host may write the
        // word at any time, so it is read volatile.
        let word = unsafe {
            core::ptr::read_volatile(&raw const (*(MAILBOX_ADDR as *const Mailbox)).interrupt)
        };
        verdict(stack_pointer(), word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_probe_stops_the_engine_before_the_guard_and_wins_over_an_interrupt() {
        assert_eq!(verdict(STACK_TOP - 64, 0), None);
        assert_eq!(verdict(STACK_TOP - 64, 1), Some(ErrorCode::Cancelled));
        let edge = STACK_BOTTOM + STACK_PROBE_RESERVE;
        assert_eq!(verdict(edge, 0), None);
        assert_eq!(verdict(edge - 1, 0), Some(ErrorCode::LimitCallDepth));
        assert_eq!(
            verdict(STACK_BOTTOM + 8, 1),
            Some(ErrorCode::LimitCallDepth)
        );
        // What stays for the engine is at least what every backend promises it.
        assert!(engine_stack_bytes() >= runtime::limits::ENGINE_STACK_BYTES as u64);
    }

    #[test]
    fn the_stack_pointer_read_is_this_frame() {
        let local = 0u8;
        let here = &local as *const u8 as u64;
        let rsp = stack_pointer();
        assert!(
            rsp <= here && here - rsp < 64 * 1024,
            "{rsp:#x} vs {here:#x}"
        );
    }
}
