//! Audit: one record per request, saying who asked for what, whether it was allowed, the rule
//! that decided and how it ended. Every record also goes to `tracing` (target `cell::audit`) and
//! to the `metrics` facade (`cell.broker.requests`, labelled by capability, action and decision).

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The rules allowed the request.
    Allow,
    /// A deny rule, the default deny or an invalid request refused it.
    Deny,
}

impl Decision {
    /// `allow` or `deny`, as audit lines spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One audited request. Payloads and results are never recorded (they may hold secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The cell that asked.
    pub cell: String,
    /// The backend the cell runs on.
    pub backend: String,
    /// The capability asked for.
    pub capability: String,
    /// The action asked for.
    pub action: String,
    /// Whether the request was allowed.
    pub decision: Decision,
    /// The rule that decided: `grants[i]`, `denies[i]`, `default-deny`, or `invalid-request`.
    pub rule: String,
    /// `ok`, or the stable name of the error the request ended with.
    pub outcome: String,
    /// The error message, when the request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Payload plus result bytes counted against the byte quota.
    pub bytes: u64,
    /// Time from the decision to the outcome, in microseconds.
    pub duration_us: u64,
}

/// Where audit records go. Implementations must not block for long: they run on the request
/// path.
pub trait AuditSink: Send + Sync {
    /// Writes one record; called once per decided request.
    fn record(&self, record: &AuditRecord);
}

/// Records nothing beyond the `tracing` and `metrics` events every record produces anyway.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _: &AuditRecord) {}
}

/// JSON lines appended to a file, one flushed line per record.
#[derive(Debug)]
pub struct JsonLinesAudit {
    file: Mutex<File>,
}

impl JsonLinesAudit {
    /// Opens (creating or appending to) `path`.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLinesAudit {
            file: Mutex::new(file),
        })
    }
}

impl AuditSink for JsonLinesAudit {
    fn record(&self, record: &AuditRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(target: "cell::audit", "cannot encode audit record: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // One write of a whole line on an O_APPEND file: lines never interleave.
        if let Err(e) = file.write_all(&line) {
            tracing::error!(target: "cell::audit", "cannot write audit record: {e}");
        }
    }
}

/// Keeps records in memory (tests, embedding).
#[derive(Debug, Default)]
pub struct MemoryAudit {
    records: Mutex<Vec<AuditRecord>>,
}

impl MemoryAudit {
    /// Every record so far, oldest first.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, record: &AuditRecord) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record.clone());
    }
}

/// Sends a record to `sink`, `tracing` and `metrics`.
/// `known` says whether the capability and action are registered ones: names a guest made up
/// are labelled `unknown` in metrics, so a hostile cell cannot blow up label cardinality.
pub(crate) fn emit(sink: &dyn AuditSink, record: &AuditRecord, known: bool) {
    let (capability, action) = if known {
        (record.capability.clone(), record.action.clone())
    } else {
        ("unknown".to_string(), "unknown".to_string())
    };
    tracing::info!(
        target: "cell::audit",
        cell = %record.cell,
        backend = %record.backend,
        capability = %record.capability,
        action = %record.action,
        decision = record.decision.as_str(),
        rule = %record.rule,
        outcome = %record.outcome,
        bytes = record.bytes,
        duration_us = record.duration_us,
        "broker decision"
    );
    metrics::counter!(
        "cell.broker.requests",
        "capability" => capability.clone(),
        "action" => action,
        "decision" => record.decision.as_str(),
    )
    .increment(1);
    if record.decision == Decision::Allow {
        metrics::histogram!("cell.broker.request_seconds", "capability" => capability)
            .record(record.duration_us as f64 / 1e6);
    }
    sink.record(record);
}
