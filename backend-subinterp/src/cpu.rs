//! A cell's CPU time and its limit: the CPU time of the thread that runs each exec/call, summed
//! over the cell's life, which is also what the cell reports. Read from the thread CPU clock
//! (a system call of about 0.5 µs here: it has no vDSO path); the progress callback reads it
//! only every [`crate::CLOCK_EVERY`] operations.
//!
//! A cell with a limit reads it when each exec/call begins and ends. A cell without one would
//! pay those two reads on every exec/call for a figure reported in milliseconds, a sixth of a
//! cold start: it times an exec/call by the monotonic clock (vDSO) until the first clock check
//! ([`crate::CLOCK_EVERY`] operations in), leaving out the time the host side takes with the
//! cell's frames (a wait for a broker reply or for room in a full event queue among it), and by
//! the thread CPU clock from then on, under which a wait uses nothing. So a short exec/call
//! counts its own wall time, an upper bound of its CPU time off by what the scheduler took from
//! it within those first operations; a long one counts its CPU time but for that start.
//!
//! The figure is read from any thread, also while an exec/call runs: the part under way comes
//! from the running thread's CPU clock (its clock id, taken where the operation moved to it) or
//! the monotonic clock.
use rustix::time::{ClockId, clock_gettime};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The calling thread's CPU clock, which another thread can read while this one runs.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is the calling, live thread; the call writes one clockid we own
    // (glibc derives it from the thread's id: no system call).
    let ok = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
    ok.then_some(clock)
}

/// The time of another thread's CPU clock (see [`own_cpu_clock`]).
fn read_cpu_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; a stale clock is an error return.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

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
    /// when it moved to that clock), and that clock's id for readers on other threads.
    started: Option<Duration>,
    running_clock: Option<libc::clockid_t>,
    /// Without a limit: when the current operation began, while it is timed by the monotonic
    /// clock (moved later by the host side's time with its frames).
    began: Option<Instant>,
    /// Under the monotonic clock: since when the host side has been handling one of its frames.
    paused: Option<Instant>,
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
            c.running_clock = own_cpu_clock();
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
        c.running_clock = None;
    }

    /// Runs `f`, the host side's handling of one of the cell's frames, on the running thread:
    /// under the monotonic clock its time is left out (a wait for a broker reply or for room in
    /// the event queue is none of the cell's); under the thread's CPU clock a wait uses none.
    pub fn outside<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut c = self.clock();
            if c.began.is_none() {
                drop(c);
                return f();
            }
            c.paused = Some(Instant::now());
        }
        let out = f();
        let mut c = self.clock();
        let paused = c.paused.take();
        if let (Some(began), Some(paused)) = (c.began.as_mut(), paused) {
            *began += paused.elapsed();
        }
        out
    }

    /// Without a limit: the running operation is timed by the thread's CPU clock from now on
    /// (charging the monotonic time it ran so far). Called at each clock check.
    pub fn switch_to_cpu_clock(&self) {
        let mut c = self.clock();
        if let Some(began) = c.began.take() {
            c.used += began.elapsed();
            c.started = Some(thread_cpu_time());
            c.running_clock = own_cpu_clock();
        }
    }

    /// Whether the limit is used up, reading the clock (call on the running thread). Without a
    /// limit, never; the operation moves to the thread's CPU clock (see [`Self::switch_to_cpu_clock`]).
    pub fn exhausted_now(&self) -> bool {
        let Some(limit) = self.limit else {
            self.switch_to_cpu_clock();
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
    /// CPU time used so far, an exec/call under way included (read from any thread).
    pub fn used(&self) -> Duration {
        let c = self.clock();
        // The running thread cannot end its operation (nor end) while this lock is held.
        let running = match (c.began, c.started, c.running_clock) {
            (Some(began), ..) => c.paused.unwrap_or_else(Instant::now) - began,
            (None, Some(start), Some(clock)) => {
                read_cpu_clock(clock).map_or(Duration::ZERO, |now| now.saturating_sub(start))
            }
            _ => Duration::ZERO,
        };
        c.used + running
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
        budget.switch_to_cpu_clock();
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
        budget.switch_to_cpu_clock();
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
    fn another_thread_reads_the_operation_under_way() {
        use std::sync::Arc;
        use std::sync::mpsc::channel;
        // Limited (thread clock from the start), unlimited before and after its switch.
        for (limit, switch) in [(10_000, false), (0, false), (0, true)] {
            let budget = Arc::new(CpuBudget::new(limit));
            let (busy_tx, busy_rx) = channel();
            let (end_tx, end_rx) = channel::<()>();
            let worker = {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    budget.start();
                    if switch {
                        budget.switch_to_cpu_clock();
                    }
                    burn(Duration::from_millis(3));
                    busy_tx.send(()).unwrap();
                    end_rx.recv().unwrap();
                    budget.stop();
                })
            };
            busy_rx.recv().unwrap();
            let mid = budget.used();
            assert!(
                mid >= Duration::from_millis(3),
                "limit {limit}, switched {switch}: {mid:?}"
            );
            end_tx.send(()).unwrap();
            worker.join().unwrap();
            assert!(budget.used() >= mid, "limit {limit}, switched {switch}");
        }
    }

    #[test]
    fn the_host_sides_time_with_a_frame_is_left_out_under_either_clock() {
        for (limit, switch) in [(0, false), (0, true), (10_000, false)] {
            let budget = CpuBudget::new(limit);
            budget.start();
            if switch {
                budget.switch_to_cpu_clock();
            }
            burn(Duration::from_millis(1));
            let before = budget.used();
            let during = budget.outside(|| {
                std::thread::sleep(Duration::from_millis(300));
                budget.used()
            });
            assert!(
                during < before + Duration::from_millis(100),
                "limit {limit}, switched {switch}: {before:?} -> {during:?} while the host waited"
            );
            burn(Duration::from_millis(1));
            budget.stop();
            let used = budget.used();
            assert!(used >= Duration::from_millis(2), "{used:?}");
            assert!(
                used < Duration::from_millis(300),
                "limit {limit}, switched {switch}: the wait was counted: {used:?}"
            );
        }
        // Outside an operation nothing is timed.
        let budget = CpuBudget::new(0);
        assert_eq!(budget.outside(|| 5), 5);
        assert_eq!(budget.used(), Duration::ZERO);
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
