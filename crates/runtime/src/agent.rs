//! The agent loop a guest runs over its transport: handshake, then one transaction per host
//! frame until `Shutdown`.

use crate::api::Link;
use crate::cell::{Cell, Step, ready};
use crate::transport::{Interrupt, Transport};
use abi::{CellError, ErrorCode, GuestFrame, HostFrame};
use alloc::{boxed::Box, format, sync::Arc};

/// Serves the host over `transport` until it says `Shutdown` (`Ok`) or the channel or protocol
/// breaks (`Err`, after telling the host where it still can).
pub fn serve(
    transport: Box<dyn Transport>,
    interrupt: Arc<dyn Interrupt>,
) -> Result<(), CellError> {
    let link = Arc::new(Link::new(transport));
    let hello = match link.recv().map_err(|e| e.into_cell_error())? {
        HostFrame::Hello(hello) => hello,
        other => {
            let err = CellError::new(
                ErrorCode::ProtocolViolation,
                format!("the first frame must be Hello, got {:?}", other.kind()),
            );
            let _ = link.send(GuestFrame::Refused(err.clone()));
            return Err(err);
        }
    };
    let mut cell = match Cell::with_link(&hello, link, interrupt) {
        Ok(cell) => cell,
        Err(err) => {
            // `with_link` consumed the link only on success; rebuild nothing, just report.
            return Err(err);
        }
    };
    cell.link()
        .send(GuestFrame::Ready(ready()))
        .map_err(|e| e.into_cell_error())?;
    loop {
        let frame = cell.link().recv().map_err(|e| e.into_cell_error())?;
        match cell.handle(frame) {
            Step::Continue => {}
            Step::Shutdown => return Ok(()),
            Step::Violation(err) => return Err(err),
        }
    }
}
