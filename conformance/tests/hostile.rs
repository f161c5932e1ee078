//! Hostile guests against the host side of the protocol, through a backend whose "guest" plays
//! back arbitrary frames or raw bytes. Whatever it sends, the host stays alive: the frame
//! is answered or rejected, or the cell is killed with a typed error — never a panic or a hang.

use abi::backend::{
    Backend, CellPipe, FrameIo, HostSide, Killer, PipeError, SpawnError, SpawnSpec, drive,
};
use abi::wire::{self, DEFAULT_MAX_FRAME_LEN};
use abi::{CellError, ErrorCode, GuestFrame, HostFrame, Level, Map, Ready, Value};
use cell_conformance::{Setup, TestCell};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes the fake guest sends after a correct handshake, for the first exec.
#[derive(Clone)]
struct Script(Arc<Mutex<Vec<u8>>>);

/// The fake backend; `killed` is the kill switch of the one cell it spawns, so a test sees
/// whether the host really killed it.
struct Hostile(Script, Arc<Flag>);

struct Flag(AtomicBool);
impl Killer for Flag {
    fn kill(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Io {
    incoming: VecDeque<u8>,
    script: Script,
    handshaken: bool,
}

impl FrameIo for Io {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), PipeError> {
        let host: HostFrame =
            wire::decode(frame, DEFAULT_MAX_FRAME_LEN).expect("host frames are valid");
        match host {
            HostFrame::Hello(_) if !self.handshaken => {
                self.handshaken = true;
                let ready = GuestFrame::Ready(Ready {
                    abi_version: abi::ABI_VERSION,
                    schema: abi::SCHEMA_KEY.into(),
                    engine: "hostile".into(),
                    engine_version: "0".into(),
                    features: Vec::new(),
                });
                self.incoming
                    .extend(wire::encode(&ready, DEFAULT_MAX_FRAME_LEN).unwrap());
            }
            HostFrame::Exec { .. } | HostFrame::Call { .. } => {
                self.incoming
                    .extend(self.script.0.lock().unwrap().drain(..));
            }
            _ => {}
        }
        Ok(())
    }

    fn recv_frame(&mut self, _: Option<Instant>, max_len: u32) -> Result<Vec<u8>, PipeError> {
        if self.incoming.len() < wire::HEADER_LEN {
            return Err(PipeError::Closed);
        }
        let header: Vec<u8> = self.incoming.drain(..wire::HEADER_LEN).collect();
        let len = wire::body_len(header.try_into().unwrap(), max_len)?;
        if self.incoming.len() < len {
            return Err(PipeError::Crashed("the guest died mid-frame".into()));
        }
        Ok(self.incoming.drain(..len).collect())
    }
}

struct Pipe {
    io: Io,
    host: Arc<dyn HostSide>,
    killed: Arc<Flag>,
    max: u32,
}

impl CellPipe for Pipe {
    fn transact(&mut self, frame: HostFrame, deadline: Option<Instant>) -> Result<(), PipeError> {
        if self.killed.0.load(Ordering::Relaxed) {
            return Err(PipeError::Killed);
        }
        drive(&mut self.io, &*self.host, &frame, deadline, self.max)
    }
    fn killer(&self) -> Arc<dyn Killer> {
        self.killed.clone()
    }
    fn shutdown(&mut self) -> Result<(), PipeError> {
        Ok(())
    }
}

impl Backend for Hostile {
    fn name(&self) -> &str {
        "hostile"
    }
    fn spawn(
        &self,
        spec: &SpawnSpec,
        host: Arc<dyn HostSide>,
    ) -> Result<Box<dyn CellPipe>, SpawnError> {
        Ok(Box::new(Pipe {
            io: Io {
                incoming: VecDeque::new(),
                script: self.0.clone(),
                handshaken: false,
            },
            host,
            killed: self.1.clone(),
            max: spec.max_frame_len,
        }))
    }
}

fn frames(list: &[GuestFrame]) -> Vec<u8> {
    list.iter()
        .flat_map(|f| wire::encode(f, wire::ABSOLUTE_MAX_FRAME_LEN).unwrap())
        .collect()
}

/// Runs one exec against a guest that answers with `bytes`; returns the result and whether the
/// cell survived it. A cell counts as gone only when the host both recorded why (`dead`) and
/// pulled the backend's kill switch, before anything else is asked of it; a gone cell then
/// refuses the next exec as closed.
fn play(bytes: Vec<u8>) -> (Result<Value, CellError>, bool) {
    let script = Script(Arc::new(Mutex::new(bytes)));
    let killed = Arc::new(Flag(AtomicBool::new(false)));
    let cell = TestCell::spawn(
        &Hostile(script, killed.clone()),
        "victim",
        &Setup::default(),
    )
    .expect("handshake");
    assert!(
        !killed.0.load(Ordering::Relaxed),
        "the handshake kills nothing"
    );
    let result = cell.exec("anything");
    let gone = killed.0.load(Ordering::Relaxed) && cell.dead().is_some();
    // recv never hangs: queued events, then a timeout or the reason the cell died.
    while cell.recv(Some(Duration::from_millis(1))).is_ok() {}
    if gone {
        let again = cell.exec("again");
        assert_eq!(code(&again), Some(ErrorCode::CellClosed), "{again:?}");
    }
    (result, !gone)
}

fn code(r: &Result<Value, CellError>) -> Option<ErrorCode> {
    r.as_ref().err().map(|e| e.code)
}

#[test]
fn forged_completion_for_an_unknown_id_kills_the_cell() {
    let (r, alive) = play(frames(&[GuestFrame::Done {
        id: 999,
        result: Ok(Value::Int(1)),
    }]));
    assert_eq!(code(&r), Some(ErrorCode::ProtocolViolation));
    assert!(!alive);
}

#[test]
fn a_post_is_never_taken_for_the_result() {
    let (r, _) = play(frames(&[
        GuestFrame::Post(Value::Int(7)),
        GuestFrame::Done {
            id: 2,
            result: Ok(Value::Int(42)),
        },
    ]));
    assert_eq!(r, Ok(Value::Int(42)));
}

#[test]
fn four_gib_length_prefix_is_refused_before_allocation() {
    let (r, alive) = play(u32::MAX.to_le_bytes().to_vec());
    assert_eq!(code(&r), Some(ErrorCode::LimitFrameSize));
    assert!(!alive);
}

#[test]
fn a_frame_of_the_wrong_shape_is_a_typed_error_not_a_hang() {
    let (r, alive) = play(vec![3, 0, 0, 0, 99, 1, 2]);
    assert_eq!(code(&r), Some(ErrorCode::ProtocolViolation));
    assert!(!alive);
}

#[test]
fn dying_mid_frame_is_reported_as_a_crash() {
    let mut bytes = frames(&[GuestFrame::Post(Value::Str("partial".into()))]);
    bytes.truncate(bytes.len() - 2);
    let (r, alive) = play(bytes);
    assert_eq!(code(&r), Some(ErrorCode::CellCrashed));
    assert!(!alive);
}

#[test]
fn handshake_frames_mid_transaction_are_violations() {
    let ready = GuestFrame::Ready(Ready {
        abi_version: 1,
        schema: abi::SCHEMA_KEY.into(),
        engine: "x".into(),
        engine_version: "y".into(),
        features: Vec::new(),
    });
    let (r, alive) = play(frames(&[ready]));
    assert_eq!(code(&r), Some(ErrorCode::ProtocolViolation));
    assert!(!alive);
}

#[test]
fn requests_are_decided_on_the_host_and_ids_cannot_be_replayed() {
    let request = |id| GuestFrame::Request {
        id,
        capability: "fs".into(),
        action: "read".into(),
        payload: Value::Unit,
    };
    // A granted-looking request is still denied by the host; the guest then completes.
    let (r, _) = play(frames(&[
        request(1),
        GuestFrame::Done {
            id: 2,
            result: Ok(Value::Unit),
        },
    ]));
    assert_eq!(r, Ok(Value::Unit));
    let (r, alive) = play(frames(&[request(5), request(5)]));
    assert_eq!(code(&r), Some(ErrorCode::ProtocolViolation));
    assert!(!alive);
}

#[test]
fn overly_deep_values_are_rejected() {
    let mut bytes = vec![3u8];
    for _ in 0..100 {
        bytes.extend([6, 1]);
    }
    bytes.push(0);
    let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
    framed.extend(bytes);
    let (r, alive) = play(framed);
    assert_eq!(code(&r), Some(ErrorCode::ProtocolViolation));
    assert!(!alive);
}

fn guest_frame() -> impl Strategy<Value = GuestFrame> {
    let value = cell_conformance::value_strategy();
    prop_oneof![
        value.clone().prop_map(GuestFrame::Post),
        (0u64..4, value.clone()).prop_map(|(id, v)| GuestFrame::Done { id, result: Ok(v) }),
        (0u64..4).prop_map(|id| GuestFrame::Done {
            id,
            result: Err(CellError::new(ErrorCode::Runtime, "x"))
        }),
        (0u64..4, ".{0,8}", value.clone()).prop_map(|(id, capability, payload)| {
            GuestFrame::Request {
                id,
                capability,
                action: "a".into(),
                payload,
            }
        }),
        (".{0,8}", any::<f64>()).prop_map(|(name, value)| GuestFrame::Metric {
            name,
            value,
            tags: Default::default()
        }),
        ".{0,8}".prop_map(|message| GuestFrame::Log {
            level: Level::Info,
            message,
            fields: Map::new()
        }),
        Just(GuestFrame::Refused(CellError::new(
            ErrorCode::VersionMismatch,
            "no"
        ))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_frame_sequence_leaves_the_supervisor_alive(seq in proptest::collection::vec(guest_frame(), 0..8)) {
        let (r, alive) = play(frames(&seq));
        // Either the guest completed the exec properly, or the cell is dead with a typed error.
        if let Err(e) = &r {
            prop_assert!(!alive || !e.code.is_fatal(), "{e}");
        }
    }

    #[test]
    fn any_bytes_leave_the_supervisor_alive(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (r, alive) = play(bytes);
        if let Err(e) = &r {
            prop_assert!(!alive || !e.code.is_fatal(), "{e}");
        }
    }
}
