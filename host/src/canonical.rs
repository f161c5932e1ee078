//! One message per host-observed limit, whatever the backend reported: the host words them,
//! with the limit's value, so that every backend answers alike.

use crate::rules::bytes_text;
use abi::backend::{Resource, Resources};
use abi::{CellError, ErrorCode};
use std::time::Duration;

/// The transaction ran past its wall-time limit (requests in flight included).
pub fn timed_out(wall_time: Option<Duration>) -> CellError {
    CellError::new(
        ErrorCode::TimedOut,
        match wall_time {
            Some(t) => format!(
                "the cell ran past its wall-time limit of {} ms",
                t.as_millis()
            ),
            None => "the cell ran past its deadline".into(),
        },
    )
}

/// The cell's start (its handshake) took longer than it is given ([`crate::START_TIME`],
/// or the wall time when that is longer).
pub fn start_timed_out(limit: Option<Duration>) -> CellError {
    CellError::new(
        ErrorCode::TimedOut,
        match limit {
            Some(t) => format!("the cell did not start within {} ms", t.as_millis()),
            None => "the cell did not start before its deadline".into(),
        },
    )
}

/// The cell was killed.
pub fn cancelled() -> CellError {
    CellError::new(ErrorCode::Cancelled, "the cell was killed")
}

/// The embedder interrupted the exec/call; the cell lives on.
pub fn interrupted() -> CellError {
    CellError::new(ErrorCode::Cancelled, "the exec was interrupted")
}

/// The boundary stopped the cell for using up `resource`.
pub fn exhausted(resource: Resource, limits: Option<&Resources>) -> CellError {
    match resource {
        Resource::Memory => CellError::new(
            ErrorCode::LimitMemory,
            match limits {
                Some(r) => format!(
                    "the cell ran out of memory: its limit is {}",
                    bytes_text(r.memory_bytes)
                ),
                None => "the cell ran out of memory".into(),
            },
        ),
        Resource::CpuTime => CellError::new(
            ErrorCode::LimitCpu,
            match limits {
                Some(r) if r.cpu_time_ms > 0 => format!(
                    "the cell used up its CPU time limit of {} ms",
                    r.cpu_time_ms
                ),
                _ => "the cell used up its CPU time".into(),
            },
        ),
        Resource::Stack => {
            CellError::new(ErrorCode::LimitCallDepth, abi::error::CALL_DEPTH_MESSAGE)
        }
        _ => CellError::new(ErrorCode::CellCrashed, "the cell used up a resource"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_limit() {
        let t = timed_out(Some(Duration::from_millis(10_000)));
        assert_eq!(t.code, ErrorCode::TimedOut);
        assert_eq!(
            t.message,
            "the cell ran past its wall-time limit of 10000 ms"
        );
        assert_eq!(timed_out(None).message, "the cell ran past its deadline");
        let r = Resources {
            memory_bytes: 64 << 20,
            cpu_time_ms: 1500,
            ..Resources::default()
        };
        let m = exhausted(Resource::Memory, Some(&r));
        assert_eq!(
            (m.code, m.message.as_str()),
            (
                ErrorCode::LimitMemory,
                "the cell ran out of memory: its limit is 64 MiB"
            )
        );
        let c = exhausted(Resource::CpuTime, Some(&r));
        assert_eq!(
            (c.code, c.message.as_str()),
            (
                ErrorCode::LimitCpu,
                "the cell used up its CPU time limit of 1500 ms"
            )
        );
        let unlimited = Resources {
            cpu_time_ms: 0,
            ..r
        };
        assert_eq!(
            exhausted(Resource::CpuTime, Some(&unlimited)).message,
            "the cell used up its CPU time"
        );
        assert_eq!(
            exhausted(Resource::Memory, None).message,
            "the cell ran out of memory"
        );
        assert_eq!(cancelled().code, ErrorCode::Cancelled);
    }
}
