//! The VMs a snapshot's closed cells leave behind, reset for the next cell off the closing
//! thread. A reset (complete the pending exit, check the page tables, copy the dirtied pages back,
//! four register ioctls) costs about two VM exits on this PVM host; done by the template's reset
//! thread after `close`, a start after a pause finds its VM ready. A start that finds none ready
//! takes one still waiting and resets it itself, or waits for the reset in progress: it never
//! builds a new VM (milliseconds) while one is moments from ready.
//!
//! Once a start has found no VM ready (more cells alive than the pool holds, or starts back to
//! back that come faster than the resets), the same thread keeps [`KEEP_AHEAD`] VMs built, warmed
//! and reset ahead of demand, so the next starts take one instead of building their own (a new
//! VM faults in every page it touches: about ten milliseconds against a few hundred
//! microseconds for a warm one) or resetting or waiting for one.
//!
//! Generic over what it holds (machines in the backend, plain numbers in its unit tests).
use std::sync::{Condvar, Mutex, MutexGuard};

/// VMs kept per template (ready, waiting, being reset and being built together).
pub(crate) const POOL_MAX: usize = 16;

/// VMs kept ready ahead of demand, once a start found none.
pub(crate) const KEEP_AHEAD: usize = 2;

struct State<T> {
    /// Reset to the snapshot: a start takes one as it is (with whether a cell used it before).
    ready: Vec<(T, bool)>,
    /// Returned by a closed cell, not reset yet.
    dirty: Vec<T>,
    /// Taken by the reset thread, not yet back.
    resetting: usize,
    /// Being built ahead of demand by the reset thread.
    building: usize,
    /// How many to keep ready ahead (0 until a start finds the pool empty, and again after a
    /// build fails, until the next start finds it empty).
    ahead: usize,
}

impl<T> State<T> {
    fn held(&self) -> usize {
        self.ready.len() + self.dirty.len() + self.resetting + self.building
    }

    fn wants_build(&self) -> bool {
        self.ready.len() + self.building < self.ahead && self.held() < POOL_MAX
    }
}

pub(crate) struct Pool<T> {
    state: Mutex<State<T>>,
    /// Wakes the reset thread: a VM was returned, or one should be built ahead.
    work: Condvar,
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
                building: 0,
                ahead: 0,
            }),
            work: Condvar::new(),
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
        self.work.notify_one();
        None
    }

    /// A machine reset to the snapshot and whether a cell used it before, or `None` when the
    /// pool holds none (from then on, the reset thread keeps some ready ahead). `reset` returns
    /// `None` for a machine that may not be reused (it has disposed of it).
    pub fn take(&self, reset: impl Fn(T) -> Option<T>) -> Option<(T, bool)> {
        let mut s = self.lock();
        loop {
            if let Some(m) = s.ready.pop() {
                let refill = s.wants_build();
                drop(s);
                if refill {
                    self.work.notify_one();
                }
                return Some(m);
            }
            // Nothing ready: starts come faster than closed cells' VMs are reset (back to back)
            // or than the pool holds. Either way, from now on some are kept ready ahead, so the
            // next starts neither reset on their own path nor wait.
            s.ahead = KEEP_AHEAD;
            let build = s.wants_build();
            if build {
                self.work.notify_one();
            }
            if let Some(m) = s.dirty.pop() {
                drop(s);
                if let Some(m) = reset(m) {
                    return Some((m, true));
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

    /// The reset thread's loop, for as long as the process runs: resets every returned
    /// machine, and builds machines ahead of demand (`build`, `None` when it failed) when starts
    /// found the pool empty.
    pub fn serve(&self, reset: impl Fn(T) -> Option<T>, build: impl Fn() -> Option<T>) -> ! {
        loop {
            let mut s = self.lock();
            let job = loop {
                if let Some(m) = s.dirty.pop() {
                    s.resetting += 1;
                    break Some(m);
                }
                if s.wants_build() {
                    s.building += 1;
                    break None;
                }
                s = self.work.wait(s).unwrap_or_else(|p| p.into_inner());
            };
            drop(s);
            let mut done = InProgress {
                pool: self,
                building: job.is_none(),
                ready: None,
            };
            done.ready = match job {
                Some(m) => reset(m).map(|m| (m, true)),
                None => build().map(|m| (m, false)),
            };
        }
    }
}

/// One reset or build of the reset thread: however it ends (even by a panic), its count drops
/// and the starts waiting for it wake, in the same step that makes its machine ready, so a start
/// never sees neither. A build that ends without a machine stops the building ahead.
struct InProgress<'a, T> {
    pool: &'a Pool<T>,
    building: bool,
    ready: Option<(T, bool)>,
}

impl<T> Drop for InProgress<'_, T> {
    fn drop(&mut self) {
        let mut s = self.pool.lock();
        if self.building {
            s.building -= 1;
            if self.ready.is_none() {
                s.ahead = 0;
            }
        } else {
            s.resetting -= 1;
        }
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
            served.serve(
                |item| {
                    started_tx.send(item).unwrap();
                    match go_rx.lock().unwrap().recv().unwrap() {
                        Ok(()) => Some(item),
                        Err(()) => panic!("a reset that fails by panicking (test)"),
                    }
                },
                || None,
            )
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
        assert_eq!(pool.take(|i| Some(i + 100)), Some((108, true)));
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
        assert_eq!(taker.join().unwrap(), Some((5, true)));
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

    /// A reset thread whose builds hand out 100, 101, … (`fail`: none) and say so.
    fn building_thread(pool: &Arc<Pool<u32>>, fail: bool) -> Receiver<u32> {
        let (built_tx, built) = channel();
        let served = pool.clone();
        let next = std::sync::atomic::AtomicU32::new(100);
        std::thread::spawn(move || {
            served.serve(Some, move || {
                let item = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                built_tx.send(item).unwrap();
                (!fail).then_some(item)
            })
        });
        built
    }

    fn hang_guard() -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }

    #[test]
    fn once_a_start_finds_the_pool_empty_items_are_kept_ready_ahead() {
        let pool = Arc::new(Pool::<u32>::default());
        let built = building_thread(&pool, false);
        assert_eq!(pool.take(Some), None, "nothing yet");
        let first: Vec<u32> = (0..KEEP_AHEAD)
            .map(|_| built.recv_timeout(hang_guard()).unwrap())
            .collect();
        assert_eq!(first, [100, 101]);
        // Each take is refilled; a built item never served a cell.
        for round in 0..3 {
            // Two were ready and each take is refilled before the next: one is always there.
            let (item, served) = pool
                .take(|_| panic!("nothing was returned"))
                .expect("kept ready ahead");
            assert!(!served);
            assert!((100..102 + round).contains(&item), "{item}");
            assert_eq!(built.recv_timeout(hang_guard()).unwrap(), 102 + round);
        }
    }

    #[test]
    fn a_start_that_finds_only_a_returned_item_asks_for_items_ahead() {
        let pool = Arc::new(Pool::<u32>::default());
        // Returned before the reset thread runs: the start resets it itself, and from then on
        // the thread keeps items ready ahead.
        assert_eq!(pool.put(7), None);
        assert_eq!(pool.take(|i| Some(i + 1)), Some((8, true)));
        let built = building_thread(&pool, false);
        let first: Vec<u32> = (0..KEEP_AHEAD)
            .map(|_| built.recv_timeout(hang_guard()).unwrap())
            .collect();
        assert_eq!(first, [100, 101]);
        assert!(matches!(
            pool.take(|_| panic!("one is ready")),
            Some((100 | 101, false))
        ));
    }

    #[test]
    fn a_failed_build_stops_building_until_a_start_finds_the_pool_empty_again() {
        let pool = Arc::new(Pool::<u32>::default());
        let built = building_thread(&pool, true);
        assert_eq!(pool.take(Some), None);
        assert_eq!(built.recv_timeout(hang_guard()).unwrap(), 100);
        // The failure turned building off; the next empty start turns it on again, once.
        let mut s = pool.lock();
        while s.building > 0 {
            s = pool.reset_done.wait(s).unwrap();
        }
        assert_eq!(s.ahead, 0);
        drop(s);
        assert_eq!(pool.take(Some), None);
        assert_eq!(built.recv_timeout(hang_guard()).unwrap(), 101);
    }
}
