//! The value model: what crosses the boundary as an argument, a result or an event payload.
//!
//! Decoding is depth-limited (a hostile frame of nested one-element lists cannot overflow the
//! host's stack) and never pre-allocates from a length the peer claims.

use alloc::{collections::BTreeMap, string::String, vec::Vec};
use core::fmt;
use serde::{Serialize, Serializer};

/// Maps are keyed by strings and ordered, so encodings are deterministic.
pub type Map = BTreeMap<String, Value>;

/// Deepest nesting of lists and maps a value may have (the top level counts as depth 1).
pub const MAX_VALUE_DEPTH: usize = 64;

/// A value of the cell ABI. Wire discriminants are the variant order (append-only).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// No value: what a script without a result returns.
    #[default]
    Unit,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer (the engine's `INT`).
    Int(i64),
    /// A 64-bit float (the engine's `FLOAT`).
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// A byte string (the engine's BLOB).
    Bytes(Vec<u8>),
    /// An ordered list.
    List(Vec<Value>),
    /// A string-keyed map, ordered by key.
    Map(Map),
}

/// Why a value does not fit the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueLimitError {
    /// Nested deeper than `max` levels.
    TooDeep {
        /// The depth limit.
        max: usize,
    },
    /// A string of `len` bytes, over `max`.
    StringTooLong {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list (or byte string) of `len` elements, over `max`.
    ListTooLong {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A map of `len` entries, over `max`.
    MapTooLarge {
        /// Entry count found.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for ValueLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueLimitError::TooDeep { max } => {
                write!(f, "a value nested deeper than {max} levels")
            }
            ValueLimitError::StringTooLong { len, max } => {
                write!(f, "a string of {len} bytes, over the limit of {max}")
            }
            ValueLimitError::ListTooLong { len, max } => {
                write!(f, "a list of {len} elements, over the limit of {max}")
            }
            ValueLimitError::MapTooLarge { len, max } => {
                write!(f, "a map of {len} entries, over the limit of {max}")
            }
        }
    }
}

/// Largest string, list and map a value may hold (0: unlimited, as in the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lengths {
    /// Longest string, in bytes.
    pub string: usize,
    /// Most elements in a list, or bytes in a byte string.
    pub list: usize,
    /// Most entries in a map.
    pub map: usize,
}

impl Lengths {
    /// The lengths an engine with `limits` can hold: what may cross into or out of it.
    pub fn of(limits: &crate::EngineLimits) -> Self {
        Lengths {
            string: limits.max_string_len as usize,
            list: limits.max_array_len as usize,
            map: limits.max_map_len as usize,
        }
    }
}

fn over(limit: usize, len: usize) -> bool {
    limit != 0 && len > limit
}

impl Value {
    /// The name of the variant, for error messages.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Value::Unit => "unit",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// Checks the nesting depth without recursing past the limit.
    pub fn check_depth(&self) -> Result<(), ValueLimitError> {
        fn walk(v: &Value, depth: usize) -> bool {
            if depth > MAX_VALUE_DEPTH {
                return false;
            }
            match v {
                Value::List(items) => items.iter().all(|i| walk(i, depth + 1)),
                Value::Map(map) => map.values().all(|i| walk(i, depth + 1)),
                _ => true,
            }
        }
        if walk(self, 1) {
            Ok(())
        } else {
            Err(ValueLimitError::TooDeep {
                max: MAX_VALUE_DEPTH,
            })
        }
    }

    /// Checks the nesting depth and, in the same walk, every string, list and map against
    /// `lengths` (map keys are not counted as strings; byte strings are not lists). Stops at
    /// the first excess, never recursing past the depth limit.
    pub fn check_limits(&self, lengths: &Lengths) -> Result<(), ValueLimitError> {
        fn walk(v: &Value, depth: usize, l: &Lengths) -> Result<(), ValueLimitError> {
            if depth > MAX_VALUE_DEPTH {
                return Err(ValueLimitError::TooDeep {
                    max: MAX_VALUE_DEPTH,
                });
            }
            match v {
                Value::Str(s) if over(l.string, s.len()) => Err(ValueLimitError::StringTooLong {
                    len: s.len(),
                    max: l.string,
                }),
                Value::List(items) => {
                    if over(l.list, items.len()) {
                        return Err(ValueLimitError::ListTooLong {
                            len: items.len(),
                            max: l.list,
                        });
                    }
                    items.iter().try_for_each(|i| walk(i, depth + 1, l))
                }
                Value::Map(map) => {
                    if over(l.map, map.len()) {
                        return Err(ValueLimitError::MapTooLarge {
                            len: map.len(),
                            max: l.map,
                        });
                    }
                    map.values().try_for_each(|i| walk(i, depth + 1, l))
                }
                _ => Ok(()),
            }
        }
        walk(self, 1, lengths)
    }

    /// Bit-exact equality (NaN equals NaN with the same bits; 0.0 and -0.0 differ). This is the
    /// equality the wire preserves.
    pub fn bit_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.bit_eq(y))
            }
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.bit_eq(vb))
            }
            _ => self == other,
        }
    }
}

macro_rules! from_impls {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(v.into()) }
        }
    )*};
}
from_impls!(bool => Bool, i64 => Int, i32 => Int, f64 => Float, String => Str, &str => Str, Vec<u8> => Bytes, Vec<Value> => List, Map => Map);

impl From<()> for Value {
    fn from(_: ()) -> Self {
        Value::Unit
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Unit => s.serialize_unit_variant("Value", 0, "Unit"),
            Value::Bool(b) => s.serialize_newtype_variant("Value", 1, "Bool", b),
            Value::Int(i) => s.serialize_newtype_variant("Value", 2, "Int", i),
            Value::Float(x) => s.serialize_newtype_variant("Value", 3, "Float", x),
            Value::Str(t) => s.serialize_newtype_variant("Value", 4, "Str", t),
            Value::Bytes(b) => s.serialize_newtype_variant("Value", 5, "Bytes", &BytesRef(b)),
            Value::List(l) => s.serialize_newtype_variant("Value", 6, "List", l),
            Value::Map(m) => s.serialize_newtype_variant("Value", 7, "Map", m),
        }
    }
}

struct BytesRef<'a>(&'a [u8]);
impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn nested(depth: usize) -> Value {
        let mut v = Value::Unit;
        for _ in 1..depth {
            v = Value::List(vec![v]);
        }
        v
    }

    #[test]
    fn depth_limit_is_exact() {
        assert!(nested(MAX_VALUE_DEPTH).check_depth().is_ok());
        assert!(nested(MAX_VALUE_DEPTH + 1).check_depth().is_err());
        let ok = postcard::to_allocvec(&nested(MAX_VALUE_DEPTH)).unwrap();
        assert_eq!(
            postcard::from_bytes::<Value>(&ok).unwrap(),
            nested(MAX_VALUE_DEPTH)
        );
        let deep = postcard::to_allocvec(&nested(MAX_VALUE_DEPTH + 1)).unwrap();
        assert!(postcard::from_bytes::<Value>(&deep).is_err());
    }

    #[test]
    fn length_limits_are_exact_and_zero_is_unlimited() {
        let l = Lengths {
            string: 3,
            list: 2,
            map: 1,
        };
        let s = |n: usize| Value::Str("x".repeat(n));
        assert_eq!(s(3).check_limits(&l), Ok(()));
        assert_eq!(
            s(4).check_limits(&l),
            Err(ValueLimitError::StringTooLong { len: 4, max: 3 })
        );
        let list = |n: usize| Value::List(vec![Value::Unit; n]);
        assert_eq!(list(2).check_limits(&l), Ok(()));
        assert_eq!(
            list(3).check_limits(&l),
            Err(ValueLimitError::ListTooLong { len: 3, max: 2 })
        );
        let map = |n: usize| {
            Value::Map(
                (0..n)
                    .map(|i| (alloc::format!("{i}"), Value::Unit))
                    .collect(),
            )
        };
        assert_eq!(map(1).check_limits(&l), Ok(()));
        assert_eq!(
            map(2).check_limits(&l),
            Err(ValueLimitError::MapTooLarge { len: 2, max: 1 })
        );
        // Nested excess is found; bytes are not lists.
        let inner = Value::Map(
            [("k".into(), Value::List(vec![s(4)]))]
                .into_iter()
                .collect(),
        );
        assert!(inner.check_limits(&l).is_err());
        assert_eq!(Value::Bytes(vec![0; 10]).check_limits(&l), Ok(()));
        let unlimited = Lengths::default();
        assert_eq!(list(1000).check_limits(&unlimited), Ok(()));
        assert_eq!(s(1000).check_limits(&unlimited), Ok(()));
        assert_eq!(map(10).check_limits(&unlimited), Ok(()));
        // Depth is checked in the same walk, exactly at the limit.
        assert_eq!(nested_depth_ok(), Ok(()));
        assert_eq!(
            nested(MAX_VALUE_DEPTH + 1).check_limits(&unlimited),
            Err(ValueLimitError::TooDeep {
                max: MAX_VALUE_DEPTH
            })
        );
        let mut deep_map = Value::Unit;
        for _ in 1..=MAX_VALUE_DEPTH {
            deep_map = Value::Map([(String::new(), deep_map)].into_iter().collect());
        }
        assert!(deep_map.check_limits(&unlimited).is_err());
        assert!(deep_map.check_depth().is_err());
        let limits = crate::EngineLimits::default();
        assert_eq!(
            Lengths::of(&limits),
            Lengths {
                string: limits.max_string_len as usize,
                list: limits.max_array_len as usize,
                map: limits.max_map_len as usize
            }
        );
    }

    #[test]
    fn limit_errors_say_what_and_how_much() {
        use alloc::string::ToString;
        let cases = [
            (
                ValueLimitError::TooDeep { max: 64 },
                "a value nested deeper than 64 levels",
            ),
            (
                ValueLimitError::StringTooLong { len: 5, max: 4 },
                "a string of 5 bytes, over the limit of 4",
            ),
            (
                ValueLimitError::ListTooLong { len: 3, max: 2 },
                "a list of 3 elements, over the limit of 2",
            ),
            (
                ValueLimitError::MapTooLarge { len: 2, max: 1 },
                "a map of 2 entries, over the limit of 1",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    fn nested_depth_ok() -> Result<(), ValueLimitError> {
        nested(MAX_VALUE_DEPTH).check_limits(&Lengths::default())
    }

    #[test]
    fn hostile_nesting_does_not_overflow_the_stack() {
        // One million "List of length 1" headers: would recurse a million times without the limit.
        let mut bytes = Vec::new();
        for _ in 0..1_000_000 {
            bytes.extend_from_slice(&[6, 1]);
        }
        assert!(postcard::from_bytes::<Value>(&bytes).is_err());
    }

    #[test]
    fn claimed_lengths_are_not_preallocated() {
        // A list claiming u32::MAX elements followed by nothing.
        let bytes = [6, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<Value>(&bytes).is_err());
    }

    #[test]
    fn unsorted_map_keys_are_rejected() {
        // Map with 2 entries "b" then "a".
        let bytes = [7, 2, 1, b'b', 0, 1, b'a', 0];
        assert!(postcard::from_bytes::<Value>(&bytes).is_err());
    }

    #[test]
    fn duplicate_map_keys_are_rejected() {
        // Map with 2 entries "a" then "a"; the sorted pair decodes.
        assert!(postcard::from_bytes::<Value>(&[7, 2, 1, b'a', 0, 1, b'a', 0]).is_err());
        let ok = postcard::from_bytes::<Value>(&[7, 2, 1, b'a', 0, 1, b'b', 2, 2]).unwrap();
        let expected: Map = [("a".into(), Value::Unit), ("b".into(), Value::Int(1))]
            .into_iter()
            .collect();
        assert_eq!(ok, Value::Map(expected));
    }

    #[test]
    fn every_tag_decodes_to_its_variant() {
        let cases: [(&[u8], Value); 8] = [
            (&[0], Value::Unit),
            (&[1, 1], Value::Bool(true)),
            (&[2, 3], Value::Int(-2)),
            (&[3, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f], Value::Float(1.5)),
            (&[4, 1, b'x'], Value::Str("x".into())),
            (&[5, 2, 0, 255], Value::Bytes(vec![0, 255])),
            (&[6, 1, 0], Value::List(vec![Value::Unit])),
            (&[7, 0], Value::Map(Map::new())),
        ];
        for (bytes, v) in cases {
            assert_eq!(postcard::from_bytes::<Value>(bytes).unwrap(), v);
            assert_eq!(postcard::to_allocvec(&v).unwrap(), bytes);
        }
        assert!(postcard::from_bytes::<Value>(&[8]).is_err());
    }

    #[test]
    fn type_names_and_conversions() {
        let all = [
            (Value::from(()), "unit"),
            (Value::from(true), "bool"),
            (Value::from(1i64), "int"),
            (Value::from(1i32), "int"),
            (Value::from(1.0), "float"),
            (Value::from("s"), "string"),
            (Value::from(String::from("s")), "string"),
            (Value::from(vec![1u8]), "bytes"),
            (Value::from(vec![Value::Unit]), "list"),
            (Value::from(Map::new()), "map"),
        ];
        for (v, name) in all {
            assert_eq!(v.type_name(), name);
        }
        assert_eq!(Value::from(7i32), Value::Int(7));
    }

    #[test]
    fn bit_eq_compares_containers_element_by_element() {
        let l = |v: Vec<Value>| Value::List(v);
        assert!(l(vec![Value::Float(f64::NAN)]).bit_eq(&l(vec![Value::Float(f64::NAN)])));
        assert!(!l(vec![Value::Int(1)]).bit_eq(&l(vec![Value::Int(2)])));
        assert!(!l(vec![Value::Int(1)]).bit_eq(&l(vec![Value::Int(1), Value::Int(1)])));
        let m = |k: &str, v: Value| Value::Map([(String::from(k), v)].into_iter().collect());
        assert!(m("a", Value::Float(-0.0)).bit_eq(&m("a", Value::Float(-0.0))));
        assert!(!m("a", Value::Float(-0.0)).bit_eq(&m("a", Value::Float(0.0))));
        assert!(!m("a", Value::Unit).bit_eq(&m("b", Value::Unit)));
        assert!(!m("a", Value::Unit).bit_eq(&Value::Map(Map::new())));
        assert!(!Value::Int(1).bit_eq(&Value::Bool(true)));
    }

    #[test]
    fn bit_eq_treats_nan_as_itself() {
        let nan = Value::Float(f64::NAN);
        assert!(nan.bit_eq(&nan.clone()));
        assert!(!Value::Float(0.0).bit_eq(&Value::Float(-0.0)));
    }
}
