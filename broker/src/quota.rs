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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(max: u64) -> Quota {
        Quota {
            requests: None,
            bytes: Some(max),
            window_ms: 0,
        }
    }

    #[test]
    fn a_payload_of_exactly_the_byte_quota_is_admitted_and_one_more_is_not() {
        let mut q = QuotaState::new();
        assert_eq!(q.admit(&bytes(100), 101).map_err(|_| ()), Err(()));
        assert_eq!(q.admit(&bytes(100), 100), Ok(()));
        let err = q.admit(&bytes(100), 1).unwrap_err();
        assert!(err.contains("100 of 100 bytes per cell life"), "{err}");
    }

    #[test]
    fn results_may_fill_the_byte_quota_exactly() {
        let mut q = QuotaState::new();
        q.admit(&bytes(100), 40).unwrap();
        assert_eq!(q.settle(&bytes(100), 60), Ok(()));
        let mut q = QuotaState::new();
        q.admit(&bytes(100), 40).unwrap();
        let err = q.settle(&bytes(100), 61).unwrap_err();
        assert!(err.contains("101 of 100 bytes"), "{err}");
    }

    /// A window past its length starts afresh; a quota for the cell's life never does.
    #[test]
    fn a_window_past_its_length_starts_afresh() {
        let used = || QuotaState {
            window_start: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            requests: 1,
            bytes: 0,
        };
        let quota = |window_ms| Quota {
            requests: Some(1),
            bytes: None,
            window_ms,
        };
        assert_eq!(used().admit(&quota(10), 0), Ok(()));
        assert!(used().admit(&quota(0), 0).is_err());
        assert!(used().admit(&quota(3_600_000), 0).is_err());
    }

    #[test]
    fn refusals_name_the_window() {
        let per_window = Quota {
            requests: Some(0),
            bytes: None,
            window_ms: 60_000,
        };
        let err = QuotaState::new().admit(&per_window, 0).unwrap_err();
        assert!(err.ends_with("0 requests per 60000 ms"), "{err}");
        let per_life = Quota {
            window_ms: 0,
            ..per_window
        };
        let err = QuotaState::new().admit(&per_life, 0).unwrap_err();
        assert!(err.ends_with("0 requests per cell life"), "{err}");
    }
}
