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
            "host_hello_features",
            HostFrameKind::Hello,
            HostFrame::Hello(Hello {
                features: vec!["error-data".into(), "x-future".into()],
                ..Hello::new("demo", EngineLimits::default(), vec![])
            }),
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
            GuestFrame::Ready(Ready::new("rhai", "1.27")),
        ),
        (
            "guest_ready_features",
            GuestFrameKind::Ready,
            GuestFrame::Ready(Ready {
                features: vec!["error-data".into()],
                ..Ready::new("rhai", "1.28")
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
            "guest_done_unknown_code",
            GuestFrameKind::Done,
            GuestFrame::Done {
                id: 3,
                result: Err(CellError::new(ErrorCode::Unknown(70), "from a newer guest")),
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
    F: serde::Serialize + wire::Frame + PartialEq + std::fmt::Debug,
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

fn hex_bytes(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn v1_fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/v1");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, hex_bytes(&std::fs::read_to_string(&p).unwrap()))
        })
        .collect();
    out.sort();
    out
}

/// The first v1 frames (golden/v1, frozen: never regenerated) are read by this decoder and
/// written back byte for byte: an older peer keeps working with this build.
#[test]
fn frozen_v1_frames_still_decode_and_re_encode_identically() {
    let fixtures = v1_fixtures();
    assert_eq!(fixtures.len(), 14, "the frozen v1 set is complete");
    for (name, bytes) in fixtures {
        let again = if name.starts_with("host_") {
            let frame: HostFrame = wire::decode(&bytes, DEFAULT_MAX_FRAME_LEN)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if let HostFrame::Hello(h) = &frame {
                assert!(h.features.is_empty(), "a v1 hello has no features");
            }
            wire::encode(&frame, DEFAULT_MAX_FRAME_LEN).unwrap()
        } else {
            let frame: GuestFrame = wire::decode(&bytes, DEFAULT_MAX_FRAME_LEN)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if let GuestFrame::Ready(r) = &frame {
                assert!(r.features.is_empty(), "a v1 ready has no features");
            }
            wire::encode(&frame, DEFAULT_MAX_FRAME_LEN).unwrap()
        };
        assert_eq!(again, bytes, "{name}");
    }
}

/// Appends `extra` to a frame's body and fixes its length prefix.
fn with_extra_body_bytes(frame: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.extend_from_slice(extra);
    let len = (out.len() - wire::HEADER_LEN) as u32;
    out[..wire::HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    out
}

/// A newer minor may append fields after the features of Hello and Ready: this build reads the
/// features and skips the rest. Any other frame with bytes left over is refused.
#[test]
fn newer_handshake_fields_are_skipped_and_other_frames_stay_strict() {
    let hello = HostFrame::Hello(Hello {
        features: vec!["a".into()],
        ..Hello::new("c", EngineLimits::default(), vec![])
    });
    let bytes = wire::encode(&hello, DEFAULT_MAX_FRAME_LEN).unwrap();
    let newer = with_extra_body_bytes(&bytes, &[0x05, 0xaa, 0xbb]);
    assert_eq!(
        wire::decode::<HostFrame>(&newer, DEFAULT_MAX_FRAME_LEN).unwrap(),
        hello
    );
    let ready = GuestFrame::Ready(Ready {
        features: vec!["b".into(), "c".into()],
        ..Ready::new("e", "1")
    });
    let bytes = wire::encode(&ready, DEFAULT_MAX_FRAME_LEN).unwrap();
    let newer = with_extra_body_bytes(&bytes, &[0x01]);
    assert_eq!(
        wire::decode::<GuestFrame>(&newer, DEFAULT_MAX_FRAME_LEN).unwrap(),
        ready
    );
    // A malformed extension is an error, not an empty feature list.
    let v1 = wire::encode(
        &GuestFrame::Ready(Ready::new("e", "1")),
        DEFAULT_MAX_FRAME_LEN,
    )
    .unwrap();
    let bad = with_extra_body_bytes(&v1, &[0x02, 0x01]);
    assert!(wire::decode::<GuestFrame>(&bad, DEFAULT_MAX_FRAME_LEN).is_err());
    // Strict elsewhere.
    let post = wire::encode(&GuestFrame::Post(Value::Unit), DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(
        wire::decode::<GuestFrame>(&with_extra_body_bytes(&post, &[0]), DEFAULT_MAX_FRAME_LEN),
        Err(wire::WireError::TrailingBytes(1))
    );
    let exec = wire::encode(
        &HostFrame::Exec {
            id: 1,
            source: "x".into(),
        },
        DEFAULT_MAX_FRAME_LEN,
    )
    .unwrap();
    assert_eq!(
        wire::decode::<HostFrame>(
            &with_extra_body_bytes(&exec, &[0, 0]),
            DEFAULT_MAX_FRAME_LEN
        ),
        Err(wire::WireError::TrailingBytes(2))
    );
}

/// An error code this build does not know is passed on as its number, both ways.
#[test]
fn unknown_error_codes_are_passed_on() {
    let done = hex_bytes(&std::fs::read_to_string(golden_path("guest_done_err")).unwrap());
    // Patch the code byte (01, syntax) to 70, a code from a newer guest.
    let code_at = wire::HEADER_LEN + 3;
    assert_eq!(done[code_at], 1);
    let mut newer = done.clone();
    newer[code_at] = 70;
    let frame: GuestFrame = wire::decode(&newer, DEFAULT_MAX_FRAME_LEN).unwrap();
    let GuestFrame::Done { result: Err(e), .. } = &frame else {
        panic!("{frame:?}")
    };
    assert_eq!(e.code, ErrorCode::Unknown(70));
    assert_eq!(e.code.as_u16(), 70);
    assert_eq!(wire::encode(&frame, DEFAULT_MAX_FRAME_LEN).unwrap(), newer);
}
