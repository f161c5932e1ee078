//! Dead cells the node keeps for their reason and events, bounded node-wide.
//!
//! A cell seen dead stays listed until it is deleted or expires, so that its client can read
//! why it died and what it said; it holds a place and up to the per-cell event buffer (4 MiB by
//! default) meanwhile. A tenant's `live_cells` quota bounds its own dead cells, but a tenant
//! without one (or the single default tenant) could fill the node with them, and their buffers
//! would add up to far more memory than a node should hold for cells that can no longer run.
//! So the node keeps at most so many dead cells and so many bytes of their events: past either
//! bound dead cells are reaped early, as if their ttl had run out: each the oldest of the tenant
//! holding the most, so one tenant's dying cells push out its own before another's (the newest
//! is kept whatever its size).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// The dead cells kept, oldest first per tenant, with the bytes of events each holds.
pub struct DeadCells {
    inner: Mutex<Inner>,
    max_bytes: usize,
    max_cells: usize,
}

#[derive(Default)]
struct Inner {
    /// The number the next cell seen dead gets.
    next: u64,
    /// Tenant → its dead cells: death order → (cell id, bytes of its buffered events).
    tenants: HashMap<String, Held>,
    /// Cell id → (tenant, death order).
    order: HashMap<String, (String, u64)>,
    /// Dead cells kept, and the sum of their bytes.
    cells: usize,
    bytes: usize,
}

#[derive(Default)]
struct Held {
    by_age: BTreeMap<u64, (String, usize)>,
    bytes: usize,
}

impl Inner {
    /// The tenant to reap from: the one holding the most bytes (`by_bytes`) or cells, whose
    /// oldest dead cell is not `keep` (the one just added).
    fn heaviest(&self, by_bytes: bool, keep: u64) -> Option<String> {
        self.tenants
            .iter()
            .filter(|(_, h)| h.by_age.keys().next().is_some_and(|&n| n != keep))
            .max_by_key(|(_, h)| if by_bytes { h.bytes } else { h.by_age.len() })
            .map(|(t, _)| t.clone())
    }

    fn remove(&mut self, tenant: &str, n: u64) -> Option<String> {
        let held = self.tenants.get_mut(tenant)?;
        let (id, b) = held.by_age.remove(&n)?;
        held.bytes -= b;
        if held.by_age.is_empty() {
            self.tenants.remove(tenant);
        }
        self.order.remove(&id);
        self.cells -= 1;
        self.bytes -= b;
        Some(id)
    }
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

    /// Records cell `id` of `tenant`, seen dead holding `bytes` of events, unless `ended` says
    /// its life has ended already (asked under this lock, which [`DeadCells::forget`] takes after
    /// the end is set, so a cell removed meanwhile is never left recorded). Returns the cells to
    /// reap so that those kept fit both bounds: each the oldest of the tenant that holds the most
    /// (bytes past the byte bound, cells past the cell bound), so one tenant's dying cells push
    /// out its own before another's; the cell just added is kept whatever its size.
    pub fn add(
        &self,
        id: &str,
        tenant: &str,
        bytes: usize,
        ended: impl FnOnce() -> bool,
    ) -> Vec<String> {
        let mut d = self.locked();
        if ended() || d.order.contains_key(id) {
            return Vec::new();
        }
        let n = d.next;
        d.next += 1;
        let held = d.tenants.entry(tenant.to_string()).or_default();
        held.by_age.insert(n, (id.to_string(), bytes));
        held.bytes += bytes;
        d.order.insert(id.to_string(), (tenant.to_string(), n));
        d.cells += 1;
        d.bytes += bytes;
        let mut reap = Vec::new();
        loop {
            let by_bytes = d.bytes > self.max_bytes;
            if !by_bytes && d.cells <= self.max_cells {
                break;
            }
            let Some(t) = d.heaviest(by_bytes, n) else {
                break;
            };
            let oldest = d.tenants[&t].by_age.keys().next().copied();
            match oldest.and_then(|old| d.remove(&t, old)) {
                Some(id) => reap.push(id),
                None => break,
            }
        }
        reap
    }

    /// Forgets cell `id` (deleted, expired or reaped).
    pub fn forget(&self, id: &str) {
        let mut d = self.locked();
        if let Some((tenant, n)) = d.order.get(id).cloned() {
            d.remove(&tenant, n);
        }
    }

    /// (dead cells kept, bytes of their events).
    pub fn held(&self) -> (usize, usize) {
        let d = self.locked();
        (d.cells, d.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_past_either_bound_and_the_newest_stays() {
        let d = DeadCells::new(100, 3);
        assert!(d.add("a", "t", 40, || false).is_empty());
        assert!(d.add("b", "t", 40, || false).is_empty());
        // 120 bytes: a goes.
        assert_eq!(d.add("c", "t", 40, || false), ["a"]);
        assert_eq!(d.held(), (2, 80));
        d.forget("b");
        assert_eq!(d.held(), (1, 40));
        // Past the cell bound, the bytes within theirs.
        assert!(d.add("d", "t", 0, || false).is_empty());
        assert!(d.add("e", "t", 0, || false).is_empty());
        assert_eq!(d.add("f", "t", 0, || false), ["c"]);
        // One over the whole byte bound stays alone.
        assert_eq!(d.add("g", "t", 500, || false), ["d", "e", "f"]);
        assert_eq!(d.held(), (1, 500));
        // A cell already ended, or recorded, is not recorded again.
        assert!(d.add("h", "t", 1, || true).is_empty());
        assert!(d.add("g", "t", 1, || false).is_empty());
        assert_eq!(d.held(), (1, 500));
        d.forget("g");
        d.forget("g");
        assert_eq!(d.held(), (0, 0));
    }

    #[test]
    fn a_tenant_whose_cells_die_pushes_out_its_own_dead_cells_first() {
        let d = DeadCells::new(1000, 4);
        assert!(d.add("quiet-1", "quiet", 10, || false).is_empty());
        assert!(d.add("quiet-2", "quiet", 10, || false).is_empty());
        assert!(d.add("noisy-1", "noisy", 10, || false).is_empty());
        assert!(d.add("noisy-2", "noisy", 10, || false).is_empty());
        // Past the cell bound: the oldest of the tenant with the most goes (a tie: either).
        let first = d.add("noisy-3", "noisy", 10, || false);
        assert_eq!(first, ["noisy-1"]);
        for i in 4..20 {
            let reaped = d.add(&format!("noisy-{i}"), "noisy", 10, || false);
            assert_eq!(reaped, [format!("noisy-{}", i - 2)]);
        }
        // The quiet tenant's dead cells are all still there.
        assert_eq!(d.held(), (4, 40));
        assert!(
            d.add("quiet-1", "quiet", 1, || false).is_empty(),
            "still recorded"
        );
        // Past the byte bound: the tenant holding the most bytes gives them up, not the newest.
        let reaped = d.add("quiet-3", "quiet", 990, || false);
        assert_eq!(reaped.len(), 3, "{reaped:?}");
        assert!(reaped.iter().filter(|r| r.starts_with("noisy")).count() >= 1);
        assert!(!reaped.contains(&"quiet-3".to_string()));
        assert!(d.held().1 <= 1000);
    }
}
