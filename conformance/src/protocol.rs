//! The protocol tier: frames in, frames out, for a backend in any language.
//!
//! Each file in `protocol/` is one exchange between the host and a guest, as bytes (`hex`, the
//! normative form: a 4-byte little-endian length and the postcard body) and decoded (`decoded`,
//! for people). The runner sends the host frames to a fresh cell of the backend under test —
//! straight to its pipe, without the host side's checks, so a guest's own refusals are tested
//! too — answers each `Request` with the next scripted host frame, and compares every frame the
//! guest sends with the file, byte for byte (`Ready` by ABI version and schema only: engines
//! differ; `Refused` by its code). A vector whose host frame a guest must refuse (`reject_*`)
//! ends with the guest's `Refused` frame: a guest that just ends the channel fails it.
//!
//! The exchanges are defined in [`vectors`]; `CELL_BLESS_VECTORS=1` rewrites the files from the
//! backend under test (bless from a reference backend, then review the diff).

use abi::backend::{Backend, Flow, HostSide};
use abi::wire::{self, DEFAULT_MAX_FRAME_LEN};
use abi::{EngineLimits, GuestFrame, Hello, HostFrame, Map, Value};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One frame of an exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// host → guest.
    Host {
        /// The frame's bytes, length prefix included, in hex.
        hex: String,
        /// The frame as decoded, in Rust debug form.
        decoded: String,
    },
    /// guest → host.
    Guest {
        /// The frame's bytes, length prefix included, in hex.
        hex: String,
        /// The frame as decoded, in Rust debug form.
        decoded: String,
    },
    /// The guest ended the channel (exited, closed its end) instead of answering.
    End(String),
}

/// One exchange, as stored in `protocol/<name>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// The vector's name, also the file name.
    pub name: String,
    /// What the exchange exercises.
    pub about: String,
    /// The frames in the order they crossed.
    pub steps: Vec<Step>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn host(frame: &HostFrame) -> Step {
    let bytes = wire::encode(frame, wire::ABSOLUTE_MAX_FRAME_LEN).expect("encodes");
    Step::Host {
        hex: hex(&bytes),
        decoded: format!("{frame:?}"),
    }
}

fn guest(frame: &GuestFrame) -> Step {
    let bytes = wire::encode(frame, wire::ABSOLUTE_MAX_FRAME_LEN).expect("encodes");
    Step::Guest {
        hex: hex(&bytes),
        decoded: format!("{frame:?}"),
    }
}

fn hello(modules: &[&str]) -> HostFrame {
    HostFrame::Hello(Hello::new(
        "vector",
        EngineLimits::default(),
        modules.iter().map(|m| m.to_string()).collect(),
    ))
}

fn exec(id: u64, source: &str) -> HostFrame {
    HostFrame::Exec {
        id,
        source: source.into(),
    }
}

/// The exchanges: a name, what it shows, and the host frames it sends (replies to requests
/// included, in order).
pub fn vectors() -> Vec<(&'static str, &'static str, Vec<HostFrame>)> {
    let mut wrong_version = Hello::new("vector", EngineLimits::default(), Vec::new());
    wrong_version.abi_version = 99;
    vec![
        (
            "handshake_exec_post",
            "handshake, an exec that posts and returns, a call of the function it defined, shutdown",
            vec![
                hello(&["math"]),
                exec(1, "fn add(a, b) { a + b } post(40 + 2); add(1, 2)"),
                HostFrame::Call {
                    id: 2,
                    function: "add".into(),
                    args: vec![Value::Int(40), Value::Int(2)],
                    kwargs: Map::new(),
                },
                HostFrame::Shutdown,
            ],
        ),
        (
            "events_in_order",
            "posts, logs and metrics arrive in the order sent, before the completion",
            vec![
                hello(&[]),
                exec(
                    1,
                    r#"post(1); log("info", "hi", #{k: [1.5, "x"]}); metric("m", 2.5, #{t: "v"}); post(())"#,
                ),
                HostFrame::Shutdown,
            ],
        ),
        (
            "request_reply",
            "a request waits for the host's reply (here a denial) and the script sees it",
            vec![
                hello(&[]),
                exec(
                    1,
                    r#"let r = (); try { request("clock", "wall") } catch (e) { r = e.code } r"#,
                ),
                HostFrame::Reply {
                    id: 1,
                    result: Err(abi::CellError::new(abi::ErrorCode::Denied, "not granted")),
                },
                HostFrame::Shutdown,
            ],
        ),
        (
            "script_error",
            "a failing script completes with its error; the cell stays usable",
            vec![
                hello(&[]),
                exec(1, "let x = ;"),
                exec(2, "throw \"boom\""),
                exec(3, "40 + 2"),
                HostFrame::Shutdown,
            ],
        ),
        (
            "reject_wrong_version",
            "must reject: a Hello of another ABI version is refused",
            vec![HostFrame::Hello(wrong_version)],
        ),
        (
            "reject_exec_before_hello",
            "must reject: the first frame must be Hello",
            vec![exec(1, "1")],
        ),
    ]
}

/// Vectors a built-in backend fails today, reported to its owners: the trial shows as ignored
/// with this text (never as passed) until the backend is fixed and the entry removed.
pub const KNOWN_DEFECTS: &[(&str, &str, &str)] = &[];

/// Why `backend` is known to fail vector `name`, if it is.
pub fn known_defect(backend: &str, name: &str) -> Option<&'static str> {
    KNOWN_DEFECTS
        .iter()
        .find(|(b, v, _)| *b == backend && *v == name)
        .map(|(_, _, why)| *why)
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol")
}

/// The stored exchange `name`.
pub fn load(name: &str) -> Exchange {
    let path = dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with CELL_BLESS_VECTORS=1)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Records what the guest sends and answers requests with the scripted replies.
struct Recorder {
    steps: Mutex<Vec<Step>>,
    replies: Mutex<Vec<HostFrame>>,
}

impl HostSide for Recorder {
    fn on_frame(&self, frame: GuestFrame) -> Flow {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.push(guest(&frame));
        match frame {
            GuestFrame::Ready(_) | GuestFrame::Refused(_) | GuestFrame::Done { .. } => Flow::Done,
            GuestFrame::Request { .. } => {
                let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
                if replies.is_empty() {
                    return Flow::Abort(abi::CellError::new(
                        abi::ErrorCode::ProtocolViolation,
                        "a request the vector does not answer",
                    ));
                }
                let reply = replies.remove(0);
                steps.push(host(&reply));
                Flow::Reply(reply)
            }
            _ => Flow::Continue,
        }
    }
}

/// Plays exchange `name` against a fresh cell of `backend` and returns what happened.
pub fn play(backend: &dyn Backend, name: &str) -> Exchange {
    let (name, about, frames) = vectors()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no vector `{name}`"));
    let (starts, replies): (Vec<HostFrame>, Vec<HostFrame>) = frames
        .into_iter()
        .partition(|f| !matches!(f, HostFrame::Reply { .. }));
    let recorder = Arc::new(Recorder {
        steps: Mutex::default(),
        replies: Mutex::new(replies),
    });
    let spec = crate::Setup::default().spawn_spec("vector");
    let mut pipe = backend
        .spawn(&spec, recorder.clone())
        .unwrap_or_else(|e| panic!("spawn on {}: {e}", backend.name()));
    for frame in starts {
        recorder.steps.lock().unwrap().push(host(&frame));
        if matches!(frame, HostFrame::Shutdown) {
            let _ = pipe.shutdown();
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Err(e) = pipe.transact(frame, Some(deadline)) {
            recorder.steps.lock().unwrap().push(Step::End(match e {
                abi::backend::PipeError::TimedOut => "timed out".into(),
                _ => "closed".into(),
            }));
            pipe.killer().kill();
            let _ = pipe.shutdown();
            break;
        }
    }
    let steps = std::mem::take(&mut *recorder.steps.lock().unwrap());
    Exchange {
        name: name.into(),
        about: about.into(),
        steps,
    }
}

/// Frames agree byte for byte, except `Ready` (by ABI version and schema: engines differ) and
/// `Refused` (by code).
fn same(expected: &Step, got: &Step) -> bool {
    match (expected, got) {
        (Step::Guest { hex: a, .. }, Step::Guest { hex: b, .. }) => {
            let decode = |h: &str| wire::decode::<GuestFrame>(&unhex(h), DEFAULT_MAX_FRAME_LEN);
            match (decode(a), decode(b)) {
                (Ok(GuestFrame::Ready(x)), Ok(GuestFrame::Ready(y))) => {
                    x.abi_version == y.abi_version && x.schema == y.schema
                }
                // A refusal is judged by its code: its words are the guest's own.
                (Ok(GuestFrame::Refused(x)), Ok(GuestFrame::Refused(y))) => x.code == y.code,
                _ => a == b,
            }
        }
        _ => expected == got,
    }
}

/// Checks `backend` against the stored exchange `name` (or rewrites it under
/// `CELL_BLESS_VECTORS=1`).
pub fn check(backend: &dyn Backend, name: &str) {
    let got = play(backend, name);
    if std::env::var_os("CELL_BLESS_VECTORS").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
        std::fs::write(dir().join(format!("{name}.json")), text).expect("write vector");
        return;
    }
    let want = load(name);
    let n = want.steps.len().max(got.steps.len());
    for i in 0..n {
        match (want.steps.get(i), got.steps.get(i)) {
            (Some(w), Some(g)) if same(w, g) => {}
            (w, g) => panic!(
                "{}: vector `{name}` differs at step {i}:\n  expected {w:?}\n  got      {g:?}",
                backend.name()
            ),
        }
    }
}
