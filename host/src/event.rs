//! What a cell sends the host outside completions: the items `recv` returns, in order.

use abi::{Level, Map, Value};
use std::collections::BTreeMap;

/// One item from a cell's channel.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `post(message)`.
    Post(Value),
    /// `log(level, message, fields)`.
    Log {
        /// How severe the event is.
        level: Level,
        /// The log line.
        message: String,
        /// Structured context fields.
        fields: Map,
    },
    /// `metric(name, value, tags)`.
    Metric {
        /// Metric name.
        name: String,
        /// Sample value.
        value: f64,
        /// Tags (label pairs) on the sample.
        tags: BTreeMap<String, String>,
    },
}

impl Event {
    /// The event's kind as it appears in transcripts and JSON output.
    pub const fn kind(&self) -> &'static str {
        match self {
            Event::Post(_) => "post",
            Event::Log { .. } => "log",
            Event::Metric { .. } => "metric",
        }
    }
}
