//! Guest logs and metrics re-emitted through the host's `tracing` and `metrics` facades, the
//! metrics within the cell's series bounds.

use super::CellHost;
use std::collections::BTreeMap;

impl CellHost {
    pub(super) fn reemit_log(&self, level: abi::Level, message: &str, fields: &abi::Map) {
        let cell = self.cell.as_str();
        match level {
            abi::Level::Trace => tracing::trace!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Debug => tracing::debug!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Info => tracing::info!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Warn => tracing::warn!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Error => tracing::error!(target: "cell::guest", cell, ?fields, "{message}"),
        }
    }

    /// Re-emits a guest metric through the `metrics` facade, within the series bounds.
    pub(super) fn reemit_metric(&self, name: &str, value: f64, tags: &BTreeMap<String, String>) {
        let admitted = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(name, tags);
        if let Err(excess) = admitted {
            let mut first = false;
            self.count(|st| {
                first = st.metrics_dropped == 0;
                st.metrics_dropped += 1;
            });
            if first {
                tracing::warn!(cell = %self.cell, metric = name, "metric not re-emitted (further ones are counted only): {}", excess.describe());
            }
            metrics::counter!("cell.guest_metrics_dropped", "cell" => self.cell.clone())
                .increment(1);
            return;
        }
        let mut labels = vec![metrics::Label::new("cell", self.cell.clone())];
        labels.extend(
            tags.iter()
                .map(|(k, v)| metrics::Label::new(k.clone(), v.clone())),
        );
        metrics::histogram!(format!("cell.guest.{name}"), labels).record(value);
    }
}
