//! What each fuzz target checks, for any input: decoding never panics, never takes memory past
//! its ceiling, and whatever decodes re-encodes to bytes that decode to the same frame. The fuzz
//! targets in `fuzz/fuzz_targets/` call these; `tests/replay.rs` runs them over the committed
//! corpora in `fuzz/corpus/`, so CI exercises them on stable Rust without the fuzzer.
#![forbid(unsafe_code)]

use abi::wire::{self, ABSOLUTE_MAX_FRAME_LEN, DEFAULT_MAX_FRAME_LEN, Frame, HEADER_LEN};
use abi::{GuestFrame, HostFrame};
use serde::Serialize;

/// The memory a decoded guest frame may take on the host (the channel's default ceiling).
pub const HOST_FRAME_MEMORY: usize = 64 << 20;

/// What a fuzz target runs on one input; it panics on a finding.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, each with its check: `fuzz/corpus/<name>/` holds its corpus.
pub const TARGETS: &[(&str, Check)] = &[
    ("guest_frame", guest_frame),
    ("host_frame", host_frame),
    ("policy", policy),
];

/// A decoded frame encodes again, and that encoding decodes to a frame that encodes the same:
/// the codec has one canonical form for everything it accepts.
fn canonical<F: Frame + Serialize>(frame: &F) {
    let bytes = wire::encode(frame, ABSOLUTE_MAX_FRAME_LEN).expect("a decoded frame re-encodes");
    let again: F = wire::decode_body(&bytes[HEADER_LEN..]).expect("a re-encoded frame decodes");
    let twice = wire::encode(&again, ABSOLUTE_MAX_FRAME_LEN).expect("re-encodes twice");
    assert_eq!(
        bytes, twice,
        "the encoding of a decoded frame is not stable"
    );
}

/// The length prefix check: any 4 bytes give a length within the cap or a typed error.
fn prefix(data: &[u8]) {
    if let Some(header) = data.first_chunk::<HEADER_LEN>()
        && let Ok(len) = wire::body_len(*header, DEFAULT_MAX_FRAME_LEN)
    {
        assert!(len > 0 && len <= DEFAULT_MAX_FRAME_LEN as usize);
    }
}

/// The host decoding a frame body a guest sent, under the host's memory ceiling.
pub fn guest_frame(data: &[u8]) {
    prefix(data);
    if let Ok(frame) = wire::decode_body_within::<GuestFrame>(data, HOST_FRAME_MEMORY) {
        canonical(&frame);
    }
}

/// The guest runtime decoding a frame body the host sent.
pub fn host_frame(data: &[u8]) {
    prefix(data);
    if let Ok(frame) = runtime::decode_frame(data) {
        canonical::<HostFrame>(&frame);
    }
}

/// A policy's `[[grants]]`/`[[denies]]` tables: parsed, then checked for shape by a broker with
/// the built-in capabilities. Either step may refuse; neither may panic.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = toml::from_str::<broker::Rules>(text) {
        let broker = broker::Broker::builder()
            .build()
            .expect("a default broker builds");
        let _ = broker.check_shape(&rules);
    }
}
