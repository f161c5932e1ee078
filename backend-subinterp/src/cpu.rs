//! A cell's CPU-time limit: the CPU time of the thread that runs each exec/call, summed over the
//! cell's life. Read from the thread CPU clock (a system call: it has no vDSO path), so the
//! progress callback reads it only every [`crate::CLOCK_EVERY`] operations and only when the
//! cell has a limit.
use rustix::time::{ClockId, clock_gettime};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    /// The running thread's CPU clock when the current operation began.
    started: Option<Duration>,
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
        if self.limit.is_some() {
            self.clock().started = Some(thread_cpu_time());
        }
    }

    /// The operation that began on the calling thread has ended: charge it.
    pub fn stop(&self) {
        let mut c = self.clock();
        if let Some(start) = c.started.take() {
            c.used += thread_cpu_time().saturating_sub(start);
        }
    }

    /// Whether the limit is used up, reading the clock (call on the running thread).
    pub fn exhausted_now(&self) -> bool {
        let Some(limit) = self.limit else {
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
    /// CPU time charged so far (up to the end of the last transaction).
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
