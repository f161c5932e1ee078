//! How guest frames are decoded: `backend::drive` within the host side's memory ceiling (a frame
//! over it never reaches the host side), and the frames' own maps as strictly as value maps.

use cell_abi::backend::{self, Flow, FrameIo, HostSide, PipeError};
use cell_abi::{GuestFrame, HostFrame, Map, Value, wire};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

struct Io(VecDeque<Vec<u8>>);

impl FrameIo for Io {
    fn send_frame(&mut self, _: &[u8]) -> Result<(), PipeError> {
        Ok(())
    }
    fn recv_frame(&mut self, _: Option<Instant>, _: u32) -> Result<Vec<u8>, PipeError> {
        self.0.pop_front().ok_or(PipeError::Closed)
    }
}

struct Host {
    ceiling: Option<usize>,
    seen: Mutex<Vec<GuestFrame>>,
}

impl HostSide for Host {
    fn on_frame(&self, frame: GuestFrame) -> Flow {
        self.seen.lock().unwrap().push(frame);
        Flow::Done
    }
    fn max_frame_memory(&self) -> Option<usize> {
        self.ceiling
    }
}

fn run(ceiling: Option<usize>) -> (Result<(), PipeError>, usize) {
    let one: Map = [(String::new(), Value::Unit)].into_iter().collect();
    let post = GuestFrame::Post(Value::List(vec![Value::Map(one); 200]));
    let body =
        wire::encode(&post, wire::DEFAULT_MAX_FRAME_LEN).unwrap()[wire::HEADER_LEN..].to_vec();
    let host = Host {
        ceiling,
        seen: Mutex::default(),
    };
    let mut io = Io([body].into());
    let r = backend::drive(
        &mut io,
        &host,
        &HostFrame::Shutdown,
        None,
        wire::DEFAULT_MAX_FRAME_LEN,
    );
    let seen = host.seen.lock().unwrap().len();
    (r, seen)
}

#[test]
fn frames_over_the_ceiling_never_reach_the_host_side() {
    let (r, seen) = run(Some(64 << 10));
    assert!(
        matches!(
            r,
            Err(PipeError::Wire(wire::WireError::OverMemory { max: 65536 }))
        ),
        "{r:?}"
    );
    assert_eq!(seen, 0);
    assert_eq!(
        PipeError::Wire(wire::WireError::OverMemory { max: 1 })
            .to_cell_error()
            .code,
        cell_abi::ErrorCode::LimitValue
    );
    // Without a ceiling, or under a higher one, the frame is delivered.
    for ceiling in [None, Some(1 << 20)] {
        let (r, seen) = run(ceiling);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(seen, 1);
    }
}

/// The frames' own maps are strict like value maps: keys strictly increasing.
#[test]
fn frame_maps_refuse_unordered_or_duplicate_keys() {
    // Metric { name: "m", value: 0.0, tags: {"b": "", "a": ""} }
    let mut body = vec![5, 1, b'm'];
    body.extend(0f64.to_le_bytes());
    let good = [body.clone(), vec![2, 1, b'a', 0, 1, b'b', 0]].concat();
    let bad = [body.clone(), vec![2, 1, b'b', 0, 1, b'a', 0]].concat();
    let dup = [body, vec![2, 1, b'a', 0, 1, b'a', 0]].concat();
    assert!(wire::decode_body::<GuestFrame>(&good).is_ok());
    assert!(wire::decode_body::<GuestFrame>(&bad).is_err());
    assert!(wire::decode_body::<GuestFrame>(&dup).is_err());
    // Log { level: Info, message: "", fields: {"b": (), "a": ()} }
    let log = |keys: [u8; 2]| vec![4, 2, 0, 2, 1, keys[0], 0, 1, keys[1], 0];
    assert!(wire::decode_body::<GuestFrame>(&log([b'a', b'b'])).is_ok());
    assert!(wire::decode_body::<GuestFrame>(&log([b'b', b'a'])).is_err());
    assert!(wire::decode_body::<GuestFrame>(&log([b'a', b'a'])).is_err());
}

/// Maps count towards the depth limit like lists, in values and in a frame's own maps.
#[test]
fn nested_maps_are_held_to_the_depth_limit() {
    let nested = |depth: usize| {
        let mut v = Value::Unit;
        for _ in 1..depth {
            v = Value::Map([("k".to_string(), v)].into_iter().collect());
        }
        v
    };
    let max = cell_abi::value::MAX_VALUE_DEPTH;
    let post = |v: Value| {
        wire::encode(&GuestFrame::Post(v), wire::DEFAULT_MAX_FRAME_LEN).unwrap()[wire::HEADER_LEN..]
            .to_vec()
    };
    assert!(wire::decode_body::<GuestFrame>(&post(nested(max))).is_ok());
    assert!(wire::decode_body::<GuestFrame>(&post(nested(max + 1))).is_err());
    // A log's fields are the top level: a value in them is at depth 1.
    let log = |v: Value| {
        let frame = GuestFrame::Log {
            level: cell_abi::Level::Info,
            message: String::new(),
            fields: [("f".to_string(), v)].into_iter().collect(),
        };
        wire::encode(&frame, wire::DEFAULT_MAX_FRAME_LEN).unwrap()[wire::HEADER_LEN..].to_vec()
    };
    assert!(wire::decode_body::<GuestFrame>(&log(nested(max))).is_ok());
    assert!(wire::decode_body::<GuestFrame>(&log(nested(max + 1))).is_err());
}

/// A host side that sets no ceiling gets none: the default is `None`.
#[test]
fn host_sides_have_no_ceiling_by_default() {
    struct Plain;
    impl HostSide for Plain {
        fn on_frame(&self, _: GuestFrame) -> Flow {
            Flow::Done
        }
    }
    assert_eq!(Plain.max_frame_memory(), None);
}
