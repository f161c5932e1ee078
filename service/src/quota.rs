//! Per-tenant usage against quotas. Resources are reserved before a spawn and released exactly
//! once when the cell is seen gone, so concurrent creates cannot overshoot.

use crate::error::ApiError;
use crate::tenants::Quotas;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub memory_mib: u64,
    pub cpu_time_ms: u64,
}

#[derive(Default)]
struct Usage {
    cells: u64,
    memory_mib: u64,
    cpu_time_ms: u64,
    creates: VecDeque<Instant>,
}

#[derive(Default)]
pub struct Ledger {
    usage: Mutex<HashMap<String, Usage>>,
}

pub(crate) fn refuse(tenant: &str, quota: &'static str, message: String) -> ApiError {
    metrics::counter!("cell_service_quota_refusals_total", "tenant" => tenant.to_string(), "quota" => quota)
        .increment(1);
    ApiError::quota(quota, message)
}

impl Ledger {
    /// Reserves one cell of `r` for `tenant`, or names the quota it would pass.
    pub fn reserve(&self, tenant: &str, q: &Quotas, r: Reservation) -> Result<(), ApiError> {
        let mut all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let u = all.entry(tenant.to_string()).or_default();
        let now = Instant::now();
        while u
            .creates
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            u.creates.pop_front();
        }
        if let Some(max) = q.live_cells
            && u.cells + 1 > max
        {
            return Err(refuse(
                tenant,
                "live_cells",
                format!(
                    "tenant `{tenant}` holds {} cells (dead ones count until deleted or expired), its quota is {max}",
                    u.cells
                ),
            ));
        }
        if let Some(max) = q.creates_per_minute
            && u.creates.len() as u64 >= max
        {
            return Err(refuse(
                tenant,
                "creates_per_minute",
                format!("tenant `{tenant}` may create {max} cells per minute"),
            ));
        }
        if let Some(max) = q.memory_mib
            && u.memory_mib + r.memory_mib > max
        {
            return Err(refuse(
                tenant,
                "memory_mib",
                format!(
                    "tenant `{tenant}` holds {} MiB, this cell asks {} MiB, its quota is {max} MiB",
                    u.memory_mib, r.memory_mib
                ),
            ));
        }
        if let Some(max) = q.cpu_time_ms
            && (r.cpu_time_ms == 0 || u.cpu_time_ms + r.cpu_time_ms > max)
        {
            return Err(refuse(
                tenant,
                "cpu_time_ms",
                format!(
                    "tenant `{tenant}` holds {} ms of CPU time, this cell asks {} (0 = unlimited), its quota is {max} ms",
                    u.cpu_time_ms, r.cpu_time_ms
                ),
            ));
        }
        u.cells += 1;
        u.memory_mib += r.memory_mib;
        u.cpu_time_ms += r.cpu_time_ms;
        if q.creates_per_minute.is_some() {
            u.creates.push_back(now);
        }
        Ok(())
    }

    /// Gives back a whole reservation: the cell (its count) and its limits.
    pub fn release(&self, tenant: &str, r: Reservation) {
        self.release_limits(tenant, r);
        self.release_cell(tenant);
    }

    /// Gives back a cell's memory and CPU-time limits (its boundary is gone: it died or was
    /// removed); the cell still counts against `live_cells` until [`Ledger::release_cell`].
    pub fn release_limits(&self, tenant: &str, r: Reservation) {
        let mut all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = all.get_mut(tenant) {
            u.memory_mib = u.memory_mib.saturating_sub(r.memory_mib);
            u.cpu_time_ms = u.cpu_time_ms.saturating_sub(r.cpu_time_ms);
        }
    }

    /// Gives back a cell's place in the tenant's `live_cells` count: once the node no longer
    /// holds it (deleted, expired, or never added), not at its death, as a dead cell stays
    /// listed and holds one of the node's `max_cells` places until then.
    pub fn release_cell(&self, tenant: &str) {
        let mut all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = all.get_mut(tenant) {
            u.cells = u.cells.saturating_sub(1);
        }
    }

    pub fn live_cells(&self, tenant: &str) -> u64 {
        let all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        all.get(tenant).map_or(0, |u| u.cells)
    }
}

/// What each tenant holds at once (open streams, execs in flight), counted per tenant. A slot
/// is given back when dropped; a tenant holding none leaves no entry behind.
#[derive(Default)]
pub struct Held {
    by_tenant: Mutex<HashMap<String, usize>>,
}

impl Held {
    /// One more for `tenant`, if it holds fewer than `max`.
    pub fn take(self: &Arc<Self>, tenant: &str, max: usize) -> Option<HeldSlot> {
        let mut all = self.by_tenant.lock().unwrap_or_else(|e| e.into_inner());
        let n = all.entry(tenant.to_string()).or_default();
        if *n >= max {
            if *n == 0 {
                all.remove(tenant);
            }
            return None;
        }
        *n += 1;
        Some(HeldSlot {
            held: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

/// One thing a tenant holds, given back when dropped.
pub struct HeldSlot {
    held: Arc<Held>,
    tenant: String,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut all = self
            .held
            .by_tenant
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = all.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                all.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_slots_are_bounded_per_tenant_and_given_back() {
        let held = Arc::new(Held::default());
        assert!(held.take("t", 0).is_none());
        let a = held.take("t", 2).unwrap();
        let b = held.take("t", 2).unwrap();
        assert!(held.take("t", 2).is_none());
        // Another tenant has its own count.
        let c = held.take("u", 1).unwrap();
        let count = |t: &str| held.by_tenant.lock().unwrap().get(t).copied();
        assert_eq!((count("t"), count("u")), (Some(2), Some(1)));
        drop(a);
        let a = held.take("t", 2).unwrap();
        drop((a, b, c));
        assert!(held.by_tenant.lock().unwrap().is_empty(), "no entry left");
    }

    #[test]
    fn each_quota_refuses_by_name_and_release_frees() {
        let l = Ledger::default();
        let q = Quotas {
            live_cells: Some(2),
            memory_mib: Some(100),
            ..Quotas::default()
        };
        let r = Reservation {
            memory_mib: 40,
            cpu_time_ms: 0,
        };
        l.reserve("t", &q, r).unwrap();
        l.reserve("t", &q, r).unwrap();
        assert_eq!(l.reserve("t", &q, r).unwrap_err().quota, Some("live_cells"));
        l.release("t", r);
        let big = Reservation {
            memory_mib: 61,
            cpu_time_ms: 0,
        };
        assert_eq!(
            l.reserve("t", &q, big).unwrap_err().quota,
            Some("memory_mib")
        );
        l.reserve("t", &q, r).unwrap();
        assert_eq!(l.live_cells("t"), 2);
        assert_eq!(l.live_cells("other"), 0);

        let cpu = Quotas {
            cpu_time_ms: Some(1000),
            ..Quotas::default()
        };
        assert_eq!(
            l.reserve("c", &cpu, Reservation::default())
                .unwrap_err()
                .quota,
            Some("cpu_time_ms")
        );
        let rate = Quotas {
            creates_per_minute: Some(1),
            ..Quotas::default()
        };
        l.reserve("r", &rate, r).unwrap();
        l.release("r", r);
        assert_eq!(
            l.reserve("r", &rate, r).unwrap_err().quota,
            Some("creates_per_minute")
        );
    }
}
