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

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use abi::{CellError, ErrorCode};

/// No stop recorded (codes are stored plus one).
const RUNNING: u32 = 0;

/// One cell's meter; the engine's progress callback ticks it once per operation.
pub(crate) struct Meter {
    /// `max_operations` per transaction; 0 is unlimited.
    budget: u64,
    spent: AtomicU64,
    stop: AtomicU32,
}

impl Meter {
    pub(crate) fn new(budget: u64) -> Self {
        Meter {
            budget,
            spent: AtomicU64::new(0),
            stop: AtomicU32::new(RUNNING),
        }
    }

    /// Starts a transaction: nothing spent, nothing stopped.
    pub(crate) fn begin(&self) {
        self.spent.store(0, Relaxed);
        self.stop.store(RUNNING, Relaxed);
    }

    /// Counts one operation; `Some(code)` when the transaction must stop: the budget is spent,
    /// `check` (given the operations so far) says so, or an earlier operation stopped.
    /// One cell runs on one thread at a time, so plain loads and stores suffice.
    pub(crate) fn tick(&self, check: impl FnOnce(u64) -> Option<ErrorCode>) -> Option<ErrorCode> {
        if let Some(code) = self.stopped() {
            return Some(code);
        }
        let spent = self.spent.load(Relaxed) + 1;
        self.spent.store(spent, Relaxed);
        let code = if self.budget != 0 && spent > self.budget {
            Some(ErrorCode::LimitOperations)
        } else {
            check(spent)
        }?;
        self.stop.store(u32::from(code.as_u16()) + 1, Relaxed);
        Some(code)
    }

    /// The code the transaction was stopped with, if it was.
    pub(crate) fn stopped(&self) -> Option<ErrorCode> {
        let raw = self.stop.load(Relaxed);
        (raw != RUNNING)
            .then(|| u16::try_from(raw - 1).ok().and_then(ErrorCode::from_u16))
            .flatten()
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
