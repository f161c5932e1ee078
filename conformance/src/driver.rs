//! A cell under test, driven through the host side of the protocol (`cell-host`) over any
//! [`Backend`]: the same path the supervisor takes, without the supervisor. Every frame goes
//! through [`CellHost`], so the suite checks the backend's pipe against the one set of rules.

use crate::Setup;
use abi::backend::{Backend, CellPipe, Interrupter, Killer};
use abi::{CellError, ErrorCode, HostFrame, Map, Value};
use host::{CellHost, DenyAll, Event, RequestContext, RequestHandler};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why `recv` returned no event.
#[derive(Clone, Debug, PartialEq)]
pub enum RecvError {
    /// Nothing arrived within the timeout.
    Timeout,
    /// The cell is gone and every event it sent was received.
    Closed(CellError),
}

/// The broker's per-cell handler as the host side's request handler.
struct Broker(broker::CellBroker);

impl RequestHandler for Broker {
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError> {
        // Reads are bounded by the largest reply the cell takes, as the supervisor's are.
        self.0.request_within(
            ctx.backend,
            capability,
            action,
            payload,
            None,
            Some(ctx.max_reply_bytes as u64),
        )
    }

    fn cancel(&self) {
        self.0.cancel();
    }
}

struct Inner {
    name: String,
    host: Arc<CellHost>,
    pipe: Mutex<Option<Box<dyn CellPipe>>>,
    killer: Arc<dyn Killer>,
    interrupter: Option<Arc<dyn Interrupter>>,
    next_id: AtomicU64,
    wall_time: Option<Duration>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pipe = self.pipe.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut pipe) = pipe.take() {
            self.killer.kill();
            let _ = pipe.shutdown();
        }
    }
}

/// One cell of the backend under test. Clones are the same cell: `exec`/`call` run one at a
/// time, `recv`, `kill` and `interrupt` work from other threads meanwhile.
#[derive(Clone)]
pub struct TestCell {
    inner: Arc<Inner>,
}

fn spawn_failed(message: String) -> CellError {
    CellError::new(ErrorCode::SpawnFailed, message)
}

impl TestCell {
    /// Spawns a cell named `name` on `backend` under `setup` and completes the handshake. A
    /// handshake the host refuses to send, a backend that cannot spawn, or a guest that refuses
    /// the handshake, is an error with the code that says which.
    pub fn spawn(backend: &dyn Backend, name: &str, setup: &Setup) -> Result<TestCell, CellError> {
        let spec = setup.spawn_spec(name);
        host::check_hello(&spec.hello)?;
        // As a supervisor with no broker attached (the service's): a policy without rules gets
        // the deny-all handler, one with rules the broker.
        let requests: Arc<dyn RequestHandler> = if setup.rules.is_empty() {
            Arc::new(DenyAll)
        } else {
            let cell = broker::Broker::builder()
                .build()
                .and_then(|b| b.for_cell(name, &setup.rules))
                .map_err(|e| CellError::new(ErrorCode::InvalidArgument, e.to_string()))?;
            Arc::new(Broker(cell))
        };
        let host = Arc::new(
            CellHost::new(name, backend.name(), setup.channel.clone(), requests)
                .with_resources(spec.resources.clone()),
        );
        let pipe = backend
            .spawn(&spec, host.clone())
            .map_err(|e| spawn_failed(e.to_string()))?;
        let cell = TestCell {
            inner: Arc::new(Inner {
                name: name.into(),
                host,
                killer: pipe.killer(),
                interrupter: pipe.interrupter(),
                pipe: Mutex::new(Some(pipe)),
                next_id: AtomicU64::new(1),
                wall_time: setup.wall_time,
            }),
        };
        cell.transact(|_| HostFrame::Hello(spec.hello))?;
        Ok(cell)
    }

    /// The cell's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host side of this cell (stats, the guest's handshake answer).
    pub fn host(&self) -> &CellHost {
        &self.inner.host
    }

    /// Runs source text in the cell and returns the value of its last expression.
    pub fn exec(&self, source: &str) -> Result<Value, CellError> {
        self.transact(|id| HostFrame::Exec {
            id,
            source: source.into(),
        })
    }

    /// Invokes `function` with positional and keyword arguments.
    pub fn call(&self, function: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, CellError> {
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
            return Err(CellError::new(
                ErrorCode::CellClosed,
                format!("cell `{}` is closed", inner.name),
            ));
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        inner.host.transact(&mut **pipe, frame(id), inner.wall_time)
    }

    /// The next post, log or metric, waiting up to `timeout` (`None`: while the cell lives).
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

    /// Kills the cell from any thread; a running exec/call returns `cancelled`.
    pub fn kill(&self) {
        self.inner.host.mark_dead(CellError::new(
            ErrorCode::Cancelled,
            format!("cell `{}` was killed", self.inner.name),
        ));
        self.inner.killer.kill();
    }

    /// Whether the backend's pipe can interrupt a running exec/call (else only kill the cell).
    pub fn can_interrupt(&self) -> bool {
        self.inner.interrupter.is_some()
    }

    /// Ends the running exec/call and leaves the cell usable; `false` if the backend cannot.
    pub fn interrupt(&self) -> bool {
        match &self.inner.interrupter {
            Some(i) => {
                // First, so the guest's `cancelled` completion is taken as the host's (as the
                // supervisor's `Cell::interrupt` does); without it the host reads a guest
                // claiming a code only the host may give.
                self.inner.host.mark_interrupted();
                i.interrupt();
                true
            }
            None => false,
        }
    }

    /// Asks the cell to exit and releases its boundary; queued events stay receivable.
    pub fn close(&self) {
        let mut pipe = self.inner.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut pipe) = pipe.take() {
            let _ = pipe.shutdown();
        }
        self.inner.host.mark_dead(CellError::new(
            ErrorCode::CellClosed,
            format!("cell `{}` was closed", self.inner.name),
        ));
    }

    /// Why the cell is gone, once it is.
    pub fn dead(&self) -> Option<CellError> {
        self.inner.host.dead()
    }
}
