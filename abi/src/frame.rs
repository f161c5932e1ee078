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
    /// Deepest nesting of function calls (Rhai call levels); at most the guest's `MAX_CALL_DEPTH`.
    pub max_call_depth: u32,
    /// Deepest expression nesting the parser accepts; at most the guest's `MAX_EXPR_DEPTH`.
    pub max_expr_depth: u32,
    /// Longest string, in bytes (0 = unlimited).
    pub max_string_len: u32,
    /// Most elements in one array, or bytes in one BLOB (0 = unlimited).
    pub max_array_len: u32,
    /// Most entries in one map (0 = unlimited).
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

/// The host modules a guest runtime of this ABI provides: the only names a [`Hello`] may list
/// in `modules`. The host refuses any other before it spawns a cell.
pub const HOST_MODULES: &[&str] = &["math", "text", "json"];

/// The longest metric name, in bytes; a name is 1 to this many bytes long. The host refuses a
/// [`GuestFrame::Metric`] outside it as a protocol violation; the guest runtime refuses the
/// script's `metric` call first, with `invalid_argument`, so a script cannot break the protocol.
pub const MAX_METRIC_NAME_LEN: usize = 256;

/// host → cell, first frame: who the host is and what the cell may do.
///
/// `features` travels after the v1 fields, only when non-empty, and is read by
/// [`crate::wire::decode_body`] from the bytes after them (SPEC.md, "Evolution").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Hello {
    /// ABI major version the host speaks ([`crate::ABI_VERSION`]); the guest refuses another.
    pub abi_version: u32,
    /// Schema key ([`crate::SCHEMA_KEY`]) naming the frame layout; the guest refuses another.
    pub schema: String,
    /// Name of the cell, for the guest's own diagnostics.
    pub cell: String,
    /// Engine limits the guest sets before it runs anything.
    pub limits: EngineLimits,
    /// Host-provided modules that `import` and `call` may resolve.
    pub modules: Vec<String>,
    /// Optional features the host speaks ([`crate::version::FEATURES`]).
    #[serde(skip_deserializing)]
    pub features: Vec<String>,
}

impl Hello {
    /// A handshake for `cell` from this build: its ABI version, schema and features.
    pub fn new(cell: impl Into<String>, limits: EngineLimits, modules: Vec<String>) -> Self {
        Hello {
            abi_version: crate::ABI_VERSION,
            schema: String::from(crate::SCHEMA_KEY),
            cell: cell.into(),
            limits,
            modules,
            features: own_features(),
        }
    }
}

fn own_features() -> Vec<String> {
    crate::version::FEATURES
        .iter()
        .map(|f| String::from(*f))
        .collect()
}

/// cell → host, answer to [`Hello`]: the guest is ready. `features` travels like
/// [`Hello::features`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Ready {
    /// ABI major version the guest speaks ([`crate::ABI_VERSION`]).
    pub abi_version: u32,
    /// Schema key ([`crate::SCHEMA_KEY`]) the guest was built with.
    pub schema: String,
    /// Script engine the guest runs (e.g. `rhai`).
    pub engine: String,
    /// Version of that engine, for diagnostics and audit.
    pub engine_version: String,
    /// Optional features the guest speaks ([`crate::version::FEATURES`]).
    #[serde(skip_deserializing)]
    pub features: Vec<String>,
}

impl Ready {
    /// This build's answer for `engine` at `engine_version`.
    pub fn new(engine: impl Into<String>, engine_version: impl Into<String>) -> Self {
        Ready {
            abi_version: crate::ABI_VERSION,
            schema: String::from(crate::SCHEMA_KEY),
            engine: engine.into(),
            engine_version: engine_version.into(),
            features: own_features(),
        }
    }
}

// The v1 fields in order, then the extension (features) only when there is one: a handshake
// without features is byte-identical to the first v1 frames.
impl Serialize for Hello {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let extended = !self.features.is_empty();
        let mut t = s.serialize_tuple(5 + usize::from(extended))?;
        t.serialize_element(&self.abi_version)?;
        t.serialize_element(&self.schema)?;
        t.serialize_element(&self.cell)?;
        t.serialize_element(&self.limits)?;
        t.serialize_element(&self.modules)?;
        if extended {
            t.serialize_element(&self.features)?;
        }
        t.end()
    }
}

impl Serialize for Ready {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let extended = !self.features.is_empty();
        let mut t = s.serialize_tuple(4 + usize::from(extended))?;
        t.serialize_element(&self.abi_version)?;
        t.serialize_element(&self.schema)?;
        t.serialize_element(&self.engine)?;
        t.serialize_element(&self.engine_version)?;
        if extended {
            t.serialize_element(&self.features)?;
        }
        t.end()
    }
}

/// Reads a handshake extension: the feature list, then whatever a newer minor appended after
/// it, which this build does not know and skips.
fn read_extension(tail: &[u8]) -> Result<Vec<String>, postcard::Error> {
    let (features, _newer) = postcard::take_from_bytes::<Vec<String>>(tail)?;
    Ok(features)
}

/// Severity of a guest log event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Diagnostics for whoever debugs the script.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the script survived.
    Warn,
    /// A failure the script reports.
    Error,
}

impl Level {
    /// Every level, least severe first.
    pub const ALL: [Level; 5] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ];

    /// The level's lower-case name, as `log` takes it and logs show it.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// The level named `name` (any case), if there is one.
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
    Exec {
        /// Chosen by the host; the `Done` carries it back.
        id: CorrelationId,
        /// Script source text.
        source: String,
    },
    /// 2: invoke `module.func`; completed by [`GuestFrame::Done`] with the same id.
    Call {
        /// Chosen by the host; the `Done` carries it back.
        id: CorrelationId,
        /// Fully qualified function name, `module.func`.
        function: String,
        /// Positional arguments.
        args: Vec<Value>,
        /// Named arguments.
        #[serde(deserialize_with = "crate::decode::map_field")]
        kwargs: Map,
    },
    /// 3: the broker's answer to [`GuestFrame::Request`] with the same id.
    Reply {
        /// The id of the guest's request.
        id: CorrelationId,
        /// The capability's result or the refusal.
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
        /// The id of the exec or call this completes.
        id: CorrelationId,
        /// The script's value, or why it failed.
        result: Result<Value, CellError>,
    },
    /// 3: `post(message)`.
    Post(Value),
    /// 4: `log(level, message, fields)`.
    Log {
        /// How severe the event is.
        level: Level,
        /// The log line.
        message: String,
        /// Structured context fields.
        #[serde(deserialize_with = "crate::decode::map_field")]
        fields: Map,
    },
    /// 5: `metric(name, value, tags)`.
    Metric {
        /// Metric name.
        name: String,
        /// Sample value.
        value: f64,
        /// Tags (label pairs) on the sample.
        #[serde(deserialize_with = "crate::decode::tags_field")]
        tags: BTreeMap<String, String>,
    },
    /// 6: `request(capability, action, payload)`; answered by [`HostFrame::Reply`].
    Request {
        /// Chosen by the guest; the `Reply` carries it back.
        id: CorrelationId,
        /// Capability name, as granted in the policy.
        capability: String,
        /// Action on that capability (e.g. `get`).
        action: String,
        /// Action argument.
        payload: Value,
    },
}

/// The first byte of an encoded [`HostFrame`] body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HostFrameKind {
    /// Tag of [`HostFrame::Hello`].
    Hello = 0,
    /// Tag of [`HostFrame::Exec`].
    Exec = 1,
    /// Tag of [`HostFrame::Call`].
    Call = 2,
    /// Tag of [`HostFrame::Reply`].
    Reply = 3,
    /// Tag of [`HostFrame::Shutdown`].
    Shutdown = 4,
}

/// The first byte of an encoded [`GuestFrame`] body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GuestFrameKind {
    /// Tag of [`GuestFrame::Ready`].
    Ready = 0,
    /// Tag of [`GuestFrame::Refused`].
    Refused = 1,
    /// Tag of [`GuestFrame::Done`].
    Done = 2,
    /// Tag of [`GuestFrame::Post`].
    Post = 3,
    /// Tag of [`GuestFrame::Log`].
    Log = 4,
    /// Tag of [`GuestFrame::Metric`].
    Metric = 5,
    /// Tag of [`GuestFrame::Request`].
    Request = 6,
}

impl crate::wire::Frame for HostFrame {
    fn accept_tail(&mut self, tail: &[u8]) -> Result<(), crate::wire::WireError> {
        match self {
            HostFrame::Hello(hello) => {
                hello.features = read_extension(tail).map_err(crate::wire::WireError::Malformed)?;
                Ok(())
            }
            _ => Err(crate::wire::WireError::TrailingBytes(tail.len())),
        }
    }
}

impl crate::wire::Frame for GuestFrame {
    fn accept_tail(&mut self, tail: &[u8]) -> Result<(), crate::wire::WireError> {
        match self {
            GuestFrame::Ready(ready) => {
                ready.features = read_extension(tail).map_err(crate::wire::WireError::Malformed)?;
                Ok(())
            }
            _ => Err(crate::wire::WireError::TrailingBytes(tail.len())),
        }
    }
}

impl HostFrame {
    /// Which variant this is: the tag byte it encodes with.
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
    /// Which variant this is: the tag byte it encodes with.
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

#[cfg(test)]
mod tests {
    use super::Level;

    /// Level names are what `log(level, ...)` takes and what logs show: each level has its own,
    /// matched case-insensitively, and nothing else names a level.
    #[test]
    fn level_names_round_trip_and_are_distinct() {
        let names: alloc::vec::Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["trace", "debug", "info", "warn", "error"]);
        for level in Level::ALL {
            assert_eq!(Level::from_name(level.name()), Some(level));
            assert_eq!(
                Level::from_name(&level.name().to_ascii_uppercase()),
                Some(level)
            );
        }
        assert_eq!(Level::from_name("fatal"), None);
        assert_eq!(Level::from_name(""), None);
    }
}
