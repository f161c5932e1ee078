//! A transaction's operations, counted by the cell, and the first reason it was stopped.
//!
//! Not the engine's count: Rhai keeps it in a per-call state that a native function calling
//! back into the script (`map`, `filter`, `reduce`, `sort`, ...) clones and, in this build,
//! drops when the callback returns, so loops run inside callbacks never reached
//! `max_operations`, and a check keyed to the count (the in-process clock) might never come.
//! And some native functions (`sort`, `dedup`) discard a callback's error, which could turn a
//! stop (a kill, the wall time, a limit) into a success. Here every operation at any depth
//! counts once, and a stop sticks: each later operation stops again, and the transaction
//! answers with the stop whatever the script made of it. (The stack guard's error is not a
//! stop: it passes as the script unwinds.)

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use abi::{CellError, ErrorCode};

/// Where a stop is kept in [`Meter::state`]: its code plus one in the top 17 bits, above any
/// count of operations a transaction could reach. With it set the word passes every budget, so
/// the hot path needs one load and one compare to see a stop, a spent budget or neither.
const STOP_SHIFT: u32 = 47;
const COUNT_MASK: u64 = (1 << STOP_SHIFT) - 1;

/// One cell's meter; the engine's progress callback ticks it once per operation.
pub(crate) struct Meter {
    /// The last operation allowed: `max_operations`, or all of them for 0 (unlimited).
    last_allowed: u64,
    /// Operations spent in this transaction, and its stop (see [`STOP_SHIFT`]).
    state: AtomicU64,
}

impl Meter {
    pub(crate) fn new(budget: u64) -> Self {
        Meter {
            last_allowed: if budget == 0 {
                COUNT_MASK
            } else {
                budget.min(COUNT_MASK)
            },
            state: AtomicU64::new(0),
        }
    }

    /// Starts a transaction: nothing spent, nothing stopped.
    pub(crate) fn begin(&self) {
        self.state.store(0, Relaxed);
    }

    /// Counts one operation; `Some(code)` when the transaction must stop: the budget is spent,
    /// `check` (given the operations so far) says so, or an earlier operation stopped.
    /// One cell runs on one thread at a time, so plain loads and stores suffice.
    #[inline]
    pub(crate) fn tick(&self, check: impl FnOnce(u64) -> Option<ErrorCode>) -> Option<ErrorCode> {
        let spent = self.state.load(Relaxed) + 1;
        let code = if spent > self.last_allowed {
            // Stopped before (the stop sits above every count), or the budget is spent now.
            self.stopped().unwrap_or(ErrorCode::LimitOperations)
        } else {
            self.state.store(spent, Relaxed);
            check(spent)?
        };
        self.stop(code);
        Some(code)
    }

    /// Stops the transaction with `code`; it sticks. Also for a check made outside the
    /// engine's operations (the parser's).
    pub(crate) fn stop(&self, code: ErrorCode) {
        let spent = self.state.load(Relaxed) & COUNT_MASK;
        self.state.store(
            (u64::from(code.as_u16()) + 1) << STOP_SHIFT | spent,
            Relaxed,
        );
    }

    /// The code the transaction was stopped with, if it was.
    pub(crate) fn stopped(&self) -> Option<ErrorCode> {
        let raw = self.state.load(Relaxed) >> STOP_SHIFT;
        u16::try_from(raw.checked_sub(1)?)
            .ok()
            .map(ErrorCode::from_wire)
    }

    /// The transaction's answer: `result`, unless it was stopped and the script went on past
    /// the stop (a native function discarded it); then the stop, worded as `stopped` words it.
    pub(crate) fn verdict<T>(
        &self,
        result: Result<T, CellError>,
        stopped: impl FnOnce(ErrorCode) -> CellError,
    ) -> Result<T, CellError> {
        match (self.stopped(), result) {
            (None, result) => result,
            (Some(code), Err(e)) if e.code == code => Err(e),
            (Some(code), _) => Err(stopped(code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_the_operation_past_it_and_the_stop_sticks() {
        let meter = Meter::new(3);
        meter.begin();
        for _ in 0..3 {
            assert_eq!(meter.tick(|_| None), None);
        }
        assert_eq!(meter.tick(|_| None), Some(ErrorCode::LimitOperations));
        // Later operations stop again, whatever the check says.
        assert_eq!(
            meter.tick(|_| Some(ErrorCode::TimedOut)),
            Some(ErrorCode::LimitOperations)
        );
        meter.begin();
        assert_eq!(
            meter.tick(|_| None),
            None,
            "a new transaction starts afresh"
        );
    }

    #[test]
    fn the_check_sees_every_operation_and_its_stop_sticks() {
        let meter = Meter::new(0);
        meter.begin();
        let mut seen = alloc::vec::Vec::new();
        for _ in 0..5 {
            assert_eq!(
                meter.tick(|n| {
                    seen.push(n);
                    None
                }),
                None
            );
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(
            meter.tick(|_| Some(ErrorCode::Cancelled)),
            Some(ErrorCode::Cancelled)
        );
        assert_eq!(meter.tick(|_| None), Some(ErrorCode::Cancelled));
    }

    #[test]
    fn any_code_is_kept_whatever_was_spent() {
        for budget in [0, 1, 1_000, u64::MAX] {
            for code in [
                ErrorCode::Cancelled,
                ErrorCode::TimedOut,
                ErrorCode::Unknown(u16::MAX),
            ] {
                let meter = Meter::new(budget);
                meter.begin();
                assert_eq!(meter.stopped(), None);
                assert_eq!(meter.tick(|_| Some(code)), Some(code), "{budget}");
                assert_eq!(meter.stopped(), Some(code));
                assert_eq!(meter.tick(|_| None), Some(code), "the stop sticks");
            }
        }
    }

    #[test]
    fn a_stopped_transaction_answers_with_its_stop() {
        let meter = Meter::new(0);
        meter.begin();
        let word = |code| CellError::new(code, "stopped");
        assert_eq!(meter.verdict(Ok(1), word), Ok(1));
        meter.tick(|_| Some(ErrorCode::TimedOut));
        let swallowed = meter.verdict(Ok(1), word).unwrap_err();
        assert_eq!(swallowed.code, ErrorCode::TimedOut);
        let own = CellError::new(ErrorCode::TimedOut, "at line 3");
        assert_eq!(meter.verdict::<()>(Err(own.clone()), word), Err(own));
        let other = CellError::new(ErrorCode::Runtime, "error in comparer for sorting");
        assert_eq!(
            meter.verdict::<()>(Err(other), word).unwrap_err().code,
            ErrorCode::TimedOut
        );
    }
}
