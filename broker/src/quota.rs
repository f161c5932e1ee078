//! Per-cell counters of a grant's `quota = { requests, bytes, window_ms }`.

use crate::rules::Quota;
use std::time::{Duration, Instant};

pub(crate) struct QuotaState {
    window_start: Instant,
    requests: u64,
    bytes: u64,
}

impl QuotaState {
    pub(crate) fn new() -> Self {
        QuotaState {
            window_start: Instant::now(),
            requests: 0,
            bytes: 0,
        }
    }

    fn roll(&mut self, quota: &Quota) {
        if quota.window_ms > 0
            && self.window_start.elapsed() >= Duration::from_millis(quota.window_ms)
        {
            *self = QuotaState::new();
        }
    }

    fn describe(quota: &Quota) -> String {
        if quota.window_ms == 0 {
            "per cell life".into()
        } else {
            format!("per {} ms", quota.window_ms)
        }
    }

    /// Counts one request carrying `bytes` of payload, or says why the quota refuses it.
    pub(crate) fn admit(&mut self, quota: &Quota, bytes: u64) -> Result<(), String> {
        self.roll(quota);
        if let Some(max) = quota.requests
            && self.requests >= max
        {
            return Err(format!(
                "request quota used up: {max} requests {}",
                Self::describe(quota)
            ));
        }
        if let Some(max) = quota.bytes
            && self.bytes.saturating_add(bytes) > max
        {
            return Err(format!(
                "byte quota used up: {} of {max} bytes {} used, this payload has {bytes}",
                self.bytes,
                Self::describe(quota)
            ));
        }
        self.requests += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        Ok(())
    }

    /// Takes back a request [`QuotaState::admit`] counted that a deny rule then refused: only
    /// what a grant allowed counts.
    pub(crate) fn refund(&mut self, bytes: u64) {
        self.requests = self.requests.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Counts `bytes` of result; past the quota the result is withheld.
    pub(crate) fn settle(&mut self, quota: &Quota, bytes: u64) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(bytes);
        match quota.bytes {
            Some(max) if self.bytes > max => Err(format!(
                "byte quota used up: the result of {bytes} bytes brings the total to {} of {max} bytes {}",
                self.bytes,
                Self::describe(quota)
            )),
            _ => Ok(()),
        }
    }
}
