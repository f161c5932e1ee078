//! The host side of the protocol: one implementation, plugged into every backend's pipe.
//!
//! Why one file of about 700 lines: it is one state machine (handshake, idle, transaction in
//! flight, dead) and every frame's check reads the same state under the same lock; the rules
//! that need no state live in `rules.rs`, deadlines in `deadlines.rs`, broker requests in
//! `requests.rs`.
//!
//! It holds the per-cell protocol state and checks every frame against it, in both directions.
//! Host frames go through [`CellHost::transact`] (or [`CellHost::outgoing`]), which checks the
//! frame cap, value depth and the engine's lengths before any pipe sees them. Guest frames come
//! back through [`HostSide::on_frame`]: a completion must carry the id of the transaction in
//! flight, a handshake answer may only come during the handshake, values must fit the limits,
//! events must fit the bounded queue, codes only the host may report are not taken from the
//! guest, and a request is decided here, on the host, by the [`RequestHandler`], before its
//! deadline. Anything else aborts the transaction and the cell is killed. Nothing a guest sends
//! can panic this code.

use crate::canonical;
use crate::channel::Channel;
use crate::deadlines;
use crate::event::Event;
use crate::memory::{event_bytes, frame_bytes};
use crate::requests::{RequestContext, RequestHandler};
use crate::rules::{self, Direction};
use crate::series::Series;
use abi::backend::{CellPipe, Flow, HostSide, PipeError, Resources};
use abi::value::Lengths;
use abi::{
    ABI_VERSION, CellError, EngineLimits, ErrorCode, GuestFrame, HostFrame, Ready, SCHEMA_KEY,
    Value, wire,
};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod reemit;

/// The least time a cell's start (its handshake) is given, whatever its wall time: the wall
/// time is the script's, per exec and call, while a start waits for a process or a VM to come
/// up (milliseconds, more on a loaded host). With a wall time below that, process and microVM
/// cells were refused at random.
pub const START_TIME: Duration = Duration::from_secs(10);

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
    /// Memory the queued events hold (see `memory`).
    queued_bytes: usize,
    /// Why the cell is gone, once it is.
    dead: Option<CellError>,
    /// Largest request id seen: ids must increase, so a replayed id is a forgery.
    last_request: u64,
    /// The lengths the cell's engine holds (from its handshake): what may cross either way.
    lengths: Lengths,
    /// When the transaction in flight must end, and the wall-time limit it comes from.
    deadline: Option<Instant>,
    wall_time: Option<Duration>,
    /// The transaction in flight is the handshake (its time is [`START_TIME`]'s, not the
    /// script's wall time).
    starting: bool,
    /// The host side's own reason for its last `Flow::Abort`.
    aborted: Option<CellError>,
    /// The embedder interrupted the transaction in flight: a `cancelled` completion is its own.
    interrupted: bool,
    /// Threads blocked in `next_event`. A condvar's notify is a syscall even with nobody
    /// waiting, and most events are queued with nobody waiting (a tenth of a cold cell's cost).
    waiting: usize,
    /// Told when an event is queued or the cell dies (see [`Listener`]).
    listener: Option<Listener>,
    /// A full queue makes the guest wait for `recv` instead of stopping it (see
    /// [`CellHost::set_backpressure`]).
    backpressure: bool,
    /// Guests waiting for room in the queue (at most one: transactions run one at a time).
    waiting_for_room: usize,
}

/// Called when a cell's channel changes: right after an event is queued for `recv`, and once
/// when the cell dies. It runs on the thread that queued the event (on some backends the
/// exec's own thread, inside the guest's `post`), outside every lock of the cell: it must
/// return quickly and must not run exec/call on the cell; `recv` with a zero timeout is fine.
/// It only says there is something: the events still wait for `recv`. Wakes instead of polls,
/// without a thread per cell.
pub type Listener = Arc<dyn Fn() + Send + Sync>;

/// Counters for `list`/stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Exec and call transactions started (not the handshake).
    pub transactions: u64,
    /// Events (posts, logs, metrics) the cell sent.
    pub events: u64,
    /// Requests (`request(...)`) the cell made that reached the request handler.
    pub requests: u64,
    /// Guest frames that broke a protocol rule (each stops the cell).
    pub violations: u64,
    /// Metrics queued for `recv` but not re-emitted: past the series bounds (see `series`).
    pub metrics_dropped: u64,
}

/// The host side of one cell.
pub struct CellHost {
    cell: String,
    backend: String,
    channel: Channel,
    resources: Option<Resources>,
    requests: Arc<dyn RequestHandler>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
    series: Mutex<Series>,
    /// Signalled when an event is queued or the cell dies.
    arrived: Condvar,
    /// Signalled when `recv` takes an event, with a guest waiting for room, or the cell dies.
    room: Condvar,
}

/// What is left until `deadline`: `Some(None)` without one, `None` once it has passed.
fn time_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(Some(left)),
            _ => None,
        },
    }
}

/// Waits on `cv` with the state's lock, for at most `left` (`None`: until notified).
fn wait_on<'a>(
    cv: &Condvar,
    s: MutexGuard<'a, State>,
    left: Option<Duration>,
) -> MutexGuard<'a, State> {
    match left {
        None => cv.wait(s).unwrap_or_else(|e| e.into_inner()),
        Some(left) => {
            cv.wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0
        }
    }
}

fn violation(message: String) -> Flow {
    Flow::Abort(CellError::new(ErrorCode::ProtocolViolation, message))
}

impl CellHost {
    /// The host side of cell `cell` on `backend`, with the channel's bounds and the handler for its
    /// requests. Hand it to the backend's `spawn` as the [`abi::backend::HostSide`], then drive
    /// transactions through [`CellHost::transact`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use abi::HostFrame;
    /// use cell_host::{CellHost, Channel, DenyAll};
    ///
    /// let channel = Channel { max_frame_bytes: 64, ..Channel::default() };
    /// let host = CellHost::new("demo", "subinterp", channel, Arc::new(DenyAll));
    /// // Host frames are checked before any pipe sees them: this one is over the 64-byte cap.
    /// let big = HostFrame::Exec { id: 1, source: "x".repeat(100) };
    /// assert!(host.outgoing(&big).is_err());
    /// assert!(host.outgoing(&HostFrame::Exec { id: 2, source: "1 + 1".into() }).is_ok());
    /// ```
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
            resources: None,
            requests,
            state: Mutex::new(State {
                phase: Phase::Handshake,
                completion: None,
                ready: None,
                events: VecDeque::new(),
                queued_bytes: 0,
                dead: None,
                last_request: 0,
                lengths: Lengths::of(&EngineLimits::default()),
                deadline: None,
                wall_time: None,
                starting: false,
                aborted: None,
                interrupted: false,
                waiting: 0,
                listener: None,
                backpressure: false,
                waiting_for_room: 0,
            }),
            stats: Mutex::default(),
            series: Mutex::default(),
            arrived: Condvar::new(),
            room: Condvar::new(),
        }
    }

    /// The resources the boundary enforces, so a cell stopped for using one up is told so in the
    /// same words on every backend.
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = Some(resources);
        self
    }

    // A panic elsewhere while holding the lock must not take the protocol down with it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest's handshake answer, once the handshake succeeded.
    pub fn ready(&self) -> Option<Ready> {
        self.state().ready.clone()
    }

    /// Marks the start of the transaction `id` (done by [`CellHost::transact`]; for pipes
    /// driven by hand).
    pub fn begin(&self, id: u64) {
        let mut s = self.state();
        s.phase = Phase::Running(id);
        s.completion = None;
        drop(s);
        self.count(|st| st.transactions += 1);
    }

    /// Takes the result the guest completed the last transaction with.
    pub fn take_completion(&self) -> Option<Result<Value, CellError>> {
        let mut s = self.state();
        s.phase = Phase::Idle;
        s.completion.take()
    }

    /// Records that the embedder is interrupting the transaction in flight (call it before the
    /// backend's interrupter), so that the guest's `cancelled` completion is taken as the host's.
    pub fn mark_interrupted(&self) {
        self.state().interrupted = true;
    }

    /// Records why the cell is gone (the first reason wins) and wakes `recv` callers. Call it
    /// before killing the cell, so that a completion the kill causes is read as the kill.
    pub fn mark_dead(&self, reason: CellError) {
        let mut s = self.state();
        let mut listener = None;
        if s.dead.is_none() {
            listener = s.listener.take();
            // Closed or killed by its embedder (a DELETE, an expiry): asked for, so not a
            // warning; a service deleting thousands of cells would log a line for each.
            if matches!(reason.code, ErrorCode::CellClosed | ErrorCode::Cancelled) {
                tracing::debug!(cell = %self.cell, code = %reason.code, "cell ended: {}", reason.message);
            } else {
                tracing::warn!(cell = %self.cell, code = %reason.code, "cell stopped: {}", reason.message);
            }
            s.dead = Some(reason);
        }
        let waiting = s.waiting > 0;
        let waiting_for_room = s.waiting_for_room > 0;
        drop(s);
        self.requests.cancel();
        if waiting {
            self.arrived.notify_all();
        }
        if waiting_for_room {
            self.room.notify_all();
        }
        // Told once, and let go: nothing more will be queued.
        if let Some(listener) = listener {
            listener();
        }
    }

    /// Registers `listener` (replacing any other; `None` removes it), told of every event
    /// queued from now on and of the cell's death. On a cell already dead it is told at once
    /// and not kept.
    pub fn set_listener(&self, listener: Option<Listener>) {
        let mut s = self.state();
        if s.dead.is_some() {
            drop(s);
            if let Some(listener) = listener {
                listener();
            }
            return;
        }
        s.listener = listener;
    }

    /// With `on`, a cell whose event queue is full (`max_queued_events` or `max_queued_bytes`)
    /// waits until [`CellHost::next_event`] makes room, its exec/call paused and its wall time
    /// running, instead of being stopped with `limit_event_queue`; the queue never holds more
    /// than the limits. For an embedder that drains events while exec/call runs (`cell run`
    /// prints them as they come): what the cell says and how it ends then no longer depend on
    /// how fast the drain is against how fast the cell posts, so every backend gives the same
    /// answer. Off by default: with nobody draining, the cell would wait out its wall time. The
    /// wait ends when the queue has room, the cell dies (a kill) or the transaction's deadline
    /// passes (`timed_out`, as for any script past its wall time); an interrupt takes effect once
    /// the guest runs again.
    pub fn set_backpressure(&self, on: bool) {
        let mut s = self.state();
        s.backpressure = on;
        let waiting_for_room = s.waiting_for_room > 0;
        drop(s);
        if waiting_for_room {
            self.room.notify_all();
        }
    }

    /// Events waiting for [`CellHost::next_event`] now.
    pub fn queued_events(&self) -> usize {
        self.state().events.len()
    }

    /// How many threads are blocked in [`CellHost::next_event`] right now.
    pub fn receivers_waiting(&self) -> usize {
        self.state().waiting
    }

    /// Why the cell died, once it has (`None` while it lives).
    pub fn dead(&self) -> Option<CellError> {
        self.state().dead.clone()
    }

    /// What a transaction on the cell answers once it is gone: `cell_closed`, naming why.
    pub fn gone(&self) -> Option<CellError> {
        self.dead().map(|dead| {
            CellError::new(
                ErrorCode::CellClosed,
                format!("cell `{}` is gone: {dead}", self.cell),
            )
        })
    }

    /// Checks a host frame against every limit before it is handed to a pipe: the frame cap
    /// (its encoded size), value depth and the lengths the cell's engine holds, and for a
    /// handshake the ABI and the modules. A frame that breaks one is never sent; the error names
    /// the limit and the direction, and the cell stays usable.
    pub fn outgoing(&self, frame: &HostFrame) -> Result<(), CellError> {
        let lengths = match frame {
            HostFrame::Hello(hello) => Lengths::of(&hello.limits),
            _ => self.state().lengths,
        };
        rules::outgoing(frame, self.channel.max_frame_bytes, &lengths)
    }

    /// Runs one transaction — `Hello`, `Exec` or `Call` — through `pipe`: checks the frame,
    /// marks the transaction, gives it `wall_time` (requests in flight included), and maps
    /// whatever ends it to one error, worded the same for every backend. A fatal error kills the
    /// cell (marked dead first).
    pub fn transact(
        &self,
        pipe: &mut dyn CellPipe,
        frame: HostFrame,
        wall_time: Option<Duration>,
    ) -> Result<Value, CellError> {
        if let Some(gone) = self.gone() {
            return Err(gone);
        }
        let (hello, id) = match &frame {
            HostFrame::Hello(hello) => (Some(hello.limits.clone()), None),
            HostFrame::Exec { id, .. } | HostFrame::Call { id, .. } => (None, Some(*id)),
            other => {
                return Err(CellError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "a {:?} frame does not start a transaction: send Hello, Exec or Call",
                        other.kind()
                    ),
                ));
            }
        };
        if let Err(err) = self.outgoing(&frame) {
            if hello.is_some() {
                // A cell that cannot be greeted is of no use.
                self.fail(pipe, err.clone());
            }
            return Err(err);
        }
        // The wall time is the script's; a start waits for a process or a VM to come up.
        let wall_time = match hello {
            Some(_) => wall_time.map(|t| t.max(START_TIME)),
            None => wall_time,
        };
        let deadline = wall_time.map(|t| Instant::now() + t);
        {
            let mut s = self.state();
            if let Some(limits) = &hello {
                s.lengths = Lengths::of(limits);
            }
            s.deadline = deadline;
            s.wall_time = wall_time;
            s.starting = hello.is_some();
            s.aborted = None;
            s.interrupted = false;
        }
        if let Some(id) = id {
            self.begin(id);
        }
        let result = match pipe.transact(frame, deadline) {
            Ok(()) if hello.is_some() => Ok(Value::Unit),
            Ok(()) => self.take_completion().unwrap_or_else(|| {
                Err(CellError::new(
                    ErrorCode::Internal,
                    "the pipe ended the transaction without a completion",
                ))
            }),
            Err(e) => {
                // A kill from another thread explains the broken pipe better than the pipe can.
                let err = self.dead().unwrap_or_else(|| self.pipe_error(e));
                // A broken transaction leaves the channel mid-frame: the cell is done, whatever
                // the code.
                self.fail(pipe, err.clone());
                Err(err)
            }
        };
        self.state().deadline = None;
        if let Err(err) = &result {
            // An interrupt cancels the exec, not the cell.
            let interrupted = err.code == ErrorCode::Cancelled
                && self.state().interrupted
                && self.dead().is_none();
            if err.code.is_fatal() && !interrupted {
                self.fail(pipe, err.clone());
            }
        }
        result
    }

    fn fail(&self, pipe: &mut dyn CellPipe, reason: CellError) {
        self.mark_dead(reason);
        pipe.killer().kill();
    }

    /// The error a broken transaction ends with, in the host's words.
    fn pipe_error(&self, e: PipeError) -> CellError {
        let (aborted, wall_time, starting) = {
            let mut s = self.state();
            (s.aborted.take(), s.wall_time, s.starting)
        };
        match e {
            PipeError::TimedOut if starting => canonical::start_timed_out(wall_time),
            PipeError::TimedOut => canonical::timed_out(wall_time),
            PipeError::Killed => canonical::cancelled(),
            PipeError::Wire(wire::WireError::TooLarge { len, max }) => rules::frame_too_large(
                rules::Subject("the cell's frame", false),
                len,
                max,
                Direction::CellToHost,
            ),
            PipeError::Wire(wire::WireError::OverMemory { max }) => rules::frame_memory(max),
            PipeError::Wire(w) => CellError::new(
                ErrorCode::ProtocolViolation,
                format!("the cell sent a bad frame: {w}"),
            ),
            PipeError::Exhausted { resource, detail } => {
                tracing::debug!(cell = %self.cell, "resource used up: {detail}");
                canonical::exhausted(resource, self.resources.as_ref())
            }
            PipeError::Aborted(err) => aborted.unwrap_or_else(|| {
                if err.code.guest_may_report() {
                    // An in-process guest stopped the transaction itself.
                    CellError::new(
                        ErrorCode::ProtocolViolation,
                        format!("the cell stopped the transaction: {err}"),
                    )
                } else {
                    err
                }
            }),
            other => other.to_cell_error(),
        }
    }

    /// Waits for the next event until `deadline` (`None`: wait as long as the cell lives).
    /// Events queued before the cell died are still delivered.
    pub fn next_event(&self, deadline: Option<Instant>) -> Result<Event, Option<CellError>> {
        let mut s = self.state();
        loop {
            if let Some(event) = s.events.pop_front() {
                s.queued_bytes = s.queued_bytes.saturating_sub(event_bytes(&event));
                if s.waiting_for_room > 0 {
                    drop(s);
                    self.room.notify_one();
                }
                return Ok(event);
            }
            if let Some(dead) = &s.dead {
                return Err(Some(dead.clone()));
            }
            let Some(left) = time_left(deadline) else {
                return Err(None);
            };
            // Counted under the lock that the notifiers read it under, so no wake is lost.
            s.waiting += 1;
            s = wait_on(&self.arrived, s, left);
            s.waiting -= 1;
        }
    }

    fn on_ready(&self, ready: Ready) -> Flow {
        if !abi::version::compatible(ready.abi_version, &ready.schema) {
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

    /// A guest's refusal of the handshake: its own reasons pass, a code only the host may
    /// report does not.
    fn on_refused(&self, err: CellError) -> Flow {
        if err.code.guest_may_report() || err.code == ErrorCode::VersionMismatch {
            return Flow::Abort(err);
        }
        violation(format!(
            "the cell refused the handshake with `{}`, a code only the host reports: {}",
            err.code, err.message
        ))
    }

    /// An error a guest completed a transaction with. Codes only the host may report are taken
    /// only when the host saw the same: its clock past the deadline, or its own kill. Otherwise
    /// they are the script's own failure, with the guest's words kept.
    fn guest_error(&self, err: CellError) -> CellError {
        if err.code.guest_may_report() {
            return err;
        }
        let s = self.state();
        match err.code {
            ErrorCode::TimedOut if s.deadline.is_some_and(|d| Instant::now() >= d) => {
                return canonical::timed_out(s.wall_time);
            }
            ErrorCode::Cancelled if s.dead.is_some() => {
                return s.dead.clone().unwrap_or_else(canonical::cancelled);
            }
            ErrorCode::Cancelled if s.interrupted => return canonical::interrupted(),
            _ => {}
        }
        CellError::new(
            ErrorCode::Runtime,
            format!(
                "the script failed with `{}`, a code only the host reports: {}",
                err.code, err.message
            ),
        )
    }

    fn on_done(&self, id: u64, expected: u64, result: Result<Value, CellError>) -> Flow {
        if id != expected {
            return violation(format!(
                "completion for id {id}, but transaction {expected} is in flight"
            ));
        }
        let result = match result {
            Ok(value) => {
                let lengths = self.state().lengths;
                if let Err(e) = rules::incoming_value("a result", &value, &lengths) {
                    return Flow::Abort(e);
                }
                Ok(value)
            }
            Err(err) => Err(self.guest_error(err)),
        };
        let mut s = self.state();
        s.completion = Some(result);
        s.phase = Phase::Idle;
        Flow::Done
    }

    fn on_event(&self, event: Event) -> Flow {
        let size = event_bytes(&event);
        let mut s = self.state();
        loop {
            let full = s.events.len() >= self.channel.max_queued_events
                || s.queued_bytes + size > self.channel.max_queued_bytes;
            // An event larger than the whole byte limit never fits, however long it waits.
            if !full {
                break;
            }
            if !s.backpressure || size > self.channel.max_queued_bytes {
                return Flow::Abort(CellError::new(
                    ErrorCode::LimitEventQueue,
                    format!(
                        "the cell flooded its channel: {} events holding {} bytes wait for recv, one more of {size} bytes is over the limits of {} events / {} bytes",
                        s.events.len(),
                        s.queued_bytes,
                        self.channel.max_queued_events,
                        self.channel.max_queued_bytes
                    ),
                ));
            }
            if let Some(dead) = &s.dead {
                return Flow::Abort(dead.clone());
            }
            let Some(left) = time_left(s.deadline) else {
                return Flow::Abort(canonical::timed_out(s.wall_time));
            };
            // Counted under the lock `next_event` reads it under, so no wake is lost.
            s.waiting_for_room += 1;
            s = wait_on(&self.room, s, left);
            s.waiting_for_room -= 1;
        }
        s.queued_bytes += size;
        s.events.push_back(event);
        let waiting = s.waiting > 0;
        let listener = s.listener.clone();
        drop(s);
        self.count(|st| st.events += 1);
        if waiting {
            self.arrived.notify_one();
        }
        if let Some(listener) = listener {
            listener();
        }
        Flow::Continue
    }

    fn on_request(&self, id: u64, capability: String, action: String, payload: Value) -> Flow {
        let (deadline, wall_time, lengths) = {
            let mut s = self.state();
            if id <= s.last_request {
                return violation(format!("request id {id} was already used"));
            }
            s.last_request = id;
            (s.deadline, s.wall_time, s.lengths)
        };
        if let Err(e) = rules::incoming_value("a request's payload", &payload, &lengths) {
            return Flow::Abort(e);
        }
        let past = || deadline.is_some_and(|d| Instant::now() >= d);
        if past() {
            return Flow::Abort(canonical::timed_out(wall_time));
        }
        self.count(|st| st.requests += 1);
        let ctx = RequestContext::new(&self.cell, &self.backend, deadline)
            .with_max_reply_bytes(rules::reply_budget(id, self.channel.max_frame_bytes));
        let _span =
            tracing::debug_span!("request", cell = %self.cell, %capability, %action).entered();
        // The pipe waits for this call, so nothing else can cut it at the deadline.
        let armed = deadline.map(|d| deadlines::arm(d, self.requests.clone()));
        let result = self
            .requests
            .handle_until(ctx, &capability, &action, payload);
        drop(armed);
        if let Err(e) = &result {
            tracing::debug!(cell = %self.cell, %capability, %action, code = %e.code, "request refused");
        }
        // The wall-time limit covers the request: a transaction past it ends here, whatever
        // the handler answered.
        if past() {
            return Flow::Abort(canonical::timed_out(wall_time));
        }
        Flow::Reply(rules::reply(
            id,
            result,
            self.channel.max_frame_bytes,
            &lengths,
        ))
    }

    fn on_guest_frame(&self, phase: Phase, frame: GuestFrame) -> Flow {
        match (phase, frame) {
            (Phase::Handshake, GuestFrame::Ready(ready)) => self.on_ready(ready),
            (Phase::Handshake, GuestFrame::Refused(err)) => self.on_refused(err),
            (Phase::Running(expected), GuestFrame::Done { id, result }) => {
                self.on_done(id, expected, result)
            }
            (Phase::Running(_), GuestFrame::Post(value)) => {
                let lengths = self.state().lengths;
                match rules::incoming_value("a post", &value, &lengths) {
                    Ok(()) => self.on_event(Event::Post(value)),
                    Err(e) => Flow::Abort(e),
                }
            }
            (
                Phase::Running(_),
                GuestFrame::Log {
                    level,
                    message,
                    fields,
                },
            ) => {
                let lengths = self.state().lengths;
                let fields = Value::Map(fields);
                if let Err(e) = rules::incoming_value("a log's fields", &fields, &lengths) {
                    return Flow::Abort(e);
                }
                let Value::Map(fields) = fields else {
                    unreachable!("built as a map above")
                };
                self.reemit_log(level, &message, &fields);
                self.on_event(Event::Log {
                    level,
                    message,
                    fields,
                })
            }
            (Phase::Running(_), GuestFrame::Metric { name, value, tags }) => {
                if name.is_empty() || name.len() > abi::MAX_METRIC_NAME_LEN {
                    violation(format!(
                        "metric name of {} bytes (1..={} allowed)",
                        name.len(),
                        abi::MAX_METRIC_NAME_LEN
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
            ) => self.on_request(id, capability, action, payload),
            (phase, other) => violation(format!(
                "unexpected {:?} frame while {}",
                other.kind(),
                match phase {
                    Phase::Handshake => "waiting for the handshake".to_string(),
                    Phase::Idle => "no transaction is in flight".to_string(),
                    Phase::Running(id) => format!("transaction {id} is in flight"),
                }
            )),
        }
    }
}

impl HostSide for CellHost {
    fn max_frame_memory(&self) -> Option<usize> {
        Some(self.channel.max_frame_memory)
    }

    fn on_frame(&self, frame: GuestFrame) -> Flow {
        // The cap holds for pipes that skip the byte stream too (in-process ones).
        let cap = rules::effective_cap(self.channel.max_frame_bytes);
        let flow = match wire::encoded_len(&frame) {
            Ok(len) if len as u64 > u64::from(cap) => Flow::Abort(rules::frame_too_large(
                rules::Subject("the cell's frame", false),
                len as u64,
                cap,
                Direction::CellToHost,
            )),
            // Byte-stream pipes stopped decoding at the ceiling; this holds for the others.
            _ if frame_bytes(&frame) > self.channel.max_frame_memory => {
                Flow::Abort(rules::frame_memory(self.channel.max_frame_memory))
            }
            _ => {
                let phase = self.state().phase;
                self.on_guest_frame(phase, frame)
            }
        };
        if let Flow::Abort(err) = &flow {
            if err.code == ErrorCode::ProtocolViolation {
                self.count(|st| st.violations += 1);
            }
            tracing::warn!(cell = %self.cell, code = %err.code, "aborting: {}", err.message);
            self.state().aborted = Some(err.clone());
        }
        flow
    }
}
