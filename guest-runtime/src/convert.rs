//! Lossless conversions between ABI values and Rhai values. They never panic: a Rhai value with
//! no ABI counterpart (a function pointer, a custom type) or nested too deeply is an error.

use abi::value::MAX_VALUE_DEPTH;
use abi::wire::ABSOLUTE_MAX_FRAME_LEN;
use abi::{CellError, EngineLimits, ErrorCode, Map, Value};
use alloc::{format, string::ToString, vec::Vec};
use core::cell::Cell;
use rhai::Dynamic;

/// Converts an ABI value into a Rhai value. ABI values are depth-checked when decoded, and the
/// recursion here follows that bound.
pub fn to_dynamic(value: Value) -> Dynamic {
    match value {
        Value::Unit => Dynamic::UNIT,
        Value::Bool(b) => b.into(),
        Value::Int(i) => Dynamic::from_int(i),
        Value::Float(x) => Dynamic::from_float(x),
        Value::Str(s) => s.into(),
        Value::Bytes(b) => Dynamic::from_blob(b),
        Value::List(items) => Dynamic::from_array(items.into_iter().map(to_dynamic).collect()),
        Value::Map(map) => Dynamic::from_map(
            map.into_iter()
                .map(|(k, v)| (k.into(), to_dynamic(v)))
                .collect::<rhai::Map>(),
        ),
    }
}

/// Converts a Rhai value into an ABI value.
pub fn from_dynamic(value: Dynamic) -> Result<Value, CellError> {
    convert(value, 1, &Sizes::UNLIMITED, &Budget::new())
}

/// Converts a Rhai value into an ABI value, enforcing the engine's size limits on the way out
/// (Rhai checks some growth lazily, e.g. map index assignment; the boundary checks it always).
pub fn from_dynamic_within(value: Dynamic, limits: &EngineLimits) -> Result<Value, CellError> {
    let sizes = Sizes {
        string: limits.max_string_len as usize,
        array: limits.max_array_len as usize,
        map: limits.max_map_len as usize,
    };
    convert(value, 1, &sizes, &Budget::new())
}

/// What a value may still take of the largest frame any host accepts, counted as it is converted
/// and before a string is copied out of the engine. Strings in the engine are shared, so an
/// array of 100 arrays each holding one 1 MiB string 100 times is 10 GB as ABI values from about
/// 1 MiB of engine memory: copied out whole, it took the host's memory (subinterp) or the cell's.
/// Each value counts at least the one byte of its tag in the encoding, each string, BLOB and map
/// key its bytes, so a value over the budget could never be sent.
pub(crate) struct Budget(Cell<usize>);

impl Budget {
    pub(crate) fn new() -> Budget {
        Budget(Cell::new(ABSOLUTE_MAX_FRAME_LEN as usize))
    }

    /// The bytes still free.
    pub(crate) fn left(&self) -> usize {
        self.0.get()
    }

    pub(crate) fn take(&self, bytes: usize) -> Result<(), CellError> {
        match self.0.get().checked_sub(bytes) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(CellError::new(
                ErrorCode::LimitFrameSize,
                format!(
                    "the value takes over {ABSOLUTE_MAX_FRAME_LEN} bytes, more than any frame can carry across the cell boundary"
                ),
            )),
        }
    }
}

/// Largest string (bytes), array and map that may cross; 0 means unlimited, as in Rhai.
struct Sizes {
    string: usize,
    array: usize,
    map: usize,
}

impl Sizes {
    const UNLIMITED: Sizes = Sizes {
        string: 0,
        array: 0,
        map: 0,
    };

    fn check(limit: usize, len: usize, code: ErrorCode, what: &str) -> Result<(), CellError> {
        if limit != 0 && len > limit {
            return Err(CellError::new(
                code,
                format!("{what} of {len} exceeds the limit of {limit}"),
            ));
        }
        Ok(())
    }
}

fn convert(
    value: Dynamic,
    depth: usize,
    sizes: &Sizes,
    budget: &Budget,
) -> Result<Value, CellError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(CellError::new(
            ErrorCode::LimitValue,
            format!("value nested deeper than {MAX_VALUE_DEPTH} levels cannot cross the boundary"),
        ));
    }
    budget.take(1)?;
    // Values captured by closures are shared; read through to the value itself.
    let value = value.flatten();
    if value.is_unit() {
        return Ok(Value::Unit);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::Int(i));
    }
    if let Ok(x) = value.as_float() {
        return Ok(Value::Float(x));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::Str(c.to_string()));
    }
    if value.is_string() {
        // Measured before it is copied: the engine's copy may be shared by many values.
        let s = value.into_immutable_string().unwrap_or_default();
        Sizes::check(sizes.string, s.len(), ErrorCode::LimitStringSize, "string")?;
        budget.take(s.len())?;
        return Ok(Value::Str(s.into_owned()));
    }
    if value.is_blob() {
        let b = value.into_blob().unwrap_or_default();
        budget.take(b.len())?;
        return Ok(Value::Bytes(b));
    }
    if value.is_array() {
        let items = value.into_array().unwrap_or_default();
        Sizes::check(sizes.array, items.len(), ErrorCode::LimitArraySize, "array")?;
        return items
            .into_iter()
            .map(|v| convert(v, depth + 1, sizes, budget))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List);
    }
    if value.is_map() {
        let map = value.cast::<rhai::Map>();
        Sizes::check(sizes.map, map.len(), ErrorCode::LimitMapSize, "map")?;
        let mut out = Map::new();
        for (k, v) in map {
            budget.take(k.len())?;
            out.insert(k.to_string(), convert(v, depth + 1, sizes, budget)?);
        }
        return Ok(Value::Map(out));
    }
    if let Some(e) = value.read_lock::<crate::errors::HostError>() {
        // A caught error crosses as the map it reads as.
        let mut out = Map::new();
        out.insert("code".into(), Value::Int(e.0.code.as_u16().into()));
        out.insert("name".into(), Value::Str(e.0.code.name().into()));
        out.insert("message".into(), Value::Str(e.0.message.clone()));
        return Ok(Value::Map(out));
    }
    // Named as `type_of` names it in a script (`range`, `Fn`), not by its Rust type; a raw
    // engine knows those names, and this path is an error's only.
    let names = rhai::Engine::new_raw();
    Err(CellError::new(
        ErrorCode::InvalidArgument,
        format!(
            "a value of type `{}` cannot cross the cell boundary",
            names.map_type_name(value.type_name())
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn round_trip_every_variant() {
        let mut map = Map::new();
        map.insert("k".into(), Value::Bytes(vec![1, 2, 3]));
        let v = Value::List(vec![
            Value::Unit,
            Value::Bool(false),
            Value::Int(i64::MIN),
            Value::Float(f64::NAN),
            Value::Str("ü".into()),
            Value::Map(map),
        ]);
        assert!(from_dynamic(to_dynamic(v.clone())).unwrap().bit_eq(&v));
    }

    #[test]
    fn function_pointers_and_deep_values_are_errors() {
        let fp = Dynamic::from(rhai::FnPtr::new("f").unwrap());
        let err = from_dynamic(fp).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(
            err.message,
            "a value of type `Fn` cannot cross the cell boundary"
        );
        // A range reads as a script names it, not as a Rust type.
        let err = from_dynamic(Dynamic::from(0_i64..5)).unwrap_err();
        assert_eq!(
            err.message,
            "a value of type `range` cannot cross the cell boundary"
        );
        let mut d = Dynamic::UNIT;
        for _ in 0..=MAX_VALUE_DEPTH {
            d = Dynamic::from_array(vec![d]);
        }
        assert_eq!(from_dynamic(d).unwrap_err().code, ErrorCode::LimitValue);
    }

    #[test]
    fn a_value_sharing_one_string_many_times_is_refused_before_it_is_copied() {
        let s: rhai::ImmutableString = "x".repeat(1 << 20).into();
        let inner: rhai::Array = (0..100).map(|_| Dynamic::from(s.clone())).collect();
        let outer: rhai::Array = (0..100)
            .map(|_| Dynamic::from_array(inner.clone()))
            .collect();
        let err = from_dynamic(Dynamic::from_array(outer)).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitFrameSize);
        // The largest value a frame can carry still converts.
        let fits: rhai::Array = (0..15).map(|_| Dynamic::from(s.clone())).collect();
        assert!(from_dynamic(Dynamic::from_array(fits)).is_ok());
    }
}
