//! Where a guest's `request(capability, action, payload)` goes, after the host side checked the
//! frame. The broker's per-cell handler (`cell-broker`'s `CellBroker`, built at spawn from the
//! policy's grants, wrapped by the supervisor) implements [`RequestHandler`]; a cell whose policy
//! grants nothing, on a supervisor with no broker attached, gets [`DenyAll`], which refuses every
//! request with a typed error naming the capability.

use abi::{CellError, ErrorCode, Value};
use std::time::Instant;

/// Who is asking, for grant checks and audit, and until when.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestContext<'a> {
    /// The cell's name.
    pub cell: &'a str,
    /// The backend the cell runs on.
    pub backend: &'a str,
    /// When the transaction that made the request must end (its wall-time limit). A handler
    /// should give up by then: at the deadline the host calls [`RequestHandler::cancel`] on a
    /// request still in flight, and past it the host ends the transaction `timed_out` whatever
    /// the answer, and the cell is killed.
    pub deadline: Option<Instant>,
    /// The largest byte string the reply may carry: the cell's frame cap less the reply's
    /// framing. A handler reading data (a file, a response body)
    /// should clip or refuse its read to it before allocating; a reply over it becomes a
    /// limit error anyway when the host checks the frame.
    pub max_reply_bytes: usize,
}

impl<'a> RequestContext<'a> {
    /// A context for `cell` on `backend`, to end by `deadline`, with replies up to the largest
    /// frame ([`abi::wire::ABSOLUTE_MAX_FRAME_LEN`]); see [`RequestContext::max_reply_bytes`].
    pub fn new(cell: &'a str, backend: &'a str, deadline: Option<Instant>) -> Self {
        RequestContext {
            cell,
            backend,
            deadline,
            max_reply_bytes: abi::wire::ABSOLUTE_MAX_FRAME_LEN as usize,
        }
    }

    /// The context with replies up to `bytes`.
    pub fn with_max_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_reply_bytes = bytes;
        self
    }
}

/// Executes (or refuses) a cell's request on the host. Called on the host side only; the guest's
/// word about what it may do is never consulted.
pub trait RequestHandler: Send + Sync {
    /// Runs (or refuses) the request `capability.action(payload)`; the result goes back to the
    /// guest as its `Reply`.
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError>;

    /// What the host side calls: [`RequestHandler::handle`], bounded by `ctx.deadline`. The
    /// default refuses a request whose deadline has passed and otherwise calls `handle`; the
    /// host calls [`RequestHandler::cancel`] from another thread when the deadline passes with
    /// the request still in flight, so `handle` must return promptly once cancelled.
    fn handle_until(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError> {
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(CellError::new(
                ErrorCode::CapabilityFailed,
                "the request reached the broker after its transaction's deadline",
            ));
        }
        self.handle(ctx, capability, action, payload)
    }

    /// The cell is gone (killed, closed, crashed) or its transaction's deadline passed with a
    /// request in flight (it then ends `timed_out` and is killed): fail any request still in
    /// flight promptly, so a guest blocked in `request` cannot hold its killer or its deadline
    /// up. Called from any thread; idempotent.
    fn cancel(&self) {}
}

/// Grants nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

impl RequestHandler for DenyAll {
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        _: Value,
    ) -> Result<Value, CellError> {
        Err(CellError::new(
            ErrorCode::Denied,
            format!(
                "capability `{capability}` (action `{action}`) is not granted to cell `{}`",
                ctx.cell
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_refuses_naming_the_capability() {
        let ctx = RequestContext::new("c1", "fake", None);
        let err = DenyAll.handle(ctx, "fs", "read", Value::Unit).unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied);
        assert_eq!(
            err.message,
            "capability `fs` (action `read`) is not granted to cell `c1`"
        );
    }
}
