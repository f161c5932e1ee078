//! `random`: bytes and integers from the operating system's generator (`getrandom`).

use crate::capability::{Call, Capability, Payload};
use crate::error::CapabilityError;
use abi::Value;

/// Most bytes one `bytes` request returns.
pub const MAX_RANDOM_BYTES: i64 = 65_536;

/// `bytes {len}` → Bytes; `int {min?, max?}` → Int uniform in `min..=max` (inclusive; defaults
/// to the whole i64 range).
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

fn os_fill(buf: &mut [u8]) -> Result<(), CapabilityError> {
    getrandom::fill(buf)
        .map_err(|e| CapabilityError::failed(format!("the OS random generator failed: {e}")))
}

fn os_u64() -> Result<u64, CapabilityError> {
    let mut b = [0u8; 8];
    os_fill(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A uniform integer in `min..=max`, without modulo bias.
pub(crate) fn uniform(
    min: i64,
    max: i64,
    mut next: impl FnMut() -> Result<u64, CapabilityError>,
) -> Result<i64, CapabilityError> {
    // Number of values in the range, modulo 2^64 (0 means all 2^64 values).
    let span = (max as u64).wrapping_sub(min as u64).wrapping_add(1);
    if span == 0 {
        return Ok(next()? as i64);
    }
    // 2^64 mod span: draws below it would favour small results; redraw them.
    let threshold = span.wrapping_neg() % span;
    loop {
        let r = next()?;
        if r >= threshold {
            return Ok((min as u64).wrapping_add(r % span) as i64);
        }
    }
}

impl Capability for Random {
    fn name(&self) -> &str {
        "random"
    }

    fn actions(&self) -> &[&str] {
        &["bytes", "int"]
    }

    fn is_quick(&self) -> bool {
        true
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        let p = Payload::new(&call.payload, "random")?;
        match call.action.as_str() {
            "bytes" => {
                p.only(&["len"])?;
                let len = p.int("len")?;
                if !(0..=MAX_RANDOM_BYTES).contains(&len) {
                    return Err(CapabilityError::invalid(format!(
                        "random.bytes: `len` must be between 0 and {MAX_RANDOM_BYTES}, got {len}"
                    )));
                }
                let mut buf = vec![0u8; len as usize];
                os_fill(&mut buf)?;
                Ok(Value::Bytes(buf))
            }
            _ => {
                p.only(&["min", "max"])?;
                let min = p.opt_int("min")?.unwrap_or(i64::MIN);
                let max = p.opt_int("max")?.unwrap_or(i64::MAX);
                if min > max {
                    return Err(CapabilityError::invalid(format!(
                        "random.int: `min` ({min}) is greater than `max` ({max})"
                    )));
                }
                uniform(min, max, os_u64).map(Value::Int)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::uniform;

    #[test]
    fn uniform_stays_in_range_and_rejects_biased_draws() {
        // span 3: threshold = 2^64 mod 3 = 1, so a draw of 0 is redrawn.
        let mut draws = vec![0u64, 0, 5].into_iter();
        let v = uniform(10, 12, || Ok(draws.next().unwrap())).unwrap();
        assert_eq!(v, 10 + (5 % 3) as i64);
        assert_eq!(uniform(i64::MIN, i64::MAX, || Ok(u64::MAX)).unwrap(), -1);
        assert_eq!(uniform(-1, -1, || Ok(12345)).unwrap(), -1);
        // span 5: threshold = 2^64 mod 5 = 1; every accepted draw maps into the range.
        for r in [1u64, 2, 3, 4, 5, u64::MAX] {
            let v = uniform(-2, 2, || Ok(r)).unwrap();
            assert!((-2..=2).contains(&v));
        }
    }
}
