//! Where a guest's `request(capability, action, payload)` goes, after the host side checked the
//! frame. The broker's per-cell handler (`cell-broker`'s `CellBroker`, built at spawn from the policy's
//! grants, wrapped by the supervisor) implements [`RequestHandler`]; a cell whose policy grants nothing, on a supervisor
//! with no broker attached, gets [`DenyAll`], which refuses every request with a typed error
//! naming the capability.

use abi::{CellError, ErrorCode, Value};

/// Who is asking, for grant checks and audit.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    pub cell: &'a str,
    pub backend: &'a str,
}

/// Executes (or refuses) a cell's request on the host. Called on the host side only; the guest's
/// word about what it may do is never consulted.
pub trait RequestHandler: Send + Sync {
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError>;

    /// The cell is gone (killed, closed, crashed): fail any request still in flight promptly, so
    /// a guest blocked in `request` cannot hold its killer up. Idempotent.
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
