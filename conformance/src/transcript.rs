//! A transcript: what a scenario did and what came back, one line per step, independent of the
//! backend (codes, not messages; values as JSON).

use crate::driver::RecvError;
use crate::json;
use crate::target::ScenarioCell;
use abi::{CellError, Map, Value};
use host::Event;
use std::fmt::Write;
use std::time::Duration;

/// How long `recv` waits for an event a scenario expects to be queued already.
const RECV_WAIT: Duration = Duration::from_secs(5);
/// How long `recv` waits when a scenario expects the queue to be empty.
const EMPTY_WAIT: Duration = Duration::from_millis(20);

/// The lines a scenario recorded.
#[derive(Default)]
pub struct Transcript {
    text: String,
    /// Host-specific text (a temporary directory) and what stands for it in the snapshot.
    redactions: Vec<(String, String)>,
}

fn outcome(r: &Result<Value, CellError>) -> String {
    match r {
        Ok(v) => format!("ok {}", json::value(v)),
        Err(e) => format!("err {}", e.code.name()),
    }
}

fn event(e: &Event) -> String {
    match e {
        Event::Post(v) => format!("post {}", json::value(v)),
        Event::Log {
            level,
            message,
            fields,
        } => {
            format!(
                "log {} {:?} {}",
                level.name(),
                message,
                json::value(&Value::Map(fields.clone()))
            )
        }
        Event::Metric { name, value, tags } => format!("metric {name} {value} {tags:?}"),
        other => format!("{other:?}"),
    }
}

impl Transcript {
    /// An outcome with the error's whole message, for errors the host words itself.
    pub fn full(r: &Result<Value, CellError>) -> String {
        match r {
            Ok(v) => format!("ok {}", json::value(v)),
            Err(e) => format!("err {}: {}", e.code.name(), e.message),
        }
    }

    /// Records a comment line (`# ...`) in the transcript.
    pub fn note(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "# {}", line.as_ref());
    }

    /// Runs `source` in `cell` and records it with its outcome.
    pub fn exec(&mut self, cell: &dyn ScenarioCell, source: &str) -> Result<Value, CellError> {
        let r = cell.exec(source);
        let _ = writeln!(self.text, "exec {source:?} -> {}", outcome(&r));
        r
    }

    /// Calls `function` in `cell` and records it with its arguments and outcome.
    pub fn call(
        &mut self,
        cell: &dyn ScenarioCell,
        function: &str,
        args: Vec<Value>,
        kwargs: Map,
    ) -> Result<Value, CellError> {
        let shown = json::value(&Value::List(args.clone()));
        let r = cell.call(function, args, kwargs);
        let _ = writeln!(self.text, "call {function}({shown}) -> {}", outcome(&r));
        r
    }

    /// Receives one event that must already be on its way.
    pub fn recv(&mut self, cell: &dyn ScenarioCell) -> Option<Event> {
        self.recv_within(cell, RECV_WAIT)
    }

    /// Receives until the queue is empty (waiting briefly), recording each event.
    pub fn drain(&mut self, cell: &dyn ScenarioCell) {
        while self.recv_within(cell, EMPTY_WAIT).is_some() {}
    }

    fn recv_within(&mut self, cell: &dyn ScenarioCell, wait: Duration) -> Option<Event> {
        match cell.recv(Some(wait)) {
            Ok(e) => {
                let _ = writeln!(self.text, "recv -> {}", event(&e));
                Some(e)
            }
            Err(RecvError::Timeout) => {
                let _ = writeln!(self.text, "recv -> empty");
                None
            }
            Err(RecvError::Closed(reason)) => {
                let _ = writeln!(self.text, "recv -> closed {}", reason.code.name());
                None
            }
        }
    }

    /// Records `line` as it is.
    pub fn line(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}", line.as_ref());
    }

    /// Writes `with` wherever `text` (a path that differs between hosts and runs) appears.
    pub fn redact(&mut self, text: impl Into<String>, with: impl Into<String>) {
        self.redactions.push((text.into(), with.into()));
    }

    /// The recorded lines, redacted.
    pub fn into_string(self) -> String {
        self.redactions
            .iter()
            .fold(self.text, |text, (from, to)| text.replace(from, to))
    }
}
