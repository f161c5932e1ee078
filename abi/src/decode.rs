//! Decoding values: depth-limited (a hostile frame of nested one-element lists cannot overflow
//! the receiver's stack), map keys strictly ordered, no pre-allocation from a length the peer
//! claims beyond [`MAX_PREALLOC`] slots, and every allocation charged to the decode's memory
//! ceiling before it is made (`budget`, `wire::decode_body_within`).

use crate::budget;
use crate::memory::{MAP_ENTRY, TAG_ENTRY, btree, heap_block};
use crate::value::{MAX_VALUE_DEPTH, Map, Value, ValueLimitError};
use alloc::{collections::BTreeMap, string::String, vec::Vec};
use core::fmt;
use core::mem::size_of;
use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Upper bound on elements reserved up front while decoding, whatever length the peer claims:
/// 64 open lists that lie about their counts reserve at most 64 x 64 value slots (128 KiB).
const MAX_PREALLOC: usize = 64;

const VARIANTS: &[&str] = &[
    "Unit", "Bool", "Int", "Float", "Str", "Bytes", "List", "Map",
];

/// The error of a decode that ran out of its memory ceiling (told apart by `budget::within`).
fn over_budget<E: de::Error>() -> E {
    E::custom("the value takes more memory than the decode may")
}

fn charge<E: de::Error>(bytes: usize) -> Result<(), E> {
    if budget::charge(bytes) {
        Ok(())
    } else {
        Err(over_budget())
    }
}

/// Charges a vector's first buffer or its next one before a push that grows it.
fn charge_growth<T, E: de::Error>(v: &Vec<T>) -> Result<(), E> {
    if v.len() == v.capacity() {
        // `Vec`'s growth: double, 4 elements at least for small ones.
        let next = (v.capacity() * 2).max(4);
        charge(heap_block(next * size_of::<T>()))?;
    }
    Ok(())
}

/// Charges the nodes a B-tree of `entry`-byte entries takes when it grows from `len` entries.
fn charge_entry<E: de::Error>(len: usize, entry: usize) -> Result<(), E> {
    charge(btree(len + 1, entry).saturating_sub(btree(len, entry)))
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueSeed { depth: 1 }.deserialize(d)
    }
}

/// A map field of a frame (a log's fields, a call's kwargs): decoded as a value's map is, at
/// the top level.
pub(crate) fn map_field<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
    MapSeed { depth: 0 }.deserialize(d)
}

/// A metric's tags: keys strictly ordered, every node and string charged.
pub(crate) fn tags_field<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_map(TagsSeed)
}

/// Deserializes one value at a known depth; nested values go through a deeper seed.
struct ValueSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > MAX_VALUE_DEPTH {
            return Err(de::Error::custom(ValueLimitError::TooDeep {
                max: MAX_VALUE_DEPTH,
            }));
        }
        d.deserialize_enum("Value", VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a cell value")
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, variant) = data.variant::<u32>()?;
        let depth = self.depth;
        Ok(match tag {
            0 => {
                variant.unit_variant()?;
                Value::Unit
            }
            1 => Value::Bool(variant.newtype_variant()?),
            2 => Value::Int(variant.newtype_variant()?),
            3 => Value::Float(variant.newtype_variant()?),
            4 => Value::Str(variant.newtype_variant_seed(StrSeed)?),
            5 => Value::Bytes(variant.newtype_variant_seed(BytesSeed)?),
            6 => Value::List(variant.newtype_variant_seed(ListSeed { depth })?),
            7 => Value::Map(variant.newtype_variant_seed(MapSeed { depth })?),
            other => {
                return Err(de::Error::invalid_value(
                    de::Unexpected::Unsigned(other.into()),
                    &"a value tag 0..=7",
                ));
            }
        })
    }
}

/// A string, charged before it is copied out of the body.
struct StrSeed;
impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_string(self)
    }
}
impl<'de> Visitor<'de> for StrSeed {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        charge(heap_block(v.len()))?;
        Ok(String::from(v))
    }
}

struct BytesSeed;
impl<'de> DeserializeSeed<'de> for BytesSeed {
    type Value = Vec<u8>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(self)
    }
}
impl<'de> Visitor<'de> for BytesSeed {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        charge(heap_block(v.len()))?;
        Ok(v.to_vec())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let reserve = seq.size_hint().unwrap_or(0).min(MAX_PREALLOC);
        charge(heap_block(reserve))?;
        let mut out = Vec::with_capacity(reserve);
        while let Some(b) = seq.next_element()? {
            charge_growth(&out)?;
            out.push(b);
        }
        Ok(out)
    }
}

struct ListSeed {
    depth: usize,
}
impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Vec<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Value>, D::Error> {
        d.deserialize_seq(self)
    }
}
impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        let reserve = seq.size_hint().unwrap_or(0).min(MAX_PREALLOC);
        charge(heap_block(reserve * size_of::<Value>()))?;
        let mut out = Vec::with_capacity(reserve);
        while let Some(v) = seq.next_element_seed(ValueSeed {
            depth: self.depth + 1,
        })? {
            charge_growth(&out)?;
            out.push(v);
        }
        Ok(out)
    }
}

/// Keys strictly increasing: a duplicate or out-of-order key can only come from a forged
/// encoder.
fn check_order<V, E: de::Error>(map: &BTreeMap<String, V>, key: &str) -> Result<(), E> {
    match map.last_key_value() {
        Some((last, _)) if last.as_str() >= key => {
            Err(de::Error::custom("map keys must be unique and sorted"))
        }
        _ => Ok(()),
    }
}

struct MapSeed {
    depth: usize,
}
impl<'de> DeserializeSeed<'de> for MapSeed {
    type Value = Map;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Map, D::Error> {
        d.deserialize_map(self)
    }
}
impl<'de> Visitor<'de> for MapSeed {
    type Value = Map;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from strings to values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Map, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(StrSeed)? {
            let value = map.next_value_seed(ValueSeed {
                depth: self.depth + 1,
            })?;
            check_order(&out, &key)?;
            charge_entry(out.len(), MAP_ENTRY)?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

struct TagsSeed;
impl<'de> Visitor<'de> for TagsSeed {
    type Value = BTreeMap<String, String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from strings to strings")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key_seed(StrSeed)? {
            let value = map.next_value_seed(StrSeed)?;
            check_order(&out, &key)?;
            charge_entry(out.len(), TAG_ENTRY)?;
            out.insert(key, value);
        }
        Ok(out)
    }
}
