//! Stable numeric error codes. A code, once published, keeps its number and meaning forever;
//! new codes are appended.

/// Why an operation failed. Carried on the wire as its `u16` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The source text does not parse.
    Syntax,
    /// The script raised an error while running.
    Runtime,
    /// The function or module named does not exist.
    NotFound,
    /// The script used something outside the cell model (eval, print, an undeclared import, ...).
    OutOfModel,
    /// The broker refused a request: the capability or action is not granted.
    Denied,
    /// An argument has the wrong type or shape.
    InvalidArgument,
    /// The operation budget of one exec/call was exhausted.
    LimitOperations,
    /// Function call nesting went past the limit.
    LimitCallDepth,
    /// Expression nesting went past the limit.
    LimitExprDepth,
    /// A string grew past the limit.
    LimitStringSize,
    /// An array grew past the limit.
    LimitArraySize,
    /// A map grew past the limit.
    LimitMapSize,
    /// A value is nested too deeply or is too large to cross the boundary.
    LimitValue,
    /// A frame is larger than the frame cap.
    LimitFrameSize,
    /// The cell flooded its event queue.
    LimitEventQueue,
    /// The cell ran out of memory.
    LimitMemory,
    /// The cell used up its CPU time.
    LimitCpu,
    /// A capability's rate or byte quota is used up.
    LimitQuota,
    /// The operation was cancelled (the cell was killed).
    Cancelled,
    /// The operation ran past its wall-time limit.
    TimedOut,
    /// The guest broke the protocol; the cell was killed.
    ProtocolViolation,
    /// The two sides speak different ABI versions.
    VersionMismatch,
    /// The cell died unexpectedly.
    CellCrashed,
    /// The cell is closed or was killed earlier.
    CellClosed,
    /// The containment boundary could not be set up.
    SpawnFailed,
    /// A granted capability failed while handling the request.
    CapabilityFailed,
    /// A bug on the host side; reported rather than panicking.
    Internal,
    /// A code this build does not know (a newer peer appended it), passed on as its number.
    /// Only [`ErrorCode::from_wire`] makes one, and never for a known number.
    Unknown(u16),
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Syntax,
        ErrorCode::Runtime,
        ErrorCode::NotFound,
        ErrorCode::OutOfModel,
        ErrorCode::Denied,
        ErrorCode::InvalidArgument,
        ErrorCode::LimitOperations,
        ErrorCode::LimitCallDepth,
        ErrorCode::LimitExprDepth,
        ErrorCode::LimitStringSize,
        ErrorCode::LimitArraySize,
        ErrorCode::LimitMapSize,
        ErrorCode::LimitValue,
        ErrorCode::LimitFrameSize,
        ErrorCode::LimitEventQueue,
        ErrorCode::LimitMemory,
        ErrorCode::LimitCpu,
        ErrorCode::LimitQuota,
        ErrorCode::Cancelled,
        ErrorCode::TimedOut,
        ErrorCode::ProtocolViolation,
        ErrorCode::VersionMismatch,
        ErrorCode::CellCrashed,
        ErrorCode::CellClosed,
        ErrorCode::SpawnFailed,
        ErrorCode::CapabilityFailed,
        ErrorCode::Internal,
    ];

    /// The stable number on the wire (the table in SPEC.md).
    pub const fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Syntax => 1,
            ErrorCode::Runtime => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::OutOfModel => 4,
            ErrorCode::Denied => 5,
            ErrorCode::InvalidArgument => 6,
            ErrorCode::LimitOperations => 10,
            ErrorCode::LimitCallDepth => 11,
            ErrorCode::LimitExprDepth => 12,
            ErrorCode::LimitStringSize => 13,
            ErrorCode::LimitArraySize => 14,
            ErrorCode::LimitMapSize => 15,
            ErrorCode::LimitValue => 16,
            ErrorCode::LimitFrameSize => 17,
            ErrorCode::LimitEventQueue => 18,
            ErrorCode::LimitMemory => 19,
            ErrorCode::LimitCpu => 20,
            ErrorCode::LimitQuota => 21,
            ErrorCode::Cancelled => 30,
            ErrorCode::TimedOut => 31,
            ErrorCode::ProtocolViolation => 40,
            ErrorCode::VersionMismatch => 41,
            ErrorCode::CellCrashed => 42,
            ErrorCode::CellClosed => 43,
            ErrorCode::SpawnFailed => 44,
            ErrorCode::CapabilityFailed => 50,
            ErrorCode::Internal => 60,
            ErrorCode::Unknown(raw) => raw,
        }
    }

    /// The known code with this number, if this build knows it.
    pub fn from_u16(raw: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_u16() == raw)
    }

    /// Any number read from the wire: a known code, or [`ErrorCode::Unknown`] carrying it (the
    /// list is append-only, so a newer peer may send a code this build has never seen).
    pub fn from_wire(raw: u16) -> ErrorCode {
        ErrorCode::from_u16(raw).unwrap_or(ErrorCode::Unknown(raw))
    }

    /// Whether a guest may report this code in a `Done` or `Refused` frame (SPEC.md, "Who may
    /// report a code"). The others describe what only the host can observe (its clock, its
    /// kill, its queue, the boundary); the host does not take a guest's word for them.
    /// Unknown codes are a newer guest's own and pass.
    pub const fn guest_may_report(self) -> bool {
        !matches!(
            self,
            ErrorCode::LimitEventQueue
                | ErrorCode::LimitMemory
                | ErrorCode::LimitCpu
                | ErrorCode::Cancelled
                | ErrorCode::TimedOut
                | ErrorCode::ProtocolViolation
                | ErrorCode::VersionMismatch
                | ErrorCode::CellCrashed
                | ErrorCode::CellClosed
                | ErrorCode::SpawnFailed
                | ErrorCode::Internal
        )
    }

    /// A stable snake_case name, used in JSON output and logs.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Syntax => "syntax",
            ErrorCode::Runtime => "runtime",
            ErrorCode::NotFound => "not_found",
            ErrorCode::OutOfModel => "out_of_model",
            ErrorCode::Denied => "denied",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::LimitOperations => "limit_operations",
            ErrorCode::LimitCallDepth => "limit_call_depth",
            ErrorCode::LimitExprDepth => "limit_expr_depth",
            ErrorCode::LimitStringSize => "limit_string_size",
            ErrorCode::LimitArraySize => "limit_array_size",
            ErrorCode::LimitMapSize => "limit_map_size",
            ErrorCode::LimitValue => "limit_value",
            ErrorCode::LimitFrameSize => "limit_frame_size",
            ErrorCode::LimitEventQueue => "limit_event_queue",
            ErrorCode::LimitMemory => "limit_memory",
            ErrorCode::LimitCpu => "limit_cpu",
            ErrorCode::LimitQuota => "limit_quota",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::ProtocolViolation => "protocol_violation",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::CellCrashed => "cell_crashed",
            ErrorCode::CellClosed => "cell_closed",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::CapabilityFailed => "capability_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown(_) => "unknown",
        }
    }

    /// Whether the cell is gone after an error with this code. (A frame over the cap that the
    /// guest refused to send is a script error; one that reaches the host kills the cell through
    /// the pipe, whatever its code.)
    pub const fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::ProtocolViolation
                | ErrorCode::VersionMismatch
                | ErrorCode::CellCrashed
                | ErrorCode::CellClosed
                | ErrorCode::Cancelled
                | ErrorCode::TimedOut
                | ErrorCode::LimitEventQueue
                | ErrorCode::LimitMemory
                | ErrorCode::LimitCpu
                | ErrorCode::SpawnFailed
        )
    }
}

/// The code's [`name`](ErrorCode::name); a code this build does not know shows its number too
/// (`unknown code 99`), so what a newer peer sent is not lost in a message.
impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ErrorCode::Unknown(raw) => write!(f, "unknown code {raw}"),
            known => f.write_str(known.name()),
        }
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <u16 as serde::Deserialize>::deserialize(d)?;
        Ok(ErrorCode::from_wire(raw))
    }
}

/// The one message of [`ErrorCode::LimitCallDepth`], whoever stops the script: the engine at
/// the policy's `max_call_depth`, the runtime's stack probe short of the engine's stack end, or
/// the boundary at the stack's guard. The cell runtime adds the script position where it knows
/// it; the host side, which cannot, gives it bare.
pub const CALL_DEPTH_MESSAGE: &str =
    "the script nests too deeply: past its call-depth limit or the engine's stack";

// Tripwires: published numbers never change.
const _: () = assert!(ErrorCode::Syntax.as_u16() == 1);
const _: () = assert!(ErrorCode::Denied.as_u16() == 5);
const _: () = assert!(ErrorCode::LimitOperations.as_u16() == 10);
const _: () = assert!(ErrorCode::LimitQuota.as_u16() == 21);
const _: () = assert!(ErrorCode::Cancelled.as_u16() == 30);
const _: () = assert!(ErrorCode::ProtocolViolation.as_u16() == 40);
const _: () = assert!(ErrorCode::SpawnFailed.as_u16() == 44);
const _: () = assert!(ErrorCode::CapabilityFailed.as_u16() == 50);
const _: () = assert!(ErrorCode::Internal.as_u16() == 60);

#[cfg(feature = "alloc")]
mod with_alloc {
    use super::ErrorCode;
    use alloc::string::String;
    use serde::{Deserialize, Serialize};

    /// An error as it crosses the boundary: a stable code and a human-readable message.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CellError {
        /// Stable machine-readable code: what callers match on.
        pub code: ErrorCode,
        /// Human-readable detail; not stable, do not match on it.
        pub message: String,
    }

    impl CellError {
        /// An error with `code` and `message`.
        pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
            CellError {
                code,
                message: message.into(),
            }
        }
    }

    impl core::fmt::Display for CellError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}: {}", self.code, self.message)
        }
    }

    impl core::error::Error for CellError {}
}
#[cfg(feature = "alloc")]
pub use with_alloc::CellError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for (i, a) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(ErrorCode::from_u16(a.as_u16()), Some(*a));
            for b in &ErrorCode::ALL[i + 1..] {
                assert_ne!(a.as_u16(), b.as_u16());
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(9999), None);
    }

    #[test]
    fn every_number_decodes_and_unknown_ones_are_passed_on() {
        for raw in 0..=u16::MAX {
            let code = ErrorCode::from_wire(raw);
            assert_eq!(code.as_u16(), raw);
            match ErrorCode::from_u16(raw) {
                Some(known) => assert_eq!(code, known),
                None => {
                    assert_eq!(code, ErrorCode::Unknown(raw));
                    assert_eq!(code.name(), "unknown");
                    assert!(!code.is_fatal() && code.guest_may_report());
                }
            }
        }
        assert!(
            !ErrorCode::ALL
                .iter()
                .any(|c| matches!(c, ErrorCode::Unknown(_)))
        );
    }

    #[test]
    fn fatal_codes_are_exactly_the_spec_list() {
        let fatal: alloc::vec::Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| c.is_fatal())
            .map(|c| c.name())
            .collect();
        assert_eq!(
            fatal,
            [
                "limit_event_queue",
                "limit_memory",
                "limit_cpu",
                "cancelled",
                "timed_out",
                "protocol_violation",
                "version_mismatch",
                "cell_crashed",
                "cell_closed",
                "spawn_failed"
            ]
        );
    }

    #[test]
    fn display_is_the_name_and_the_message() {
        use alloc::string::ToString;
        assert_eq!(ErrorCode::LimitCpu.to_string(), "limit_cpu");
        assert_eq!(ErrorCode::Unknown(99).name(), "unknown");
        assert_eq!(ErrorCode::Unknown(99).to_string(), "unknown code 99");
        assert_eq!(
            CellError::new(ErrorCode::Denied, "no grant").to_string(),
            "denied: no grant"
        );
    }

    #[test]
    fn host_only_codes_are_exactly_the_spec_table() {
        let host_only: alloc::vec::Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| !c.guest_may_report())
            .map(|c| c.name())
            .collect();
        assert_eq!(
            host_only,
            [
                "limit_event_queue",
                "limit_memory",
                "limit_cpu",
                "cancelled",
                "timed_out",
                "protocol_violation",
                "version_mismatch",
                "cell_crashed",
                "cell_closed",
                "spawn_failed",
                "internal"
            ]
        );
        // Every fatal code is one the host alone decides.
        for c in ErrorCode::ALL {
            assert!(!c.is_fatal() || !c.guest_may_report(), "{c}");
        }
    }
}
