//! The host side of the protocol: one implementation, plugged into every backend's pipe.
//!
//! It holds the per-cell protocol state and checks every frame a guest sends against it:
//! a completion must carry the id of the transaction in flight, a handshake answer may only come
//! during the handshake, values must fit the limits, events must fit the bounded queue, and a
//! request is decided here, on the host, by the [`RequestHandler`]. Anything else aborts the
//! transaction and the supervisor kills the cell. Nothing a guest sends can panic this code.

use crate::channel::Channel;
use crate::event::Event;
use crate::requests::{RequestContext, RequestHandler};
use abi::backend::{Flow, HostSide};
use abi::{
    ABI_VERSION, CellError, ErrorCode, GuestFrame, HostFrame, Ready, SCHEMA_KEY, Value, wire,
};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Where the protocol is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Hello sent; waiting for Ready or Refused.
    Handshake,
    /// No transaction in flight: the guest has no business sending anything.
    Idle,
    /// An exec or call with this id is running.
    Running(u64),
}

struct State {
    phase: Phase,
    /// The result of the last completed transaction, taken by the caller.
    completion: Option<Result<Value, CellError>>,
    ready: Option<Ready>,
    events: VecDeque<Event>,
    queued_bytes: usize,
    /// Why the cell is gone, once it is.
    dead: Option<CellError>,
    /// Largest request id seen: ids must increase, so a replayed id is a forgery.
    last_request: u64,
}

/// Counters for `list`/stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub transactions: u64,
    pub events: u64,
    pub requests: u64,
    pub violations: u64,
}

/// The host side of one cell.
pub struct CellHost {
    cell: String,
    backend: String,
    channel: Channel,
    requests: Arc<dyn RequestHandler>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
    /// Signalled when an event is queued or the cell dies.
    arrived: Condvar,
}

fn violation(message: String) -> Flow {
    Flow::Abort(CellError::new(ErrorCode::ProtocolViolation, message))
}

impl CellHost {
    pub fn new(
        cell: &str,
        backend: &str,
        channel: Channel,
        requests: Arc<dyn RequestHandler>,
    ) -> Self {
        CellHost {
            cell: cell.into(),
            backend: backend.into(),
            channel,
            requests,
            state: Mutex::new(State {
                phase: Phase::Handshake,
                completion: None,
                ready: None,
                events: VecDeque::new(),
                queued_bytes: 0,
                dead: None,
                last_request: 0,
            }),
            stats: Mutex::default(),
            arrived: Condvar::new(),
        }
    }

    // A panic elsewhere while holding the lock must not take the protocol down with it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest's handshake answer, once the handshake succeeded.
    pub fn ready(&self) -> Option<Ready> {
        self.state().ready.clone()
    }

    /// Marks the start of the transaction `id`.
    pub fn begin(&self, id: u64) {
        let mut s = self.state();
        s.phase = Phase::Running(id);
        s.completion = None;
        self.count(|st| st.transactions += 1);
    }

    /// Takes the result the guest completed the last transaction with.
    pub fn take_completion(&self) -> Option<Result<Value, CellError>> {
        let mut s = self.state();
        s.phase = Phase::Idle;
        s.completion.take()
    }

    /// Records why the cell is gone (the first reason wins) and wakes `recv` callers.
    pub fn mark_dead(&self, reason: CellError) {
        let mut s = self.state();
        if s.dead.is_none() {
            if reason.code == ErrorCode::CellClosed {
                tracing::debug!(cell = %self.cell, "cell closed");
            } else {
                tracing::warn!(cell = %self.cell, code = %reason.code, "cell stopped: {}", reason.message);
            }
            s.dead = Some(reason);
        }
        drop(s);
        self.requests.cancel();
        self.arrived.notify_all();
    }

    pub fn dead(&self) -> Option<CellError> {
        self.state().dead.clone()
    }

    /// Waits for the next event until `deadline` (`None`: wait as long as the cell lives).
    /// Events queued before the cell died are still delivered.
    pub fn next_event(&self, deadline: Option<Instant>) -> Result<Event, Option<CellError>> {
        let mut s = self.state();
        loop {
            if let Some(event) = s.events.pop_front() {
                s.queued_bytes = s.queued_bytes.saturating_sub(event_size(&event));
                return Ok(event);
            }
            if let Some(dead) = &s.dead {
                return Err(Some(dead.clone()));
            }
            s = match deadline {
                None => self.arrived.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(None);
                    }
                    self.arrived
                        .wait_timeout(s, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    fn on_ready(&self, ready: Ready) -> Flow {
        if ready.abi_version != ABI_VERSION || ready.schema != SCHEMA_KEY {
            return Flow::Abort(CellError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "cell speaks ABI {} ({}), host speaks ABI {ABI_VERSION} ({SCHEMA_KEY})",
                    ready.abi_version, ready.schema
                ),
            ));
        }
        let mut s = self.state();
        s.ready = Some(ready);
        s.phase = Phase::Idle;
        Flow::Done
    }

    fn on_event(&self, event: Event) -> Flow {
        let size = event_size(&event);
        let mut s = self.state();
        if s.events.len() >= self.channel.max_queued_events
            || s.queued_bytes + size > self.channel.max_queued_bytes
        {
            return Flow::Abort(CellError::new(
                ErrorCode::LimitEventQueue,
                format!(
                    "the cell flooded its channel: {} events / {} bytes waiting for recv (limits {} / {})",
                    s.events.len(),
                    s.queued_bytes,
                    self.channel.max_queued_events,
                    self.channel.max_queued_bytes
                ),
            ));
        }
        s.queued_bytes += size;
        s.events.push_back(event);
        drop(s);
        self.count(|st| st.events += 1);
        self.arrived.notify_one();
        Flow::Continue
    }

    fn on_request(&self, id: u64, capability: String, action: String, payload: Value) -> Flow {
        {
            let mut s = self.state();
            if id <= s.last_request {
                return violation(format!("request id {id} was already used"));
            }
            s.last_request = id;
        }
        self.count(|st| st.requests += 1);
        let ctx = RequestContext {
            cell: &self.cell,
            backend: &self.backend,
        };
        let _span =
            tracing::debug_span!("request", cell = %self.cell, %capability, %action).entered();
        let result = self.requests.handle(ctx, &capability, &action, payload);
        if let Err(e) = &result {
            tracing::debug!(cell = %self.cell, %capability, %action, code = %e.code, "request refused");
        }
        Flow::Reply(HostFrame::Reply { id, result })
    }

    fn reemit_log(&self, level: abi::Level, message: &str, fields: &abi::Map) {
        let cell = self.cell.as_str();
        match level {
            abi::Level::Trace => tracing::trace!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Debug => tracing::debug!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Info => tracing::info!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Warn => tracing::warn!(target: "cell::guest", cell, ?fields, "{message}"),
            abi::Level::Error => tracing::error!(target: "cell::guest", cell, ?fields, "{message}"),
        }
    }

    fn reemit_metric(
        &self,
        name: &str,
        value: f64,
        tags: &std::collections::BTreeMap<String, String>,
    ) {
        let mut labels = vec![metrics::Label::new("cell", self.cell.clone())];
        labels.extend(
            tags.iter()
                .map(|(k, v)| metrics::Label::new(k.clone(), v.clone())),
        );
        metrics::histogram!(format!("cell.guest.{name}"), labels).record(value);
    }
}

/// Bytes an event occupies in the queue, as its frame would on the wire.
fn event_size(event: &Event) -> usize {
    let len = match event {
        Event::Post(v) => wire::encoded_len(v),
        Event::Log {
            message, fields, ..
        } => wire::encoded_len(&(message, fields)),
        Event::Metric { name, tags, .. } => wire::encoded_len(&(name, tags)),
    };
    len.unwrap_or(0) + 16
}

/// Checks what a typed frame cannot express: value depth (in-process pipes skip the decoder that
/// enforces it).
fn check_value(value: &Value) -> Result<(), Flow> {
    value
        .check_depth()
        .map_err(|e| violation(format!("value refused: {e}")))
}

impl HostSide for CellHost {
    fn on_frame(&self, frame: GuestFrame) -> Flow {
        let phase = self.state().phase;
        let flow = match (phase, frame) {
            (Phase::Handshake, GuestFrame::Ready(ready)) => self.on_ready(ready),
            (Phase::Handshake, GuestFrame::Refused(err)) => Flow::Abort(err),
            (Phase::Running(expected), GuestFrame::Done { id, result }) => {
                if id != expected {
                    violation(format!(
                        "completion for id {id}, but transaction {expected} is in flight"
                    ))
                } else if let Err(flow) = result.as_ref().map_or(Ok(()), check_value) {
                    flow
                } else {
                    let mut s = self.state();
                    s.completion = Some(result);
                    s.phase = Phase::Idle;
                    Flow::Done
                }
            }
            (Phase::Running(_), GuestFrame::Post(value)) => match check_value(&value) {
                Ok(()) => self.on_event(Event::Post(value)),
                Err(flow) => flow,
            },
            (
                Phase::Running(_),
                GuestFrame::Log {
                    level,
                    message,
                    fields,
                },
            ) => match check_value(&Value::Map(fields.clone())) {
                Ok(()) => {
                    self.reemit_log(level, &message, &fields);
                    self.on_event(Event::Log {
                        level,
                        message,
                        fields,
                    })
                }
                Err(flow) => flow,
            },
            (Phase::Running(_), GuestFrame::Metric { name, value, tags }) => {
                if name.is_empty() || name.len() > 256 {
                    violation(format!(
                        "metric name of {} bytes (1..=256 allowed)",
                        name.len()
                    ))
                } else {
                    self.reemit_metric(&name, value, &tags);
                    self.on_event(Event::Metric { name, value, tags })
                }
            }
            (
                Phase::Running(_),
                GuestFrame::Request {
                    id,
                    capability,
                    action,
                    payload,
                },
            ) => match check_value(&payload) {
                Ok(()) => self.on_request(id, capability, action, payload),
                Err(flow) => flow,
            },
            (phase, other) => violation(format!(
                "unexpected {:?} frame while {}",
                other.kind(),
                match phase {
                    Phase::Handshake => "waiting for the handshake".to_string(),
                    Phase::Idle => "no transaction is in flight".to_string(),
                    Phase::Running(id) => format!("transaction {id} is in flight"),
                }
            )),
        };
        if let Flow::Abort(err) = &flow {
            if err.code == ErrorCode::ProtocolViolation {
                self.count(|st| st.violations += 1);
            }
            tracing::warn!(cell = %self.cell, code = %err.code, "aborting: {}", err.message);
        }
        flow
    }
}
