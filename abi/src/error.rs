//! Stable numeric error codes. A code, once published, keeps its number and meaning forever;
//! new codes are appended.

/// Why an operation failed. Carried on the wire as its `u16` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The source text does not parse.
    Syntax = 1,
    /// The script raised an error while running.
    Runtime = 2,
    /// The function or module named does not exist.
    NotFound = 3,
    /// The script used something outside the cell model (eval, print, an undeclared import, ...).
    OutOfModel = 4,
    /// The broker refused a request: the capability or action is not granted.
    Denied = 5,
    /// An argument has the wrong type or shape.
    InvalidArgument = 6,
    /// The operation budget of one exec/call was exhausted.
    LimitOperations = 10,
    /// Function call nesting went past the limit.
    LimitCallDepth = 11,
    /// Expression nesting went past the limit.
    LimitExprDepth = 12,
    /// A string grew past the limit.
    LimitStringSize = 13,
    /// An array grew past the limit.
    LimitArraySize = 14,
    /// A map grew past the limit.
    LimitMapSize = 15,
    /// A value is nested too deeply or is too large to cross the boundary.
    LimitValue = 16,
    /// A frame is larger than the frame cap.
    LimitFrameSize = 17,
    /// The cell flooded its event queue.
    LimitEventQueue = 18,
    /// The cell ran out of memory.
    LimitMemory = 19,
    /// The cell used up its CPU time.
    LimitCpu = 20,
    /// A capability's rate or byte quota is used up.
    LimitQuota = 21,
    /// The operation was cancelled (the cell was killed).
    Cancelled = 30,
    /// The operation ran past its wall-time limit.
    TimedOut = 31,
    /// The guest broke the protocol; the cell was killed.
    ProtocolViolation = 40,
    /// The two sides speak different ABI versions.
    VersionMismatch = 41,
    /// The cell died unexpectedly.
    CellCrashed = 42,
    /// The cell is closed or was killed earlier.
    CellClosed = 43,
    /// The containment boundary could not be set up.
    SpawnFailed = 44,
    /// A granted capability failed while handling the request.
    CapabilityFailed = 50,
    /// A bug on the host side; reported rather than panicking.
    Internal = 60,
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

    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(raw: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_u16() == raw)
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

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
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
        ErrorCode::from_u16(raw).ok_or_else(|| {
            serde::de::Error::invalid_value(
                serde::de::Unexpected::Unsigned(raw.into()),
                &"a known error code",
            )
        })
    }
}

// Tripwires: published numbers never change.
const _: () = assert!(ErrorCode::Syntax as u16 == 1);
const _: () = assert!(ErrorCode::Denied as u16 == 5);
const _: () = assert!(ErrorCode::LimitOperations as u16 == 10);
const _: () = assert!(ErrorCode::LimitQuota as u16 == 21);
const _: () = assert!(ErrorCode::Cancelled as u16 == 30);
const _: () = assert!(ErrorCode::ProtocolViolation as u16 == 40);
const _: () = assert!(ErrorCode::SpawnFailed as u16 == 44);
const _: () = assert!(ErrorCode::CapabilityFailed as u16 == 50);
const _: () = assert!(ErrorCode::Internal as u16 == 60);

#[cfg(feature = "alloc")]
mod with_alloc {
    use super::ErrorCode;
    use alloc::string::String;
    use serde::{Deserialize, Serialize};

    /// An error as it crosses the boundary: a stable code and a human-readable message.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CellError {
        pub code: ErrorCode,
        pub message: String,
    }

    impl CellError {
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
}
