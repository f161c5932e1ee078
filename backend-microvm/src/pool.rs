//! The VMs a snapshot's closed cells leave behind, reset for the next cell off the closing
//! thread. A reset (complete the pending exit, check the page tables, copy the dirtied pages back,
//! four register ioctls) costs about two VM exits on this PVM host; done by the template's reset
//! thread after `close`, a start after a pause finds its VM ready. A start that finds none ready
//! takes one still waiting and resets it itself, or waits for the reset in progress: it never
//! builds a new VM (milliseconds) while one is moments from ready.
//!
//! Generic over what it holds (machines in the backend, plain numbers in its unit tests).
use std::sync::{Condvar, Mutex, MutexGuard};

/// VMs kept per template (ready, waiting and being reset together).
pub(crate) const POOL_MAX: usize = 16;

struct State<T> {
    /// Reset to the snapshot: a start takes one as it is.
    ready: Vec<T>,
    /// Returned by a closed cell, not reset yet.
    dirty: Vec<T>,
    /// Taken by the reset thread, not yet back.
    resetting: usize,
}

impl<T> State<T> {
    fn held(&self) -> usize {
        self.ready.len() + self.dirty.len() + self.resetting
    }
}

pub(crate) struct Pool<T> {
    state: Mutex<State<T>>,
    /// Wakes the reset thread: a VM was returned.
    returned: Condvar,
    /// Wakes starts waiting for the reset in progress: it ended (ready or destroyed).
    reset_done: Condvar,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool {
            state: Mutex::new(State {
                ready: Vec::new(),
                dirty: Vec::new(),
                resetting: 0,
            }),
            returned: Condvar::new(),
            reset_done: Condvar::new(),
        }
    }
}

impl<T> Pool<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes back the machine of a healthy closed cell; past [`POOL_MAX`] it is handed back
    /// for the caller to destroy.
    pub fn put(&self, machine: T) -> Option<T> {
        let mut s = self.lock();
        if s.held() >= POOL_MAX {
            return Some(machine);
        }
        s.dirty.push(machine);
        drop(s);
        self.returned.notify_one();
        None
    }

    /// A machine reset to the snapshot, or `None` when the pool holds none. `reset` returns
    /// `None` for a machine that may not be reused (it has disposed of it).
    pub fn take(&self, reset: impl Fn(T) -> Option<T>) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(m) = s.ready.pop() {
                return Some(m);
            }
            if let Some(m) = s.dirty.pop() {
                drop(s);
                if let Some(m) = reset(m) {
                    return Some(m);
                }
                s = self.lock();
                continue;
            }
            if s.resetting == 0 {
                return None;
            }
            // The reset thread always ends its reset and notifies (see `InProgress`).
            s = self.reset_done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The reset thread's loop: resets every returned machine, for as long as the process runs.
    pub fn serve(&self, reset: impl Fn(T) -> Option<T>) -> ! {
        loop {
            let mut s = self.lock();
            let m = loop {
                match s.dirty.pop() {
                    Some(m) => break m,
                    None => s = self.returned.wait(s).unwrap_or_else(|p| p.into_inner()),
                }
            };
            s.resetting += 1;
            drop(s);
            let mut job = InProgress {
                pool: self,
                ready: None,
            };
            job.ready = reset(m);
        }
    }
}

/// One reset of the reset thread: however it ends (even by a panic), the count of resets in
/// progress drops and the starts waiting for it wake, in the same step that makes its machine
/// ready, so a start never sees neither.
struct InProgress<'a, T> {
    pool: &'a Pool<T>,
    ready: Option<T>,
}

impl<T> Drop for InProgress<'_, T> {
    fn drop(&mut self) {
        let mut s = self.pool.lock();
        s.resetting -= 1;
        s.ready.extend(self.ready.take());
        drop(s);
        self.pool.reset_done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, channel};

    /// A reset thread whose resets each wait for a go from the test (`Ok` passes the item on,
    /// `Err` panics), announcing first which item it holds.
    fn gated_thread(
        pool: &Arc<Pool<u32>>,
    ) -> (Receiver<u32>, std::sync::mpsc::Sender<Result<(), ()>>) {
        let (started_tx, started) = channel();
        let (go, go_rx) = channel::<Result<(), ()>>();
        let go_rx = Mutex::new(go_rx);
        let served = pool.clone();
        std::thread::spawn(move || {
            served.serve(|item| {
                started_tx.send(item).unwrap();
                match go_rx.lock().unwrap().recv().unwrap() {
                    Ok(()) => Some(item),
                    Err(()) => panic!("a reset that fails by panicking (test)"),
                }
            })
        });
        (started, go)
    }

    #[test]
    fn a_start_takes_a_ready_item_or_resets_a_returned_one_itself() {
        let pool = Pool::<u32>::default();
        assert_eq!(pool.take(Some), None, "an empty pool");
        assert_eq!(pool.put(7), None);
        // No reset thread: the start resets what it takes; a refused item is not handed out.
        assert_eq!(pool.take(|_| None), None);
        assert_eq!(pool.put(8), None);
        assert_eq!(pool.take(|i| Some(i + 100)), Some(108));
    }

    #[test]
    fn past_its_bound_the_pool_hands_items_back() {
        let pool = Pool::<u32>::default();
        for i in 0..POOL_MAX as u32 {
            assert_eq!(pool.put(i), None);
        }
        assert_eq!(
            pool.put(99),
            Some(99),
            "the caller destroys what the pool cannot hold"
        );
    }

    #[test]
    fn a_start_waits_for_the_reset_in_progress_instead_of_finding_nothing() {
        let pool = Arc::new(Pool::<u32>::default());
        let (started, go) = gated_thread(&pool);
        assert_eq!(pool.put(5), None);
        assert_eq!(started.recv().unwrap(), 5, "the reset thread holds it");
        let taker = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take(|_| panic!("nothing is left to reset here")))
        };
        // Let the start reach the pool while the reset is still held (without the wait it then
        // finds nothing ready and nothing returned, and answers `None`).
        std::thread::sleep(std::time::Duration::from_millis(20));
        go.send(Ok(())).unwrap();
        assert_eq!(taker.join().unwrap(), Some(5));
    }

    #[test]
    fn a_reset_that_panics_still_wakes_the_waiting_start() {
        let pool = Arc::new(Pool::<u32>::default());
        let (started, go) = gated_thread(&pool);
        assert_eq!(pool.put(6), None);
        assert_eq!(started.recv().unwrap(), 6);
        let taker = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take(Some))
        };
        go.send(Err(())).unwrap();
        assert_eq!(
            taker.join().unwrap(),
            None,
            "woken, with nothing to hand out"
        );
    }
}
