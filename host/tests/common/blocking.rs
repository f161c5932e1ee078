//! A capability that blocks until it is cancelled or released, for the request-deadline tests.

use super::{Cell, guest};
use abi::{CellError, ErrorCode, GuestFrame, Value};
use cell_host::{Channel, RequestContext, RequestHandler};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a blocked handler waits before giving up on being cancelled or released: only
/// reached when the host fails to cancel, and then the test fails.
const FALLBACK: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Gate {
    cancelled: bool,
    released: bool,
    /// `handle` returned because it was cancelled (not because the cell was killed after).
    cut: bool,
}

/// A capability that blocks until it is cancelled or released.
#[derive(Default)]
pub struct Blocking {
    gate: Mutex<Gate>,
    changed: Condvar,
    pub entered: Mutex<Option<mpsc::Sender<()>>>,
}

impl Blocking {
    pub fn cancelled(&self) -> bool {
        self.gate.lock().unwrap().cancelled
    }
    pub fn cut(&self) -> bool {
        self.gate.lock().unwrap().cut
    }
    pub fn release(&self) {
        self.gate.lock().unwrap().released = true;
        self.changed.notify_all();
    }
}

impl RequestHandler for Blocking {
    fn handle(
        &self,
        _: RequestContext<'_>,
        _: &str,
        _: &str,
        _: Value,
    ) -> Result<Value, CellError> {
        if let Some(entered) = self.entered.lock().unwrap().take() {
            entered.send(()).unwrap();
        }
        let gate = self.gate.lock().unwrap();
        let (mut gate, _) = self
            .changed
            .wait_timeout_while(gate, FALLBACK, |g| !g.cancelled && !g.released)
            .unwrap();
        if gate.cancelled {
            gate.cut = true;
            Err(CellError::new(ErrorCode::Cancelled, "cancelled in flight"))
        } else {
            Ok(Value::Int(1))
        }
    }

    fn cancel(&self) {
        self.gate.lock().unwrap().cancelled = true;
        self.changed.notify_all();
    }
}

pub fn requesting(handler: Arc<Blocking>) -> Cell {
    Cell::ready(
        Channel::default(),
        handler,
        guest(|_, _| {
            vec![GuestFrame::Request {
                id: 1,
                capability: "net".into(),
                action: "get".into(),
                payload: Value::Unit,
            }]
        }),
    )
}
