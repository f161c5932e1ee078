//! `Channel::max_frame_memory`: a guest frame whose values take more memory than that stops the
//! cell with `limit_value`, in the same words whether a byte-stream pipe stopped decoding it or
//! an in-process pipe delivered it whole.

mod common;

use abi::backend::{self, CellPipe, FrameIo, Killer, PipeError};
use abi::{ErrorCode, GuestFrame, HostFrame, Map, Value, wire};
use cell_host::{CellHost, Channel, DenyAll};
use common::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const MAX: usize = 64 << 10;
const MESSAGE: &str = "the cell's frame takes more than 65536 bytes of memory, over the channel's max_frame_memory (cell → host)";

fn channel() -> Channel {
    Channel {
        max_frame_memory: MAX,
        ..Channel::default()
    }
}

/// `n` one-entry maps: ~4 bytes each on the wire, a B-tree leaf of ~640 bytes each in memory.
fn maps(n: usize) -> Value {
    let one: Map = [(String::new(), Value::Unit)].into_iter().collect();
    Value::List(vec![Value::Map(one); n])
}

fn posting(value: Value) -> Guest {
    guest(move |_, _| vec![GuestFrame::Post(value.clone())])
}

#[test]
fn in_process_frames_over_the_memory_ceiling_stop_the_cell() {
    // 200 maps: ~800 bytes on the wire, ~130 KiB in memory.
    let mut cell = Cell::ready(channel(), Arc::new(DenyAll), posting(maps(200)));
    let err = cell.run(exec(1), None).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::LimitValue, MESSAGE)
    );
    assert!(cell.killed());
    // Under the ceiling the same shape passes.
    let mut cell = Cell::ready(channel(), Arc::new(DenyAll), posting(maps(50)));
    assert_eq!(cell.run(exec(1), None), Ok(Value::Unit));
}

#[test]
fn results_payloads_fields_and_tags_count() {
    let big = maps(200);
    let frames = [
        GuestFrame::Done {
            id: 1,
            result: Ok(big.clone()),
        },
        GuestFrame::Request {
            id: 1,
            capability: "c".into(),
            action: "a".into(),
            payload: big.clone(),
        },
        GuestFrame::Log {
            level: abi::Level::Info,
            message: String::new(),
            fields: [("k".to_string(), big)].into_iter().collect(),
        },
        GuestFrame::Metric {
            name: "m".into(),
            value: 1.0,
            tags: (0..2000)
                .map(|i| (format!("{i:04}"), String::new()))
                .collect(),
        },
    ];
    for frame in frames {
        let kind = frame.kind();
        let mut cell = Cell::ready(
            channel(),
            Arc::new(DenyAll),
            guest(move |_, _| vec![frame.clone()]),
        );
        let err = cell.run(exec(1), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitValue, "{kind:?}");
    }
}

/// A byte-stream pipe: its guest's frames are encoded, and `backend::drive` decodes them.
struct Bytes {
    host: Arc<CellHost>,
    replies: VecDeque<Vec<u8>>,
    killed: Arc<Flag>,
}

impl FrameIo for Bytes {
    fn send_frame(&mut self, _: &[u8]) -> Result<(), PipeError> {
        Ok(())
    }
    fn recv_frame(&mut self, _: Option<Instant>, _: u32) -> Result<Vec<u8>, PipeError> {
        self.replies.pop_front().ok_or(PipeError::Closed)
    }
}

impl CellPipe for Bytes {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        let host = self.host.clone();
        backend::drive(self, &*host, &frame, deadline, wire::DEFAULT_MAX_FRAME_LEN)
    }
    fn killer(&self) -> Arc<dyn Killer> {
        self.killed.clone()
    }
    fn shutdown(&mut self) -> Result<(), PipeError> {
        Ok(())
    }
}

fn body(frame: &GuestFrame) -> Vec<u8> {
    wire::encode(frame, wire::DEFAULT_MAX_FRAME_LEN).unwrap()[wire::HEADER_LEN..].to_vec()
}

#[test]
fn byte_pipes_stop_decoding_at_the_ceiling_with_the_same_error() {
    let host = Arc::new(CellHost::new("t", "bytes", channel(), Arc::new(DenyAll)));
    let mut pipe = Bytes {
        host: host.clone(),
        replies: [
            body(&ready()),
            body(&GuestFrame::Post(maps(200))),
            body(&GuestFrame::Done {
                id: 1,
                result: Ok(Value::Unit),
            }),
        ]
        .into(),
        killed: Arc::new(Flag(AtomicBool::new(false))),
    };
    host.transact(&mut pipe, hello(), None).unwrap();
    let err = host
        .transact(&mut pipe, exec(1), Some(Duration::from_secs(60)))
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::LimitValue, MESSAGE)
    );
    assert!(pipe.killed.0.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(host.stats().events, 0, "nothing of the frame was queued");
}

/// The ceiling holds while decoding: `backend::drive` asks the host for it, and a frame over it
/// is refused by the decoder itself (its values are never built whole), before the host is
/// handed anything.
#[test]
fn a_byte_stream_frame_over_the_ceiling_is_refused_by_the_decoder() {
    let host = Arc::new(CellHost::new("t", "bytes", channel(), Arc::new(DenyAll)));
    let mut pipe = Bytes {
        host: host.clone(),
        replies: [body(&GuestFrame::Post(maps(200)))].into(),
        killed: Arc::new(Flag(AtomicBool::new(false))),
    };
    let err = backend::drive(
        &mut pipe,
        &*host,
        &exec(1),
        None,
        wire::DEFAULT_MAX_FRAME_LEN,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PipeError::Wire(wire::WireError::OverMemory { max: MAX })
        ),
        "{err:?}"
    );
}
