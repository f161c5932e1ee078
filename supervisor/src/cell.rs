//! A handle to one running cell: exec, call, recv, kill, close.

use crate::names::Names;
use abi::backend::{CellPipe, Interrupter, Killer, Layer, UsageProbe};
use abi::{CellError, ErrorCode, HostFrame, Map, Value};
use host::{CellHost, Event, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::{Duration, Instant};

/// Why `recv` returned no event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Nothing arrived before the timeout; the cell may still send.
    #[error("no event within the timeout")]
    Timeout,
    /// The cell is gone and every event it sent has been received.
    #[error("the cell is gone: {0}")]
    Closed(CellError),
}

/// Why [`Cell::interrupt`] could not interrupt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InterruptError {
    /// The backend can stop a running script only by killing the cell ([`Cell::kill`]).
    #[error(
        "the {backend} backend cannot interrupt a running script and keep the cell; use kill()"
    )]
    Unsupported {
        /// The backend's name.
        backend: String,
    },
    /// The cell is gone.
    #[error("the cell is gone: {0}")]
    Dead(CellError),
}

/// Whether a cell can still run code.
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    /// The cell can run code.
    Alive,
    /// The cell is gone, and why.
    Dead(CellError),
}

/// A snapshot of a cell for `list`.
#[derive(Debug, Clone)]
pub struct CellInfo {
    /// The cell's name, unique in its supervisor.
    pub name: String,
    /// The backend it runs on.
    pub backend: String,
    /// Whether it is alive.
    pub state: CellState,
    /// The confinement layers and whether each is active.
    pub layers: Vec<Layer>,
    /// The host's counters for it.
    pub stats: Stats,
    /// What the cell uses now, where its backend counts it.
    pub usage: Usage,
}

/// What a cell uses now, as its boundary counts it (`None`: not counted by this backend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of memory it holds (subinterp: its engine's heap blocks).
    pub memory_bytes: Option<u64>,
    /// CPU time used over its life, up to the end of its last exec/call.
    pub cpu_time_ms: Option<u64>,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) backend: String,
    pub(crate) host: Arc<CellHost>,
    pipe: Mutex<Option<Box<dyn CellPipe>>>,
    killer: Arc<dyn Killer>,
    interrupter: Option<Arc<dyn Interrupter>>,
    usage: Option<Arc<dyn UsageProbe>>,
    layers: Vec<Layer>,
    /// The supervisor's name table, left when the last handle drops.
    names: Weak<Names>,
    next_id: AtomicU64,
    wall_time: Option<Duration>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(mut pipe) = self
            .pipe
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.killer.kill();
            let _ = pipe.shutdown();
        }
        if let Some(names) = self.names.upgrade() {
            names.forget(&self.name, self);
        }
    }
}

/// A running cell. Cheap to clone; every clone is the same cell. `exec`/`call` on one cell run
/// one at a time; `recv` and `kill` work from any thread meanwhile.
#[derive(Clone)]
pub struct Cell {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("name", &self.inner.name)
            .field("backend", &self.inner.backend)
            .finish()
    }
}

impl Cell {
    pub(crate) fn new(
        name: &str,
        backend: &str,
        host: Arc<CellHost>,
        pipe: Box<dyn CellPipe>,
        wall_time: Option<Duration>,
        names: Weak<Names>,
    ) -> Cell {
        Cell {
            inner: Arc::new(Inner {
                name: name.into(),
                backend: backend.into(),
                host,
                killer: pipe.killer(),
                interrupter: pipe.interrupter(),
                usage: pipe.usage(),
                layers: pipe.layers(),
                names,
                pipe: Mutex::new(Some(pipe)),
                next_id: AtomicU64::new(1),
                wall_time,
            }),
        }
    }

    /// The cell's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The backend the cell runs on.
    pub fn backend(&self) -> &str {
        &self.inner.backend
    }

    /// Runs the handshake; on failure the cell is dead and the error says why.
    pub(crate) fn handshake(&self, hello: abi::Hello) -> Result<(), CellError> {
        self.transact(|_| HostFrame::Hello(hello)).map(drop)
    }

    /// Runs source text in the cell and returns the value of its last expression. Posts, logs
    /// and metrics it sends wait for [`Cell::recv`].
    pub fn exec(&self, source: &str) -> Result<Value, CellError> {
        let _span =
            tracing::info_span!("exec", cell = %self.inner.name, backend = %self.inner.backend)
                .entered();
        self.transact(|id| HostFrame::Exec {
            id,
            source: source.into(),
        })
    }

    /// Invokes `function` (`name`, `main.name` or `module.name`) with positional arguments and
    /// keyword arguments (passed as one trailing map when non-empty).
    pub fn call(&self, function: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, CellError> {
        let _span = tracing::info_span!("call", cell = %self.inner.name, backend = %self.inner.backend, function).entered();
        self.transact(|id| HostFrame::Call {
            id,
            function: function.into(),
            args,
            kwargs,
        })
    }

    fn transact(&self, frame: impl FnOnce(u64) -> HostFrame) -> Result<Value, CellError> {
        let inner = &*self.inner;
        let mut pipe = inner.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pipe) = pipe.as_mut() else {
            // Released after it died (a killed cell's boundary given back early): it answers
            // as it did before the release, naming why it died.
            if inner
                .host
                .dead()
                .is_some_and(|d| d.code != ErrorCode::CellClosed)
                && let Some(gone) = inner.host.gone()
            {
                return Err(gone);
            }
            return Err(CellError::new(
                ErrorCode::CellClosed,
                format!("cell `{}` is closed", inner.name),
            ));
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        // The host side checks the frame, runs it, maps the outcome and kills on a fatal error.
        inner.host.transact(&mut **pipe, frame(id), inner.wall_time)
    }

    fn die(&self, reason: CellError) {
        // Marked first: a completion the kill causes is then read as this kill.
        self.inner.host.mark_dead(reason);
        self.inner.killer.kill();
    }

    /// Receives the next post, log or metric, waiting up to `timeout` (`None`: as long as the
    /// cell lives). Events sent before the cell died are still delivered, then `Closed`.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Event, RecvError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.inner
            .host
            .next_event(deadline)
            .map_err(|dead| match dead {
                Some(reason) => RecvError::Closed(reason),
                None => RecvError::Timeout,
            })
    }

    /// Registers `listener` (replacing any other; `None` removes it): told right after each
    /// post, log or metric is queued for [`Cell::recv`] — while the exec/call that sent it is
    /// still running — and once when the cell dies (at once if it is dead already). It runs on
    /// the thread that queued the event, outside the cell's locks: it must return quickly and
    /// must not run exec/call on this cell. Typically it wakes whoever drains the cell with
    /// `recv(Some(Duration::ZERO))`. Do not capture the cell itself (that keeps it from
    /// dropping).
    pub fn set_listener(&self, listener: Option<host::Listener>) {
        self.inner.host.set_listener(listener);
    }

    /// With `on`, a cell whose event queue is full waits for [`Cell::recv`] to make room (its
    /// exec/call paused, its wall time running) instead of being stopped with
    /// `limit_event_queue`. For a caller that drains events while exec/call runs, on another
    /// thread: the events and the result are then the same however fast the drain is, on every
    /// backend. Off by default (with nobody draining, the cell would wait out its wall time).
    /// A kill or the wall time ends the wait.
    pub fn set_backpressure(&self, on: bool) {
        self.inner.host.set_backpressure(on);
    }

    /// Kills the cell now, from any thread; a running exec/call returns `Cancelled`.
    pub fn kill(&self) {
        let _span = tracing::info_span!("kill", cell = %self.inner.name).entered();
        self.die(CellError::new(
            ErrorCode::Cancelled,
            format!("cell `{}` was killed", self.inner.name),
        ));
    }

    /// Ends the exec/call running now with `Cancelled` and keeps the cell: what earlier
    /// execs defined stays. A no-op when nothing runs. Backends that can stop a script only by
    /// killing the cell say so ([`InterruptError::Unsupported`]).
    pub fn interrupt(&self) -> Result<(), InterruptError> {
        let _span = tracing::info_span!("interrupt", cell = %self.inner.name).entered();
        if let Some(reason) = self.inner.host.dead() {
            return Err(InterruptError::Dead(reason));
        }
        match &self.inner.interrupter {
            Some(interrupter) => {
                self.inner.host.mark_interrupted();
                interrupter.interrupt();
                Ok(())
            }
            None => Err(InterruptError::Unsupported {
                backend: self.inner.backend.clone(),
            }),
        }
    }

    /// Asks the cell to exit and releases its boundary. An exec/call running now is stopped
    /// at once (the cell is killed) and returns `CellClosed`. Queued events stay receivable.
    pub fn close(&self) {
        let _span = tracing::info_span!("close", cell = %self.inner.name).entered();
        let reason = CellError::new(
            ErrorCode::CellClosed,
            format!("cell `{}` was closed", self.inner.name),
        );
        let mut pipe = match self.inner.pipe.try_lock() {
            Ok(pipe) => pipe,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // A transaction holds the pipe: end it now rather than wait for its wall time.
                // Marked first, so that it returns this close as its reason.
                self.inner.host.mark_dead(reason.clone());
                self.inner.killer.kill();
                self.inner.pipe.lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        if let Some(mut pipe) = pipe.take()
            && let Err(e) = pipe.shutdown()
        {
            tracing::debug!(cell = %self.inner.name, "shutdown: {e}");
        }
        self.inner.host.mark_dead(reason);
    }

    /// Whether the cell is alive, or why it died. A cell whose boundary ended on its own since
    /// its last transaction (its process killed from outside) is found dead here, as
    /// `cell_crashed`, without waiting for a transaction to fail.
    pub fn state(&self) -> CellState {
        if let Some(reason) = self.inner.host.dead() {
            return CellState::Dead(reason);
        }
        if self.inner.usage.as_deref().is_some_and(UsageProbe::ended) {
            self.inner.host.mark_dead(CellError::new(
                ErrorCode::CellCrashed,
                "the cell's boundary ended between transactions (its process exited or was killed)",
            ));
            if let Some(reason) = self.inner.host.dead() {
                return CellState::Dead(reason);
            }
        }
        CellState::Alive
    }

    /// What the cell uses now, read without waiting for a running exec.
    pub fn usage(&self) -> Usage {
        let probe = self.inner.usage.as_deref();
        Usage {
            memory_bytes: probe.and_then(UsageProbe::memory_bytes),
            cpu_time_ms: probe
                .and_then(UsageProbe::cpu_time)
                .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }

    /// A snapshot of the cell for `list`.
    pub fn info(&self) -> CellInfo {
        CellInfo {
            name: self.inner.name.clone(),
            backend: self.inner.backend.clone(),
            state: self.state(),
            layers: self.inner.layers.clone(),
            stats: self.inner.host.stats(),
            usage: self.usage(),
        }
    }
}
