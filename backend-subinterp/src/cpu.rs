//! A cell's CPU time and its limit: the CPU time of the thread that runs each exec/call, summed
//! over the cell's life, which is also what the cell reports. Read from the thread CPU clock
//! (a system call of about 0.5 µs here: it has no vDSO path); the progress callback reads it
//! only every [`crate::CLOCK_EVERY`] operations.
//!
//! A cell with a limit reads it when each exec/call begins and ends. A cell without one would
//! pay those two reads on every exec/call for a figure reported in milliseconds, a sixth of a
//! cold start: it times an exec/call by the monotonic clock (vDSO) until the first clock check
//! ([`crate::CLOCK_EVERY`] operations in) or a broker request, whichever comes first, and by the
//! thread CPU clock from then on. So a short exec/call counts its wall time, an upper bound of
//! its CPU time off by what the scheduler took from it within those first operations; a long
//! one counts its CPU time but for that start, and no wait for a broker reply is counted.
use rustix::time::{ClockId, clock_gettime};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let ts = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[derive(Default)]
pub(crate) struct CpuBudget {
    limit: Option<Duration>,
    clock: Mutex<Clock>,
    exhausted: AtomicBool,
}

#[derive(Default)]
struct Clock {
    /// CPU time of finished operations.
    used: Duration,
    /// The running thread's CPU clock when the current operation began (or, without a limit,
    /// when it moved to that clock).
    started: Option<Duration>,
    /// Without a limit: when the current operation began, while it is timed by the monotonic
    /// clock.
    began: Option<Instant>,
}

impl CpuBudget {
    /// A budget of `limit_ms` (0: no limit).
    pub fn new(limit_ms: u64) -> Self {
        CpuBudget {
            limit: (limit_ms > 0).then(|| Duration::from_millis(limit_ms)),
            ..Self::default()
        }
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An operation begins on the calling thread.
    pub fn start(&self) {
        let mut c = self.clock();
        if self.limit.is_some() {
            c.started = Some(thread_cpu_time());
        } else {
            c.began = Some(Instant::now());
        }
    }

    /// The operation that began on the calling thread has ended: charge it.
    pub fn stop(&self) {
        let mut c = self.clock();
        if let Some(began) = c.began.take() {
            c.used += began.elapsed();
        }
        if let Some(start) = c.started.take() {
            c.used += thread_cpu_time().saturating_sub(start);
        }
    }

    /// Without a limit: the running operation is timed by the thread's CPU clock from now on
    /// (charging the monotonic time it ran so far). Call on the running thread before anything
    /// that may wait, and at each clock check.
    pub fn before_wait(&self) {
        let mut c = self.clock();
        if let Some(began) = c.began.take() {
            c.used += began.elapsed();
            c.started = Some(thread_cpu_time());
        }
    }

    /// Whether the limit is used up, reading the clock (call on the running thread). Without a
    /// limit, never; the operation moves to the thread's CPU clock (see [`Self::before_wait`]).
    pub fn exhausted_now(&self) -> bool {
        let Some(limit) = self.limit else {
            self.before_wait();
            return false;
        };
        if self.is_exhausted() {
            return true;
        }
        let c = self.clock();
        let running = c
            .started
            .map_or(Duration::ZERO, |s| thread_cpu_time().saturating_sub(s));
        if c.used + running >= limit {
            self.exhausted.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Whether the limit was found used up.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }
}

impl CpuBudget {
    /// CPU time charged so far (up to the end of the last transaction, or its first clock check).
    pub fn used(&self) -> Duration {
        self.clock().used
    }
}

impl fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.clock().used;
        match self.limit {
            Some(l) => write!(
                f,
                "{} ms of CPU time used, limit {} ms",
                used.as_millis(),
                l.as_millis()
            ),
            None => write!(f, "{} ms of CPU time used", used.as_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the calling thread has used `d` of CPU time.
    fn burn(d: Duration) {
        let from = thread_cpu_time();
        while thread_cpu_time() - from < d {
            std::hint::black_box(());
        }
    }

    #[test]
    fn without_a_limit_an_operation_counts_its_time_and_a_wait_after_the_switch_is_not() {
        let budget = CpuBudget::new(0);
        budget.before_wait();
        assert_eq!(
            budget.used(),
            Duration::ZERO,
            "nothing runs: nothing to switch"
        );
        // A short operation: its monotonic time.
        budget.start();
        burn(Duration::from_millis(1));
        budget.stop();
        let short = budget.used();
        assert!(short >= Duration::from_millis(1), "{short:?}");
        // Switched to the CPU clock before a wait: the sleep is not counted, the work is.
        budget.start();
        budget.before_wait();
        std::thread::sleep(Duration::from_millis(300));
        burn(Duration::from_millis(2));
        assert!(!budget.exhausted_now(), "no limit");
        budget.stop();
        let long = budget.used() - short;
        assert!(long >= Duration::from_millis(2), "{long:?}");
        assert!(
            long < Duration::from_millis(300),
            "a sleep of 300 ms counted as CPU: {long:?}"
        );
    }

    #[test]
    fn with_a_limit_only_the_cpu_clock_counts() {
        let budget = CpuBudget::new(10);
        budget.start();
        std::thread::sleep(Duration::from_millis(300));
        burn(Duration::from_millis(2));
        budget.stop();
        let used = budget.used();
        assert!(used >= Duration::from_millis(2), "{used:?}");
        assert!(used < Duration::from_millis(300), "{used:?}");
        assert!(!budget.exhausted_now());
        budget.start();
        burn(Duration::from_millis(10));
        assert!(budget.exhausted_now());
        budget.stop();
    }
}
