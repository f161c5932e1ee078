//! What the scenarios drive, as traits: [`Harness`](crate::Harness) and
//! [`TestCell`](crate::TestCell) drive a backend's pipe through the host side directly; anything
//! else that fronts cells (a network service in front of a supervisor) implements [`Target`] and
//! [`ScenarioCell`] to run the same scenarios against the same snapshot files.

use crate::driver::RecvError;
use crate::{Setup, TestCell};
use abi::{CellError, Map, Value};
use host::Event;
use std::sync::Arc;
use std::time::Duration;

/// One cell as a scenario drives it. Clones of the `Arc` are the same cell: `exec`/`call` run
/// one at a time, `recv`, `kill` and `close` may be called from other threads meanwhile.
pub trait ScenarioCell: Send + Sync {
    /// Runs source text in the cell and returns the value of its last expression.
    fn exec(&self, source: &str) -> Result<Value, CellError>;
    /// Invokes `function` with positional and keyword arguments.
    fn call(&self, function: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, CellError>;
    /// The next post, log or metric, waiting up to `timeout` (`None`: while the cell lives).
    fn recv(&self, timeout: Option<Duration>) -> Result<Event, RecvError>;
    /// Kills the cell from any thread; a running exec/call returns `cancelled`.
    fn kill(&self);
    /// Asks the cell to exit and releases its boundary; queued events stay receivable.
    fn close(&self);
    /// Ends the running exec/call with `cancelled` and leaves the cell usable; `false` where
    /// this front end cannot (the scenarios that need it run on the backend's pipe only, see
    /// [`PIPE_SCENARIOS`](crate::PIPE_SCENARIOS)).
    fn interrupt(&self) -> bool {
        false
    }
}

/// A cell as the scenarios hold it.
pub type Cell = Arc<dyn ScenarioCell>;

/// Where scenarios get their cells: a backend (through [`Harness`](crate::Harness)) or a service
/// in front of one.
pub trait Target: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &str;
    /// A fresh cell named `name` under `setup`, handshake done; a cell the setup does not allow
    /// is an error with the code that says why.
    fn spawn(&self, name: &str, setup: &Setup) -> Result<Cell, CellError>;
}

impl ScenarioCell for TestCell {
    fn exec(&self, source: &str) -> Result<Value, CellError> {
        TestCell::exec(self, source)
    }

    fn call(&self, function: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, CellError> {
        TestCell::call(self, function, args, kwargs)
    }

    fn recv(&self, timeout: Option<Duration>) -> Result<Event, RecvError> {
        TestCell::recv(self, timeout)
    }

    fn kill(&self) {
        TestCell::kill(self)
    }

    fn close(&self) {
        TestCell::close(self)
    }

    fn interrupt(&self) -> bool {
        TestCell::interrupt(self)
    }
}

impl<C: ScenarioCell + ?Sized> ScenarioCell for Arc<C> {
    fn exec(&self, source: &str) -> Result<Value, CellError> {
        (**self).exec(source)
    }

    fn call(&self, function: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, CellError> {
        (**self).call(function, args, kwargs)
    }

    fn recv(&self, timeout: Option<Duration>) -> Result<Event, RecvError> {
        (**self).recv(timeout)
    }

    fn kill(&self) {
        (**self).kill()
    }

    fn close(&self) {
        (**self).close()
    }

    fn interrupt(&self) -> bool {
        (**self).interrupt()
    }
}
