//! Byte-exact golden vectors for every frame kind. Any change to the wire is a visible diff in
//! `golden/`. Regenerate deliberately with `UPDATE_GOLDEN=1 cargo test -p cell-abi --test golden`.

use cell_abi::frame::{GuestFrameKind, HostFrameKind};
use cell_abi::wire::{self, DEFAULT_MAX_FRAME_LEN};
use cell_abi::{
    CellError, EngineLimits, ErrorCode, GuestFrame, Hello, HostFrame, Level, Map, Ready, Value,
};
use std::path::PathBuf;

fn sample_map() -> Map {
    let mut m = Map::new();
    m.insert("a".into(), Value::Int(-1));
    m.insert(
        "b".into(),
        Value::List(vec![Value::Bool(true), Value::Unit, Value::Float(1.5)]),
    );
    m.insert("c".into(), Value::Bytes(vec![0, 255]));
    m.insert("d".into(), Value::Str("é".into()));
    m
}

fn host_frames() -> Vec<(&'static str, HostFrameKind, HostFrame)> {
    vec![
        (
            "host_hello",
            HostFrameKind::Hello,
            HostFrame::Hello(Hello::new(
                "demo",
                EngineLimits::default(),
                vec!["math".into()],
            )),
        ),
        (
            "host_exec",
            HostFrameKind::Exec,
            HostFrame::Exec {
                id: 1,
                source: "post(40 + 2)".into(),
            },
        ),
        (
            "host_call",
            HostFrameKind::Call,
            HostFrame::Call {
                id: 300,
                function: "main.add".into(),
                args: vec![Value::Int(1), Value::Int(2)],
                kwargs: sample_map(),
            },
        ),
        (
            "host_reply_ok",
            HostFrameKind::Reply,
            HostFrame::Reply {
                id: 7,
                result: Ok(Value::Map(sample_map())),
            },
        ),
        (
            "host_reply_err",
            HostFrameKind::Reply,
            HostFrame::Reply {
                id: 7,
                result: Err(CellError::new(
                    ErrorCode::Denied,
                    "capability fs not granted",
                )),
            },
        ),
        (
            "host_shutdown",
            HostFrameKind::Shutdown,
            HostFrame::Shutdown,
        ),
    ]
}

fn guest_frames() -> Vec<(&'static str, GuestFrameKind, GuestFrame)> {
    vec![
        (
            "guest_ready",
            GuestFrameKind::Ready,
            GuestFrame::Ready(Ready {
                abi_version: cell_abi::ABI_VERSION,
                schema: cell_abi::SCHEMA_KEY.into(),
                engine: "rhai".into(),
                engine_version: "1.27".into(),
            }),
        ),
        (
            "guest_refused",
            GuestFrameKind::Refused,
            GuestFrame::Refused(CellError::new(
                ErrorCode::VersionMismatch,
                "host speaks 2, guest 1",
            )),
        ),
        (
            "guest_done_ok",
            GuestFrameKind::Done,
            GuestFrame::Done {
                id: 1,
                result: Ok(Value::Int(42)),
            },
        ),
        (
            "guest_done_err",
            GuestFrameKind::Done,
            GuestFrame::Done {
                id: 2,
                result: Err(CellError::new(ErrorCode::Syntax, "expected ';'")),
            },
        ),
        (
            "guest_post",
            GuestFrameKind::Post,
            GuestFrame::Post(Value::Map(sample_map())),
        ),
        (
            "guest_log",
            GuestFrameKind::Log,
            GuestFrame::Log {
                level: Level::Warn,
                message: "low disk".into(),
                fields: sample_map(),
            },
        ),
        (
            "guest_metric",
            GuestFrameKind::Metric,
            GuestFrame::Metric {
                name: "latency_ms".into(),
                value: 12.5,
                tags: [("route".to_string(), "/x".to_string())]
                    .into_iter()
                    .collect(),
            },
        ),
        (
            "guest_request",
            GuestFrameKind::Request,
            GuestFrame::Request {
                id: 9,
                capability: "clock".into(),
                action: "now".into(),
                payload: Value::Unit,
            },
        ),
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{name}.hex"))
}

/// Golden files hold the frame as lowercase hex (prefix and body), for readable diffs.
fn check(name: &str, bytes: &[u8]) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, format!("{hex}\n")).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("missing golden vector {}: {e}", path.display()));
    assert_eq!(hex, expected.trim(), "wire encoding of {name} changed");
}

#[test]
fn every_frame_kind_has_a_golden_vector() {
    let host = host_frames();
    let guest = guest_frames();
    for kind in 0..=4u8 {
        assert!(
            host.iter().any(|(_, k, _)| *k as u8 == kind),
            "host kind {kind} has no vector"
        );
    }
    for kind in 0..=6u8 {
        assert!(
            guest.iter().any(|(_, k, _)| *k as u8 == kind),
            "guest kind {kind} has no vector"
        );
    }
}

/// Encodes each frame, checks its discriminant byte and golden bytes, and decodes it back.
fn check_all<F>(frames: Vec<(&'static str, u8, F)>)
where
    F: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for (name, kind, frame) in frames {
        let bytes = wire::encode(&frame, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(bytes[wire::HEADER_LEN], kind, "{name}: discriminant byte");
        check(name, &bytes);
        assert_eq!(
            wire::decode::<F>(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap(),
            frame
        );
    }
}

#[test]
fn host_frames_match_golden_bytes() {
    for (_, kind, frame) in host_frames() {
        assert_eq!(frame.kind(), kind);
    }
    check_all(
        host_frames()
            .into_iter()
            .map(|(n, k, f)| (n, k as u8, f))
            .collect(),
    );
}

#[test]
fn guest_frames_match_golden_bytes() {
    for (_, kind, frame) in guest_frames() {
        assert_eq!(frame.kind(), kind);
    }
    check_all(
        guest_frames()
            .into_iter()
            .map(|(n, k, f)| (n, k as u8, f))
            .collect(),
    );
}

#[test]
fn value_tags_are_pinned() {
    let cases = [
        (Value::Unit, "00"),
        (Value::Bool(true), "0101"),
        (Value::Int(-2), "0203"),
        (Value::Float(1.0), "03000000000000f03f"),
        (Value::Str("hi".into()), "04026869"),
        (Value::Bytes(vec![1, 2]), "05020102"),
        (Value::List(vec![Value::Unit]), "060100"),
        (
            Value::Map([("k".to_string(), Value::Unit)].into_iter().collect()),
            "0701016b00",
        ),
    ];
    for (value, hex) in cases {
        let bytes = postcard::to_allocvec(&value).unwrap();
        let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, hex, "{value:?}");
    }
}
