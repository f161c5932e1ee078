//! CPU time of a cell: what its vCPU spent inside `KVM_RUN`, read from the running thread's CPU
//! clock around each run (two `clock_gettime` system calls per run, well under a microsecond
//! beside the exit itself: the thread CPU clock has no vDSO path). It is the cell's reported CPU
//! time, and a limit is enforced by kicking the vCPU when its remaining budget could be spent
//! (see `Vm::wait`).
use std::time::{Duration, Instant};

/// CPU time the calling thread has used.
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_THREAD_CPUTIME_ID always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The calling thread's CPU clock, for reading from other threads while it runs.
pub(crate) fn own_cpu_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
    // SAFETY: pthread_self is the calling, live thread; the call writes one clockid we own
    // (glibc derives it from the thread's id, no system call). On failure the fallback, the
    // caller's own clock, is replaced by nothing: see `cpu_clock_time`.
    unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    clock
}

/// The time of CPU clock `clock` (a thread's, from [`own_cpu_clock`]); `None` if it cannot be
/// read (the thread ended).
pub(crate) fn cpu_clock_time(clock: libc::clockid_t) -> Option<Duration> {
    if clock == libc::CLOCK_THREAD_CPUTIME_ID {
        return None; // the reader's own clock, not the running thread's
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; an invalid clock is an error return.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// A cell's CPU budget and what it used so far.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CpuBudget {
    limit: Option<Duration>,
    used: Duration,
}

impl CpuBudget {
    pub fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit;
    }

    pub fn is_limited(&self) -> bool {
        self.limit.is_some()
    }

    pub fn charge(&mut self, d: Duration) {
        self.used = self.used.saturating_add(d);
    }

    pub fn used(&self) -> Duration {
        self.used
    }

    /// `Some((limit, used))` once the budget is spent.
    pub fn exhausted(&self) -> Option<(Duration, Duration)> {
        self.limit
            .filter(|l| self.used >= *l)
            .map(|l| (l, self.used))
    }

    /// The earliest wall-clock instant at which the budget can be spent: the vCPU cannot use
    /// more CPU than the wall time that passes, so until then no kick is needed.
    pub fn earliest_end(&self, now: Instant) -> Option<Instant> {
        self.limit.map(|l| now + l.saturating_sub(self.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_exactly_at_its_limit_and_unlimited_never_ends() {
        let mut b = CpuBudget::default();
        b.charge(Duration::from_secs(100));
        assert_eq!(b.exhausted(), None);
        assert_eq!(b.earliest_end(Instant::now()), None);
        b.set_limit(Some(Duration::from_millis(10)));
        assert!(b.exhausted().is_some(), "already over");
        let mut b = CpuBudget::default();
        b.set_limit(Some(Duration::from_millis(10)));
        let now = Instant::now();
        assert_eq!(b.earliest_end(now), Some(now + Duration::from_millis(10)));
        b.charge(Duration::from_millis(4));
        assert_eq!(b.earliest_end(now), Some(now + Duration::from_millis(6)));
        assert_eq!(b.exhausted(), None);
        b.charge(Duration::from_millis(6));
        assert_eq!(
            b.exhausted(),
            Some((Duration::from_millis(10), Duration::from_millis(10)))
        );
    }

    #[test]
    fn another_threads_clock_is_read_while_it_runs() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let a = thread_cpu_time();
            while thread_cpu_time() - a < Duration::from_millis(3) {
                std::hint::black_box(());
            }
            tx.send((own_cpu_clock(), thread_cpu_time())).unwrap();
            done_rx.recv().unwrap();
        });
        let (clock, theirs) = rx.recv().unwrap();
        let read = cpu_clock_time(clock).expect("a live thread's clock");
        assert!(
            read >= theirs && read >= Duration::from_millis(3),
            "{read:?}"
        );
        assert!(read < thread_cpu_time() + Duration::from_secs(3600));
        done_tx.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(cpu_clock_time(libc::CLOCK_THREAD_CPUTIME_ID), None);
    }

    #[test]
    fn the_thread_clock_moves_with_work() {
        let a = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() - a < Duration::from_millis(2) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() > a);
    }
}
