//! Dead cells the node keeps for their reason and events, bounded node-wide.
//!
//! A cell seen dead stays listed until it is deleted or expires, so that its client can read
//! why it died and what it said; it holds a place and up to the per-cell event buffer (4 MiB by
//! default) meanwhile. A tenant's `live_cells` quota bounds its own dead cells, but a tenant
//! without one (or the single default tenant) could fill the node with them, and their buffers
//! would add up to far more memory than a node should hold for cells that can no longer run.
//! So the node keeps at most so many dead cells and so many bytes of their events: past either
//! bound the oldest dead cells are reaped early, as if their ttl had run out (the newest is
//! kept whatever its size).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// The dead cells kept, oldest first, with the bytes of events each holds.
pub struct DeadCells {
    inner: Mutex<Inner>,
    max_bytes: usize,
    max_cells: usize,
}

#[derive(Default)]
struct Inner {
    /// The number the next cell seen dead gets.
    next: u64,
    /// Death order → (cell id, bytes of its buffered events).
    by_age: BTreeMap<u64, (String, usize)>,
    /// Cell id → its death order.
    order: HashMap<String, u64>,
    /// Sum of the bytes in `by_age`.
    bytes: usize,
}

impl DeadCells {
    /// Keeps at most `max_cells` dead cells and `max_bytes` of their buffered events.
    pub fn new(max_bytes: usize, max_cells: usize) -> DeadCells {
        DeadCells {
            inner: Mutex::default(),
            max_bytes,
            max_cells,
        }
    }

    fn locked(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records cell `id`, seen dead holding `bytes` of events, unless `ended` says its life has
    /// ended already (asked under this lock, which [`DeadCells::forget`] takes after the end is
    /// set, so a cell removed meanwhile is never left recorded). Returns the cells to reap, the
    /// oldest first, so that those kept fit both bounds.
    pub fn add(&self, id: &str, bytes: usize, ended: impl FnOnce() -> bool) -> Vec<String> {
        let mut d = self.locked();
        if ended() || d.order.contains_key(id) {
            return Vec::new();
        }
        let n = d.next;
        d.next += 1;
        d.by_age.insert(n, (id.to_string(), bytes));
        d.order.insert(id.to_string(), n);
        d.bytes += bytes;
        let mut reap = Vec::new();
        while d.by_age.len() > 1 && (d.bytes > self.max_bytes || d.by_age.len() > self.max_cells) {
            if let Some((_, (old, b))) = d.by_age.pop_first() {
                d.order.remove(&old);
                d.bytes -= b;
                reap.push(old);
            }
        }
        reap
    }

    /// Forgets cell `id` (deleted, expired or reaped).
    pub fn forget(&self, id: &str) {
        let mut d = self.locked();
        if let Some(n) = d.order.remove(id)
            && let Some((_, b)) = d.by_age.remove(&n)
        {
            d.bytes -= b;
        }
    }

    /// (dead cells kept, bytes of their events).
    pub fn held(&self) -> (usize, usize) {
        let d = self.locked();
        (d.by_age.len(), d.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_past_either_bound_and_the_newest_stays() {
        let d = DeadCells::new(100, 3);
        assert!(d.add("a", 40, || false).is_empty());
        assert!(d.add("b", 40, || false).is_empty());
        // 120 bytes: a goes.
        assert_eq!(d.add("c", 40, || false), ["a"]);
        assert_eq!(d.held(), (2, 80));
        d.forget("b");
        assert_eq!(d.held(), (1, 40));
        // Past the cell bound, the bytes within theirs.
        assert!(d.add("d", 0, || false).is_empty());
        assert!(d.add("e", 0, || false).is_empty());
        assert_eq!(d.add("f", 0, || false), ["c"]);
        // One over the whole byte bound stays alone.
        assert_eq!(d.add("g", 500, || false), ["d", "e", "f"]);
        assert_eq!(d.held(), (1, 500));
        // A cell already ended, or recorded, is not recorded again.
        assert!(d.add("h", 1, || true).is_empty());
        assert!(d.add("g", 1, || false).is_empty());
        assert_eq!(d.held(), (1, 500));
        d.forget("g");
        d.forget("g");
        assert_eq!(d.held(), (0, 0));
    }
}
