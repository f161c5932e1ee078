//! Prometheus exposition of the `metrics` facade (the supervisor's, the broker's and ours).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Latency buckets, in seconds: 10 µs to 10 s.
const BUCKETS: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1.0, 2.5,
    10.0,
];

/// The process's recorder, installed on first use (one per process: nodes in one process, as
/// in tests, share it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(WithoutGuestSeries(recorder)).is_err() {
                tracing::warn!("a metrics recorder was already installed: /metrics shows only what reaches this one");
            }
            handle
        })
        .clone()
}

/// The node's recorder without the series cells' scripts name (`cell.guest.*`, each labelled
/// with its cell, and `cell.guest_metrics_dropped`): every cell that ever ran would leave its
/// series behind for the life of the process (the recorder cannot forget one), and `/metrics`
/// needs no key, so one tenant's metric names and tags would be shown to anyone. Tenants get
/// their cells' metrics as `metric` lines on the cells' event streams.
struct WithoutGuestSeries(PrometheusRecorder);

fn guest(name: &str) -> bool {
    name.starts_with("cell.guest")
}

impl Recorder for WithoutGuestSeries {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if !guest(key.as_str()) {
            self.0.describe_counter(key, unit, description)
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if !guest(key.as_str()) {
            self.0.describe_gauge(key, unit, description)
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if !guest(key.as_str()) {
            self.0.describe_histogram(key, unit, description)
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if guest(key.name()) {
            return Counter::noop();
        }
        self.0.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if guest(key.name()) {
            return Gauge::noop();
        }
        self.0.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if guest(key.name()) {
            return Histogram::noop();
        }
        self.0.register_histogram(key, metadata)
    }
}

pub async fn render() -> Response {
    let h = handle();
    h.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response()
}
