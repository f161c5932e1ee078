//! The broker's worker pool: blocking capabilities run on a bounded set of threads fed by a
//! bounded queue, so a flood of requests costs neither a thread each nor unbounded memory.
//!
//! Workers start on demand up to the pool's size and then stay, waiting on a condition
//! variable, until the pool is dropped. A job that finds every worker busy waits in the queue;
//! when the queue is full too, [`Pool::submit`] refuses it at once ([`Busy`]). Admission counts
//! jobs, not threads: at most `workers + queue` jobs are queued or running, whether or not a
//! worker just started has taken its job yet, and a job gives its place back
//! ([`Finished::now`]) before it wakes whoever waits for it, so that caller's next request
//! finds the place free.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Workers of a broker's pool when the builder sets none.
pub const DEFAULT_WORKERS: usize = 8;
/// Jobs that may wait for a worker when the builder sets no queue length.
pub const DEFAULT_QUEUE: usize = 64;

type Job = Box<dyn FnOnce(&Finished<'_>) + Send>;

/// Handed to a running job: [`Finished::now`] gives its place in the pool back (done anyway
/// when the job returns).
pub(crate) struct Finished<'a> {
    inner: &'a Inner,
    done: Cell<bool>,
}

impl Finished<'_> {
    /// The job's place is free from now on (call it before waking the job's requester).
    pub(crate) fn now(&self) {
        if !self.done.replace(true) {
            lock(&self.inner.state).running -= 1;
        }
    }
}

/// The pool is saturated: every worker is busy and the queue is full.
#[derive(Debug)]
pub(crate) struct Busy {
    pub workers: usize,
    pub queue: usize,
}

struct State {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
    /// Jobs taken by a worker that have not given their place back.
    running: usize,
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
    work: Condvar,
    max_workers: usize,
    max_queue: usize,
}

pub(crate) struct Pool {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub(crate) fn new(max_workers: usize, max_queue: usize) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    running: 0,
                    closed: false,
                }),
                work: Condvar::new(),
                max_workers,
                max_queue,
            }),
        }
    }

    /// Queues `job` for a worker, starting one if none is idle and the pool is not full;
    /// refuses at once when every worker is busy and `max_queue` jobs already wait.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Busy> {
        let inner = &self.inner;
        let mut s = lock(&inner.state);
        if s.queue.len() + s.running >= inner.max_workers + inner.max_queue {
            return Err(Busy {
                workers: inner.max_workers,
                queue: inner.max_queue,
            });
        }
        s.queue.push_back(job);
        if s.idle >= s.queue.len() {
            drop(s);
            inner.work.notify_one();
            return Ok(());
        }
        if s.workers < inner.max_workers {
            let worker = inner.clone();
            let started = std::thread::Builder::new()
                .name("broker-worker".into())
                .spawn(move || worker.run());
            match started {
                Ok(_) => s.workers += 1,
                Err(e) => {
                    // Without a new thread the job waits for a busy worker, if there is one.
                    tracing::warn!("cannot start a broker worker: {e}");
                    if s.workers == 0 {
                        s.queue.pop_back();
                        return Err(Busy {
                            workers: 0,
                            queue: inner.max_queue,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl Inner {
    fn run(&self) {
        let mut s = lock(&self.state);
        loop {
            if let Some(job) = s.queue.pop_front() {
                s.running += 1;
                drop(s);
                let finished = Finished {
                    inner: self,
                    done: Cell::new(false),
                };
                // Jobs catch their capability's panics; this keeps the counts right if one
                // escapes anyway.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&finished)));
                finished.now();
                s = lock(&self.state);
                continue;
            }
            if s.closed {
                s.workers -= 1;
                return;
            }
            s.idle += 1;
            s = self.work.wait(s).unwrap_or_else(|e| e.into_inner());
            s.idle -= 1;
        }
    }
}

impl Drop for Pool {
    /// Idle workers end now; busy ones after their job (queued jobs still run first).
    fn drop(&mut self) {
        lock(&self.inner.state).closed = true;
        self.inner.work.notify_all();
    }
}
