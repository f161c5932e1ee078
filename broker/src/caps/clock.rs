//! `clock`: wall time and monotonic time.

use crate::capability::{Call, Capability, Payload};
use crate::error::CapabilityError;
use abi::Value;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `wall` → Int nanoseconds since the Unix epoch; `monotonic` → Int nanoseconds since the
/// broker started (never decreases).
#[derive(Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose `monotonic` counts from now.
    pub fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Capability for Clock {
    fn name(&self) -> &str {
        "clock"
    }

    fn actions(&self) -> &[&str] {
        &["wall", "monotonic"]
    }

    fn is_quick(&self) -> bool {
        true
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        Payload::new(&call.payload, "clock")?.only(&[])?;
        let nanos = match call.action.as_str() {
            "wall" => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| {
                    CapabilityError::failed(format!("the wall clock is before 1970: {e}"))
                })?
                .as_nanos(),
            _ => self.epoch.elapsed().as_nanos(),
        };
        i64::try_from(nanos)
            .map(Value::Int)
            .map_err(|_| CapabilityError::failed("time does not fit in 64 bits"))
    }
}
