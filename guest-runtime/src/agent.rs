//! The agent loop a guest runs over its transport: handshake, then one transaction per host
//! frame until `Shutdown`.

use crate::api::Link;
use crate::cell::{Cell, Step, ready};
use crate::transport::{Interrupt, Transport};
use abi::{CellError, ErrorCode, GuestFrame, HostFrame};
use alloc::{boxed::Box, format, sync::Arc};

/// Serves the host over `transport` until it says `Shutdown` (`Ok`) or the channel or protocol
/// breaks (`Err`, after telling the host where it still can).
///
/// A guest program is its transport plus this call:
///
/// ```no_run
/// use abi::{GuestFrame, HostFrame};
/// use cell_runtime::{NeverInterrupt, Transport, TransportError};
/// use std::sync::{Arc, mpsc};
///
/// /// Frames over two channels; a real guest uses its boundary's pipe or shared memory.
/// struct Channels {
///     to_host: mpsc::Sender<GuestFrame>,
///     from_host: mpsc::Receiver<HostFrame>,
/// }
///
/// impl Transport for Channels {
///     fn send(&mut self, frame: GuestFrame) -> Result<(), TransportError> {
///         self.to_host.send(frame).map_err(|_| TransportError::Closed)
///     }
///     fn recv(&mut self) -> Result<HostFrame, TransportError> {
///         self.from_host.recv().map_err(|_| TransportError::Closed)
///     }
/// }
///
/// let (to_host, _host_reads) = mpsc::channel();
/// let (_host_writes, from_host) = mpsc::channel();
/// let transport = Channels { to_host, from_host };
/// // A boundary that stops its guest from outside (a killed process or vCPU) needs no
/// // interrupt of its own.
/// cell_runtime::agent::serve(Box::new(transport), Arc::new(NeverInterrupt))?;
/// # Ok::<(), abi::CellError>(())
/// ```
pub fn serve<I: Interrupt + ?Sized + 'static>(
    transport: Box<dyn Transport>,
    interrupt: Arc<I>,
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
    let mut cell = match Cell::with_link(
        &hello,
        link.clone(),
        interrupt,
        crate::limits::ENGINE_STACK_BYTES,
    ) {
        Ok(cell) => cell,
        Err(err) => {
            // A refused handshake (another ABI version) is said to the host, as every backend does.
            let _ = link.send(GuestFrame::Refused(err.clone()));
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

/// Lives one whole cell life against an in-memory host and throws it away: handshake,
/// an exec that posts, logs and defines a function, a call, shutdown, every frame
/// through the wire encoding. A process that forks cells ahead of use (the process
/// backend's fork server) runs this in each spare before it is claimed, so the real
/// first frames find their code and heap pages already touched — page faults are the
/// dearest part of a cold start on a virtualised host.
pub fn rehearse() {
    let _ = rehearsal();
}

/// [`rehearse`], returning how many of its transactions completed successfully.
fn rehearsal() -> Result<usize, CellError> {
    use abi::{EngineLimits, Hello, Map, Value, wire};
    use alloc::{string::String, vec, vec::Vec};

    /// Feeds encoded host frames; encodes what the cell sends and counts its successes.
    struct Script {
        inbox: Vec<Vec<u8>>,
        completed: Arc<core::sync::atomic::AtomicUsize>,
    }
    impl Transport for Script {
        fn send(&mut self, frame: GuestFrame) -> Result<(), crate::TransportError> {
            if let GuestFrame::Done { result: Ok(_), .. } = frame {
                self.completed
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
            crate::encode_frame(&frame, wire::DEFAULT_MAX_FRAME_LEN).map(drop)
        }
        fn recv(&mut self) -> Result<HostFrame, crate::TransportError> {
            let bytes = self.inbox.pop().ok_or(crate::TransportError::Closed)?;
            crate::decode_frame(&bytes[wire::HEADER_LEN..])
        }
    }

    let modules = crate::modules::AVAILABLE.iter().map(|m| String::from(*m));
    let frames = [
        HostFrame::Hello(Hello::new("rehearsal", EngineLimits::default(), modules.collect())),
        HostFrame::Exec {
            id: 1,
            source: r#"fn add(a, b) { a + b } let m = #{k: [1, "x", 2.5]}; post(40 + 2); log("info", "x", m); add(1, 2)"#.into(),
        },
        HostFrame::Call {
            id: 2,
            function: "add".into(),
            args: vec![Value::Int(40), Value::Int(2)],
            kwargs: Map::new(),
        },
        HostFrame::Shutdown,
    ];
    let mut inbox: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|f| wire::encode(f, wire::DEFAULT_MAX_FRAME_LEN).ok())
        .collect();
    inbox.reverse();
    let completed = Arc::new(core::sync::atomic::AtomicUsize::new(0));
    let script = Script {
        inbox,
        completed: completed.clone(),
    };
    serve(Box::new(script), Arc::new(crate::NeverInterrupt))?;
    Ok(completed.load(core::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rehearsal_lives_a_whole_cell_life() {
        // Handshake, exec and call all succeed, and the cell shuts down cleanly: a
        // rehearsal that broke would silently stop warming anything.
        assert_eq!(super::rehearsal(), Ok(2));
    }
}
