//! The VMs a snapshot's closed cells leave behind, reset for the next cell off the closing
//! thread. A reset (complete the pending exit, check the page tables, copy the dirtied pages back,
//! four register ioctls) costs about two VM exits on this PVM host; done by the template's reset
//! thread after `close`, a start after a pause finds its VM ready. A start that finds none ready
//! takes one still waiting and resets it itself, or waits for the reset in progress: it never
//! builds a new VM (milliseconds) while one is moments from ready.
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::machine::Machine;
use crate::reaper;

/// VMs kept per template (ready, waiting and being reset together).
pub(crate) const POOL_MAX: usize = 16;

#[derive(Default)]
struct State {
    /// Reset to the snapshot: a start takes one as it is.
    ready: Vec<Machine>,
    /// Returned by a closed cell, not reset yet.
    dirty: Vec<Machine>,
    /// Taken by the reset thread, not yet back.
    resetting: usize,
}

impl State {
    fn held(&self) -> usize {
        self.ready.len() + self.dirty.len() + self.resetting
    }
}

#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<State>,
    /// Wakes the reset thread: a VM was returned.
    returned: Condvar,
    /// Wakes starts waiting for the reset in progress: it ended (ready or destroyed).
    reset_done: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes back the machine of a healthy closed cell; past [`POOL_MAX`] it is destroyed.
    pub fn put(&self, machine: Machine) {
        let mut s = self.lock();
        if s.held() >= POOL_MAX {
            drop(s);
            reaper::destroy_later(machine);
            return;
        }
        s.dirty.push(machine);
        drop(s);
        self.returned.notify_one();
    }

    /// A machine reset to the snapshot, or `None` when the pool holds none. `reset` returns
    /// `None` for a machine that may not be reused (it has disposed of it).
    pub fn take(&self, reset: impl Fn(Machine) -> Option<Machine>) -> Option<Machine> {
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
    pub fn serve(&self, reset: impl Fn(Machine) -> Option<Machine>) -> ! {
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
struct InProgress<'a> {
    pool: &'a Pool,
    ready: Option<Machine>,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut s = self.pool.lock();
        s.resetting -= 1;
        s.ready.extend(self.ready.take());
        drop(s);
        self.pool.reset_done.notify_all();
    }
}
