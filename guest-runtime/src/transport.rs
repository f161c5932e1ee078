//! What a backend supplies to the guest runtime.

use abi::{CellError, ErrorCode, GuestFrame, HostFrame};
use alloc::string::String;

/// Why the transport could not move a frame.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TransportError {
    /// The host refused the frame and stops the cell (a limit, a protocol rule).
    Aborted(CellError),
    /// The host end is gone.
    Closed,
    /// The frame could not be encoded or moved (too large, i/o failure).
    Failed(CellError),
}

impl TransportError {
    /// The error the script sees: the host's own for `Aborted`/`Failed`, `CellClosed` for `Closed`.
    pub fn into_cell_error(self) -> CellError {
        match self {
            TransportError::Aborted(e) | TransportError::Failed(e) => e,
            TransportError::Closed => {
                CellError::new(ErrorCode::CellClosed, "the host closed the channel")
            }
        }
    }

    /// A [`TransportError::Failed`] with `code` and `message`.
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        TransportError::Failed(CellError::new(code, message))
    }
}

/// The guest end of a cell's channel: frames to the host, frames from the host.
///
/// `recv` is called by the agent loop between transactions and by `request` to wait for the
/// broker's [`HostFrame::Reply`]; everything else only sends.
pub trait Transport: Send {
    /// Sends one frame to the host.
    fn send(&mut self, frame: GuestFrame) -> Result<(), TransportError>;
    /// Blocks until the host's next frame arrives.
    fn recv(&mut self) -> Result<HostFrame, TransportError>;
}

/// Cancellation and deadlines, polled by the engine on every operation (keep it cheap).
pub trait Interrupt: Send + Sync {
    /// `Some(code)` stops the running script with that code (`Cancelled`, `TimedOut`, ...).
    fn check(&self, operations: u64) -> Option<ErrorCode>;

    /// Like [`Interrupt::check`], asked from inside one native function's long work (a text
    /// built, a function looked up among its permutations), where no operation comes for a
    /// while: an interrupt that reads its clocks only every so many operations reads them now.
    fn check_now(&self, operations: u64) -> Option<ErrorCode> {
        self.check(operations)
    }
}

/// For boundaries that stop the guest from outside (a killed process or vCPU).
pub struct NeverInterrupt;

impl Interrupt for NeverInterrupt {
    fn check(&self, _: u64) -> Option<ErrorCode> {
        None
    }
}

/// Encodes a guest frame for a byte-stream transport. A frame over the cap is an error the
/// script sees (`limit_frame_size`), not a reason to kill the cell.
pub fn encode_frame(
    frame: &GuestFrame,
    max_frame_len: u32,
) -> Result<alloc::vec::Vec<u8>, TransportError> {
    abi::wire::encode(frame, max_frame_len).map_err(cannot_send)
}

/// Why a frame could not be sent, as the script sees it: one wording for every transport (a
/// frame over the cap is `limit_frame_size`, the script's own error; anything else a bug).
pub fn cannot_send(e: abi::wire::WireError) -> TransportError {
    match e {
        abi::wire::WireError::TooLarge { .. } => TransportError::failed(
            ErrorCode::LimitFrameSize,
            alloc::format!("cannot send: {e}"),
        ),
        other => TransportError::failed(
            ErrorCode::Internal,
            alloc::format!("cannot encode: {other}"),
        ),
    }
}

/// Decodes a host frame body for a byte-stream transport.
pub fn decode_frame(body: &[u8]) -> Result<HostFrame, TransportError> {
    abi::wire::decode_body(body).map_err(|e| {
        TransportError::Aborted(CellError::new(
            ErrorCode::ProtocolViolation,
            alloc::format!("bad host frame: {e}"),
        ))
    })
}
