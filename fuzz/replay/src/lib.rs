//! What each fuzz target checks, for any input: decoding never panics, never takes memory past
//! its ceiling, and whatever decodes re-encodes to bytes that decode to the same frame; a policy
//! file is accepted or refused with a typed error; a request reaching the broker is decided and
//! run without a panic and without leaving its grants. The fuzz targets in `fuzz/fuzz_targets/`
//! call these; `tests/replay.rs` runs them over the committed corpora in `fuzz/corpus/`, so CI
//! exercises them on stable Rust without the fuzzer.
#![forbid(unsafe_code)]

use abi::wire::{self, ABSOLUTE_MAX_FRAME_LEN, DEFAULT_MAX_FRAME_LEN, Frame, HEADER_LEN};
use abi::{ErrorCode, GuestFrame, HostFrame, Value};
use serde::Serialize;
use std::sync::{Mutex, PoisonError};

/// The memory a decoded guest frame may take on the host (the channel's default ceiling).
pub const HOST_FRAME_MEMORY: usize = 64 << 20;

/// What a fuzz target runs on one input; it panics on a finding.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, each with its check: `fuzz/corpus/<name>/` holds its corpus.
pub const TARGETS: &[(&str, Check)] = &[
    ("guest_frame", guest_frame),
    ("host_frame", host_frame),
    ("policy", policy),
    ("broker_payload", broker_payload),
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

/// A policy file as the supervisor reads it: the whole [`supervisor::Policy`] parsed from TOML
/// and validated (limits, channel, modules, and the grants' shape checked by a broker with the
/// built-in capabilities). It may be refused, with a typed error; it may not panic.
pub fn policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = supervisor::Policy::from_toml(text);
    }
}

/// Where the `broker_payload` target's fixture lives: a `root` in a request payload that starts
/// with this prefix is moved under the fixture's temporary directory, so the committed seeds
/// name the granted roots although the directory differs from run to run.
pub const FIXTURE_ROOT: &str = "/fuzz-root";

/// Bytes in a file the fixture's deny rule covers; no allowed reply may carry them.
pub const DENIED_MARKER: &[u8] = b"DENIED-CONTENT-7f3a";

/// Read cap of the fixture's read-only fs grant.
pub const FIXTURE_READ_MAX: u64 = 4096;

/// The largest reply the fixture's cell takes (as the host would pass it): below the read cap,
/// so reads meet both limits.
pub const FIXTURE_REPLY_MAX: u64 = 2048;

/// The broker the `broker_payload` target asks: restrictive rules over a temporary directory.
///
/// Requests are asked with a reply limit of [`FIXTURE_REPLY_MAX`] bytes.
///
/// - `fs` `read`/`list`/`stat` under `ro/` (reads capped at [`FIXTURE_READ_MAX`] bytes), every
///   action under `rw/` (read-write, 1 KiB writes, a request quota per second), and a deny on
///   `ro/denied/`, which `ro/link` (a symlink) points into;
/// - `kv` `get`/`put`/`list` with 256-byte values in a store of at most 64 keys;
/// - `clock` `wall`, `random` `int`, `secret` `read` of one name;
/// - `http` `get` of an origin on a closed local port, with a short timeout.
pub struct BrokerFixture {
    dir: tempfile::TempDir,
    cell: broker::CellBroker,
}

impl BrokerFixture {
    /// Creates the directory tree and the cell's broker. Panics if the fixture cannot be set up
    /// (a fault of the machine, not a finding).
    pub fn new() -> BrokerFixture {
        let dir = tempfile::tempdir().expect("fixture: temporary directory");
        let at = |p: &str| dir.path().join(p);
        for d in ["ro/sub", "ro/denied", "rw", "kv"] {
            std::fs::create_dir_all(at(d)).expect("fixture: directories");
        }
        std::fs::write(at("ro/hello.txt"), b"hello").expect("fixture: file");
        std::fs::write(at("ro/sub/a"), b"a").expect("fixture: file");
        std::fs::write(at("ro/denied/key"), DENIED_MARKER).expect("fixture: file");
        std::fs::write(at("ro/big"), vec![b'x'; FIXTURE_READ_MAX as usize + 1])
            .expect("fixture: file");
        std::fs::write(at("ro/mid"), vec![b'm'; FIXTURE_REPLY_MAX as usize + 1])
            .expect("fixture: file");
        std::os::unix::fs::symlink("denied/key", at("ro/link")).expect("fixture: symlink");
        let root = dir.path().display();
        let rules: broker::Rules = toml::from_str(&format!(
            r#"
[[grants]]
capability = "fs"
actions = ["read", "list", "stat"]
roots = ["{root}/ro"]
max_bytes = {FIXTURE_READ_MAX}
timeout_ms = 2000

[[grants]]
capability = "fs"
actions = ["*"]
access = "read-write"
roots = ["{root}/rw"]
max_bytes = 1024
timeout_ms = 2000
quota = {{ requests = 1000, window_ms = 1000 }}

[[grants]]
capability = "kv"
actions = ["get", "put", "list"]
max_bytes = 256

[[grants]]
capability = "clock"
actions = ["wall"]

[[grants]]
capability = "random"
actions = ["int"]

[[grants]]
capability = "secret"
actions = ["read"]
names = ["token"]

[[grants]]
capability = "http"
actions = ["get"]
origins = ["http://127.0.0.1:9"]
timeout_ms = 500

[[denies]]
capability = "fs"
actions = ["*"]
roots = ["{root}/ro/denied"]
"#
        ))
        .expect("fixture: rules parse");
        let mut secrets = broker::Secrets::new();
        secrets.insert("token", "fixture-token");
        let limits = broker::KvLimits {
            namespace_keys: 64,
            namespace_bytes: 64 << 10,
            store_keys: 64,
            store_bytes: 64 << 10,
        };
        let cell = broker::Broker::builder()
            .kv_dir(at("kv"))
            .kv_limits(limits)
            .secrets(secrets)
            .pool(2, 4)
            .build()
            .expect("fixture: broker builds")
            .for_cell("fuzz", &rules)
            .expect("fixture: the rules hold");
        BrokerFixture { dir, cell }
    }

    /// Decodes `data` as a guest frame body (under the host's memory ceiling); a `Request` is
    /// decided and run by the fixture's broker. Panics on a finding: the broker panicked, an
    /// allowed reply carries the denied file's bytes or a read past its cap or the reply
    /// limit, or a refusal carries an empty message.
    pub fn check(&self, data: &[u8]) {
        let Ok(GuestFrame::Request {
            capability,
            action,
            payload,
            ..
        }) = wire::decode_body_within::<GuestFrame>(data, HOST_FRAME_MEMORY)
        else {
            return;
        };
        let reply = self.request(&capability, &action, payload);
        match reply {
            Ok(value) => {
                assert!(
                    !carries(&value, DENIED_MARKER),
                    "{capability}.{action}: an allowed reply carries the denied file's content"
                );
                if capability == "fs"
                    && let Value::Bytes(b) = &value
                {
                    assert!(
                        b.len() as u64 <= FIXTURE_READ_MAX.min(FIXTURE_REPLY_MAX),
                        "fs.{action}: a reply of {} bytes past the read cap or the reply limit",
                        b.len()
                    );
                }
            }
            Err(e) => {
                assert!(!e.message.is_empty(), "a refusal without a message");
                assert_ne!(e.code, ErrorCode::Internal, "{capability}.{action}: {e:?}");
            }
        }
    }

    /// Asks the fixture's broker, with a `root` under [`FIXTURE_ROOT`] moved into the fixture.
    pub fn request(
        &self,
        capability: &str,
        action: &str,
        mut payload: Value,
    ) -> Result<Value, abi::CellError> {
        self.place_root(&mut payload);
        self.cell.request_within(
            "fuzz",
            capability,
            action,
            payload,
            None,
            Some(FIXTURE_REPLY_MAX),
        )
    }

    /// Moves a payload's `root` under [`FIXTURE_ROOT`] into the fixture's directory.
    fn place_root(&self, payload: &mut Value) {
        if let Value::Map(map) = payload
            && let Some(Value::Str(root)) = map.get_mut("root")
            && let Some(rest) = root.strip_prefix(FIXTURE_ROOT)
        {
            *root = format!("{}{rest}", self.dir.path().display());
        }
    }
}

impl Default for BrokerFixture {
    fn default() -> Self {
        BrokerFixture::new()
    }
}

/// Whether a string or byte string in `value` contains `needle`.
fn carries(value: &Value, needle: &[u8]) -> bool {
    let has = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    match value {
        Value::Str(s) => has(s.as_bytes()),
        Value::Bytes(b) => has(b),
        Value::List(items) => items.iter().any(|v| carries(v, needle)),
        Value::Map(map) => map
            .iter()
            .any(|(k, v)| has(k.as_bytes()) || carries(v, needle)),
        _ => false,
    }
}

/// The fixture shared by the calls of [`broker_payload`] in one process.
static FIXTURE: Mutex<Option<BrokerFixture>> = Mutex::new(None);

/// A guest's request as the broker receives it, decided and run against [`BrokerFixture`]
/// (created on first use, kept for the process's later inputs; [`release_fixture`] removes it).
pub fn broker_payload(data: &[u8]) {
    let mut fixture = FIXTURE.lock().unwrap_or_else(PoisonError::into_inner);
    fixture.get_or_insert_with(BrokerFixture::new).check(data);
}

/// Drops the fixture [`broker_payload`] created, removing its directory.
pub fn release_fixture() {
    FIXTURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
}
