//! The broker's per-cell handler plugged into the host side's [`RequestHandler`].

use abi::{CellError, Value};
use host::{RequestContext, RequestHandler};

/// A [`broker::CellBroker`] as the host side's request handler: grants from the cell's policy,
/// decided on the host.
pub(crate) struct BrokerHandler(pub(crate) broker::CellBroker);

impl RequestHandler for BrokerHandler {
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError> {
        self.0.request_within(
            ctx.backend,
            capability,
            action,
            payload,
            ctx.deadline,
            Some(ctx.max_reply_bytes as u64),
        )
    }

    /// The broker bounds the request by the transaction's deadline itself (refused when it has
    /// passed, the grant's timeout clipped to it) and audits that refusal like any other.
    fn handle_until(
        &self,
        ctx: RequestContext<'_>,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError> {
        self.handle(ctx, capability, action, payload)
    }

    fn cancel(&self) {
        self.0.cancel();
    }
}
