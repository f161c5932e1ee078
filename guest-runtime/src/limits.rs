//! Bounds that tie the engine's depth limits to the stack every backend gives it.
//!
//! Every backend runs the engine on a stack of at least [`ENGINE_STACK_BYTES`] (a switched stack
//! in-process, the guest's main stack in a process, the guest stack in a microVM). Two things
//! keep a script from overflowing it:
//!
//! * policy validation (and the guest, at the handshake) refuses depth limits above the `MAX_*`
//!   bounds here ([`check`]), so parsing and evaluating a script within its limits fits;
//! * a stack budget ([`StackGuard`]), checked on every operation and every parsed token, stops
//!   whatever still nests deeper (calls whose bodies nest expressions, closures in closures)
//!   with `limit_call_depth` (evaluation) or `limit_expr_depth` (parsing), never a crash.
//!
//! The bounds were measured in release builds of the guests (the builds every backend runs):
//! a plain recursion at [`MAX_CALL_DEPTH`] and a parse at [`MAX_EXPR_DEPTH`] use well under the
//! budget; see the tests that run a script at each bound on every backend.

use abi::EngineLimits;
#[cfg(test)]
use alloc::string::ToString;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Stack, in bytes, that every backend gives the engine (release builds).
pub const ENGINE_STACK_BYTES: usize = 1792 << 10;

/// Stack kept free below the budget for the deepest single operation (a native function, the
/// recursion of one value at most [`MAX_VALUE_NESTING`] deep, or a conversion).
pub const STACK_RESERVE_BYTES: usize = 256 << 10;

/// Upper bound of `max_call_depth` a policy may set.
pub const MAX_CALL_DEPTH: u32 = 128;

/// Upper bound of `max_expr_depth` a policy may set.
pub const MAX_EXPR_DEPTH: u32 = 256;

/// Deepest nesting of arrays and maps a script may build (`[]` is 1 deep, `[[]]` 2): past it,
/// `limit_value`. The size limits count one collection each, so they no longer bound depth;
/// this does, so that the engine's recursive work on one value (printing, comparing, copying,
/// dropping it) fits in [`STACK_RESERVE_BYTES`]. Checked where a value is nested into another,
/// in time proportional to the value nested (which was just made or copied).
pub const MAX_VALUE_NESTING: usize = 256;

/// Deepest value that crosses the boundary (the ABI's own bound).
pub const MAX_VALUE_DEPTH: usize = abi::value::MAX_VALUE_DEPTH;

/// An engine limit a policy or a handshake set above what the stack holds. (Display by hand:
/// this crate also builds `no_std` for the microVM guest, whose dependency set stays small.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// `field` is set to `value`, above the `bound` the engine's stack holds.
    AboveBound {
        /// The limit's name.
        field: &'static str,
        /// The value asked for.
        value: u64,
        /// The largest value allowed.
        bound: u64,
    },
    /// `field` is 0: a depth limit must be positive.
    Zero {
        /// The limit's name.
        field: &'static str,
    },
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LimitError::AboveBound {
                field,
                value,
                bound,
            } => write!(
                f,
                "`{field}` is {value}, above the bound of {bound} that the engine's stack holds"
            ),
            LimitError::Zero { field } => write!(f, "`{field}` must be positive"),
        }
    }
}

impl core::error::Error for LimitError {}

impl LimitError {
    /// The limit's name (`max_call_depth`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            LimitError::AboveBound { field, .. } | LimitError::Zero { field } => field,
        }
    }
}

/// Refuses depth limits that are zero or above the bounds the engine's stack holds.
pub fn check(limits: &EngineLimits) -> Result<(), LimitError> {
    for (field, value, bound) in [
        ("max_call_depth", limits.max_call_depth, MAX_CALL_DEPTH),
        ("max_expr_depth", limits.max_expr_depth, MAX_EXPR_DEPTH),
    ] {
        if value == 0 {
            return Err(LimitError::Zero { field });
        }
        if value > bound {
            return Err(LimitError::AboveBound {
                field,
                value: value.into(),
                bound: bound.into(),
            });
        }
    }
    Ok(())
}

/// The address of a local of the caller's frame: where the stack is now.
#[inline(always)]
fn stack_position() -> usize {
    let marker = 0u8;
    core::hint::black_box(&marker) as *const u8 as usize
}

/// Watches the stack the engine runs on: [`StackGuard::enter`] marks where a transaction
/// starts, [`StackGuard::exceeded`] says whether the engine has gone deeper than its budget
/// below that mark. Stacks grow down on every target the backends run on.
#[derive(Debug)]
pub struct StackGuard {
    base: AtomicUsize,
    budget: usize,
    deepest: AtomicUsize,
}

impl StackGuard {
    /// A guard allowing `stack_bytes` less [`STACK_RESERVE_BYTES`] below the mark.
    pub fn new(stack_bytes: usize) -> StackGuard {
        StackGuard {
            base: AtomicUsize::new(0),
            budget: stack_bytes.saturating_sub(STACK_RESERVE_BYTES),
            deepest: AtomicUsize::new(0),
        }
    }

    /// Marks the start of a transaction at the caller's frame.
    #[inline(never)]
    pub fn enter(&self) {
        self.base.store(stack_position(), Ordering::Relaxed);
    }

    /// Whether the caller's frame lies deeper than the budget below the mark. Inlined: the
    /// engine asks on every operation, and the caller's frame is as good a mark as its own.
    #[inline]
    pub fn exceeded(&self) -> bool {
        let base = self.base.load(Ordering::Relaxed);
        let used = base.saturating_sub(stack_position());
        if used > self.deepest.load(Ordering::Relaxed) {
            self.deepest.store(used, Ordering::Relaxed);
        }
        base != 0 && used > self.budget
    }

    /// The most stack seen in use below a mark since the last call (then reset), so that a
    /// backend can give back the pages a deep script touched.
    pub fn take_deepest(&self) -> usize {
        self.deepest.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_at_the_bounds_pass_and_above_or_zero_are_typed_errors() {
        let mut l = EngineLimits {
            max_call_depth: MAX_CALL_DEPTH,
            max_expr_depth: MAX_EXPR_DEPTH,
            ..EngineLimits::default()
        };
        assert_eq!(check(&l), Ok(()));
        l.max_call_depth += 1;
        let e = check(&l).unwrap_err();
        assert_eq!(
            e,
            LimitError::AboveBound {
                field: "max_call_depth",
                value: u64::from(MAX_CALL_DEPTH) + 1,
                bound: MAX_CALL_DEPTH.into()
            }
        );
        assert_eq!(e.field(), "max_call_depth");
        assert_eq!(
            e.to_string(),
            "`max_call_depth` is 129, above the bound of 128 that the engine's stack holds"
        );
        l.max_call_depth = MAX_CALL_DEPTH;
        l.max_expr_depth = MAX_EXPR_DEPTH + 1;
        assert_eq!(check(&l).unwrap_err().field(), "max_expr_depth");
        l.max_expr_depth = 0;
        assert_eq!(
            check(&l).unwrap_err(),
            LimitError::Zero {
                field: "max_expr_depth"
            }
        );
        // The defaults are within the bounds.
        assert_eq!(check(&EngineLimits::default()), Ok(()));
    }

    #[inline(never)]
    fn descend(guard: &StackGuard, levels: usize) -> bool {
        let pad = core::hint::black_box([0u8; 1024]);
        if guard.exceeded() {
            return true;
        }
        levels > 0 && descend(guard, levels - 1) && pad[0] == 0
    }

    #[test]
    fn the_guard_trips_past_its_budget_and_not_before() {
        let guard = StackGuard::new(STACK_RESERVE_BYTES + (64 << 10));
        assert!(!guard.exceeded(), "no mark yet: nothing to measure");
        guard.enter();
        assert!(!descend(&guard, 8), "8 KiB deep is within 64 KiB");
        assert!(descend(&guard, 1000), "1000 KiB deep is past 64 KiB");
        let deepest = guard.take_deepest();
        assert!(deepest > 64 << 10, "{deepest}");
        assert_eq!(guard.take_deepest(), 0);
    }
}
