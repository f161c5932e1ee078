//! A transcript: what a scenario did and what came back, one line per step, independent of the
//! backend: values as JSON, errors as their code and, where the host or the runtime words them,
//! their message, so every backend must answer word for word.

use crate::driver::RecvError;
use crate::json;
use crate::target::ScenarioCell;
use abi::{CellError, ErrorCode, Map, Value};
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
    /// Codes recorded without their message from now on (see [`Transcript::code_only`]).
    codes_only: Vec<ErrorCode>,
}

/// Codes whose message is the script engine's own account of the script's fault (a parse
/// error, a thrown value, a missing function, with the engine's type names and positions): an
/// engine of another build words them its own way, so only the code is recorded. Every other
/// code's message is worded by the host side, the broker or the cell runtime, the same on every
/// backend, and is recorded whole.
const ENGINE_WORDED: &[ErrorCode] = &[ErrorCode::Syntax, ErrorCode::Runtime, ErrorCode::NotFound];

/// `message` with every cell name (`` cell `NAME` ``) replaced by `` cell `<cell>` ``: a cell's
/// name is its front end's handle for it (the scenario's name in process, an id the service
/// chose over HTTP), not part of the answer.
fn without_cell_names(message: &str) -> String {
    const CELL: &str = "cell `";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(CELL) {
        let name = &rest[at + CELL.len()..];
        let Some(end) = name.find('`') else { break };
        out.push_str(&rest[..at + CELL.len()]);
        out.push_str("<cell>");
        rest = &name[end..];
    }
    out.push_str(rest);
    out
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
    /// An error as recorded: its code and, unless the engine or the front end words it (see
    /// [`ENGINE_WORDED`], [`Transcript::code_only`]), its message with cell names normalised.
    pub fn error(&self, e: &CellError) -> String {
        if ENGINE_WORDED.contains(&e.code) || self.codes_only.contains(&e.code) {
            e.code.name().to_string()
        } else {
            format!("{}: {}", e.code.name(), without_cell_names(&e.message))
        }
    }

    /// An outcome as recorded: `ok VALUE` or `err ERROR` (see [`Transcript::error`]).
    pub fn outcome(&self, r: &Result<Value, CellError>) -> String {
        match r {
            Ok(v) => format!("ok {}", json::value(v)),
            Err(e) => format!("err {}", self.error(e)),
        }
    }

    /// From now on, records errors with `code` by their code alone. For what a front end does
    /// itself and words its own way: a kill is the driver's `kill` in process and a `DELETE`
    /// over HTTP, and each says so in its own words.
    pub fn code_only(&mut self, code: ErrorCode) {
        self.codes_only.push(code);
    }

    /// Records a comment line (`# ...`) in the transcript.
    pub fn note(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "# {}", line.as_ref());
    }

    /// Runs `source` in `cell` and records it with its outcome.
    pub fn exec(&mut self, cell: &dyn ScenarioCell, source: &str) -> Result<Value, CellError> {
        let r = cell.exec(source);
        let _ = writeln!(self.text, "exec {source:?} -> {}", self.outcome(&r));
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
        let _ = writeln!(
            self.text,
            "call {function}({shown}) -> {}",
            self.outcome(&r)
        );
        r
    }

    /// Receives one event that must already be on its way.
    pub fn recv(&mut self, cell: &dyn ScenarioCell) -> Option<Event> {
        self.recv_within(cell, RECV_WAIT, event)
    }

    /// Receives until the queue is empty (waiting briefly), recording each event.
    pub fn drain(&mut self, cell: &dyn ScenarioCell) {
        while self.recv_within(cell, EMPTY_WAIT, event).is_some() {}
    }

    /// As [`Transcript::drain`], each event recorded as `shown` describes it (for events too
    /// large to record whole).
    pub fn drain_shown(&mut self, cell: &dyn ScenarioCell, shown: fn(&Event) -> String) {
        while self.recv_within(cell, EMPTY_WAIT, shown).is_some() {}
    }

    fn recv_within(
        &mut self,
        cell: &dyn ScenarioCell,
        wait: Duration,
        shown: fn(&Event) -> String,
    ) -> Option<Event> {
        match cell.recv(Some(wait)) {
            Ok(e) => {
                let _ = writeln!(self.text, "recv -> {}", shown(&e));
                Some(e)
            }
            Err(RecvError::Timeout) => {
                let _ = writeln!(self.text, "recv -> empty");
                None
            }
            Err(RecvError::Closed(reason)) => {
                let closed = self.error(&reason);
                let _ = writeln!(self.text, "recv -> closed {closed}");
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
