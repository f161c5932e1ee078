//! The frames in both directions. Wire discriminants are the variant order: append-only.

use crate::{CellError, Map, Value};
use alloc::{collections::BTreeMap, string::String, vec::Vec};
use serde::{Deserialize, Serialize};

/// Correlates a request with its completion. Chosen by the side that asks.
pub type CorrelationId = u64;

/// Limits the guest engine enforces, sent in the handshake so every backend applies the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineLimits {
    /// Operations one exec/call may run (0 = unlimited).
    pub max_operations: u64,
    pub max_call_depth: u32,
    pub max_expr_depth: u32,
    pub max_string_len: u32,
    pub max_array_len: u32,
    pub max_map_len: u32,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_operations: 10_000_000,
            max_call_depth: 64,
            max_expr_depth: 64,
            max_string_len: 1 << 20,
            max_array_len: 100_000,
            max_map_len: 100_000,
        }
    }
}

/// host → cell, first frame: who the host is and what the cell may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub abi_version: u32,
    pub schema: String,
    /// Name of the cell, for the guest's own diagnostics.
    pub cell: String,
    pub limits: EngineLimits,
    /// Host-provided modules that `import` and `call` may resolve.
    pub modules: Vec<String>,
}

impl Hello {
    pub fn new(cell: impl Into<String>, limits: EngineLimits, modules: Vec<String>) -> Self {
        Hello {
            abi_version: crate::ABI_VERSION,
            schema: String::from(crate::SCHEMA_KEY),
            cell: cell.into(),
            limits,
            modules,
        }
    }
}

/// cell → host, answer to [`Hello`]: the guest is ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub abi_version: u32,
    pub schema: String,
    pub engine: String,
    pub engine_version: String,
}

/// Severity of a guest log event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name))
    }
}

/// Frames the host sends to a cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HostFrame {
    /// 0: handshake.
    Hello(Hello),
    /// 1: run source text; completed by [`GuestFrame::Done`] with the same id.
    Exec { id: CorrelationId, source: String },
    /// 2: invoke `module.func`; completed by [`GuestFrame::Done`] with the same id.
    Call {
        id: CorrelationId,
        function: String,
        args: Vec<Value>,
        kwargs: Map,
    },
    /// 3: the broker's answer to [`GuestFrame::Request`] with the same id.
    Reply {
        id: CorrelationId,
        result: Result<Value, CellError>,
    },
    /// 4: the cell should exit cleanly.
    Shutdown,
}

/// Frames a cell sends to the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GuestFrame {
    /// 0: handshake accepted.
    Ready(Ready),
    /// 1: handshake refused by the guest (version or schema mismatch); the guest exits.
    Refused(CellError),
    /// 2: completion of the exec or call with the same id.
    Done {
        id: CorrelationId,
        result: Result<Value, CellError>,
    },
    /// 3: `post(message)`.
    Post(Value),
    /// 4: `log(level, message, fields)`.
    Log {
        level: Level,
        message: String,
        fields: Map,
    },
    /// 5: `metric(name, value, tags)`.
    Metric {
        name: String,
        value: f64,
        tags: BTreeMap<String, String>,
    },
    /// 6: `request(capability, action, payload)`; answered by [`HostFrame::Reply`].
    Request {
        id: CorrelationId,
        capability: String,
        action: String,
        payload: Value,
    },
}

/// The first byte of an encoded [`HostFrame`] body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HostFrameKind {
    Hello = 0,
    Exec = 1,
    Call = 2,
    Reply = 3,
    Shutdown = 4,
}

/// The first byte of an encoded [`GuestFrame`] body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GuestFrameKind {
    Ready = 0,
    Refused = 1,
    Done = 2,
    Post = 3,
    Log = 4,
    Metric = 5,
    Request = 6,
}

impl HostFrame {
    pub const fn kind(&self) -> HostFrameKind {
        match self {
            HostFrame::Hello(_) => HostFrameKind::Hello,
            HostFrame::Exec { .. } => HostFrameKind::Exec,
            HostFrame::Call { .. } => HostFrameKind::Call,
            HostFrame::Reply { .. } => HostFrameKind::Reply,
            HostFrame::Shutdown => HostFrameKind::Shutdown,
        }
    }
}

impl GuestFrame {
    pub const fn kind(&self) -> GuestFrameKind {
        match self {
            GuestFrame::Ready(_) => GuestFrameKind::Ready,
            GuestFrame::Refused(_) => GuestFrameKind::Refused,
            GuestFrame::Done { .. } => GuestFrameKind::Done,
            GuestFrame::Post(_) => GuestFrameKind::Post,
            GuestFrame::Log { .. } => GuestFrameKind::Log,
            GuestFrame::Metric { .. } => GuestFrameKind::Metric,
            GuestFrame::Request { .. } => GuestFrameKind::Request,
        }
    }
}

// Tripwires: wire discriminants (the golden vectors check that the encoding agrees).
const _: () = assert!(HostFrameKind::Hello as u8 == 0);
const _: () = assert!(HostFrameKind::Exec as u8 == 1);
const _: () = assert!(HostFrameKind::Call as u8 == 2);
const _: () = assert!(HostFrameKind::Reply as u8 == 3);
const _: () = assert!(HostFrameKind::Shutdown as u8 == 4);
const _: () = assert!(GuestFrameKind::Ready as u8 == 0);
const _: () = assert!(GuestFrameKind::Refused as u8 == 1);
const _: () = assert!(GuestFrameKind::Done as u8 == 2);
const _: () = assert!(GuestFrameKind::Post as u8 == 3);
const _: () = assert!(GuestFrameKind::Log as u8 == 4);
const _: () = assert!(GuestFrameKind::Metric as u8 == 5);
const _: () = assert!(GuestFrameKind::Request as u8 == 6);
