//! What an event really holds in the host's memory, estimated from its shape.
//!
//! The queue's byte bound counts this, not the encoded size: on the wire a one-entry map is four
//! bytes, in memory it is a B-tree leaf of ~640 bytes; a one-byte string is three bytes on the
//! wire and a 32-byte value slot plus a heap block in memory. Counting encoded bytes let a cell
//! make the host hold ~30x the bound. The estimate follows the standard library's layouts and
//! the allocator's rounding, so it stays within a small factor of the truth (the tests measure
//! it with a counting allocator: the queue never holds more than twice its bound).

use crate::event::Event;
use abi::{Map, Value};
use std::collections::BTreeMap;
use std::mem::size_of;

/// Entries a B-tree node holds at most (`std`'s B = 6, capacity 2B - 1).
const NODE_CAPACITY: usize = 11;
/// Entries a B-tree leaf holds at least once maps are built in key order (as decoding does):
/// splits leave the left node with B - 1 = 5 entries.
const NODE_FILL: usize = 5;
/// Bookkeeping in every node besides its keys and values: parent pointer, index and length.
const NODE_HEADER: usize = 16;
/// Edge pointers an internal node adds to a leaf's layout.
const NODE_EDGES: usize = (NODE_CAPACITY + 1) * size_of::<usize>();

/// Bytes the allocator really sets aside for a request of `n` bytes (glibc malloc: an 8-byte
/// header, 16-byte granules, 32 bytes at least). Zero for no allocation.
pub(crate) const fn heap_block(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let chunk = (n + 8).div_ceil(16) * 16;
    if chunk < 32 { 32 } else { chunk }
}

/// Heap bytes of a B-tree holding `len` entries of `entry` bytes (key + value), built in order.
fn btree(len: usize, entry: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let leaf = heap_block(NODE_HEADER + NODE_CAPACITY * entry);
    let internal = heap_block(NODE_HEADER + NODE_CAPACITY * entry + NODE_EDGES);
    let leaves = len.div_ceil(NODE_FILL);
    // Each internal node has at least B = 6 children.
    let mut internals = 0;
    let mut level = leaves;
    while level > 1 {
        level = level.div_ceil(NODE_FILL + 1);
        internals += level;
    }
    leaves * leaf + internals * internal
}

fn string(s: &str, capacity: usize) -> usize {
    debug_assert!(capacity >= s.len());
    heap_block(capacity)
}

/// Heap bytes a value owns (its own slot is counted by whoever holds it).
pub fn value_heap(v: &Value) -> usize {
    match v {
        Value::Unit | Value::Bool(_) | Value::Int(_) | Value::Float(_) => 0,
        Value::Str(s) => string(s, s.capacity()),
        Value::Bytes(b) => heap_block(b.capacity()),
        Value::List(items) => {
            heap_block(items.capacity() * size_of::<Value>())
                + items.iter().map(value_heap).sum::<usize>()
        }
        Value::Map(map) => map_heap(map),
    }
}

fn map_heap(map: &Map) -> usize {
    btree(map.len(), size_of::<String>() + size_of::<Value>())
        + map
            .iter()
            .map(|(k, v)| string(k, k.capacity()) + value_heap(v))
            .sum::<usize>()
}

fn tags_heap(tags: &BTreeMap<String, String>) -> usize {
    btree(tags.len(), 2 * size_of::<String>())
        + tags
            .iter()
            .map(|(k, v)| string(k, k.capacity()) + string(v, v.capacity()))
            .sum::<usize>()
}

/// Bytes an event holds while it waits in the queue: its slot in the queue and everything it
/// owns on the heap.
pub fn event_bytes(event: &Event) -> usize {
    size_of::<Event>()
        + match event {
            Event::Post(v) => value_heap(v),
            Event::Log {
                message, fields, ..
            } => string(message, message.capacity()) + map_heap(fields),
            Event::Metric { name, tags, .. } => string(name, name.capacity()) + tags_heap(tags),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_rounding() {
        assert_eq!(heap_block(0), 0);
        assert_eq!(heap_block(1), 32);
        assert_eq!(heap_block(24), 32);
        assert_eq!(heap_block(25), 48);
        assert_eq!(heap_block(40), 48);
        assert_eq!(heap_block(41), 64);
    }

    #[test]
    fn nodes_are_counted_per_fill() {
        let leaf = heap_block(NODE_HEADER + NODE_CAPACITY * 8);
        let internal = heap_block(NODE_HEADER + NODE_CAPACITY * 8 + NODE_EDGES);
        assert_eq!(btree(0, 8), 0);
        assert_eq!(btree(1, 8), leaf);
        assert_eq!(btree(5, 8), leaf);
        assert_eq!(btree(6, 8), 2 * leaf + internal);
        // 36 entries: 8 leaves, 2 internal nodes, 1 root.
        assert_eq!(btree(36, 8), 8 * leaf + 3 * internal);
    }

    #[test]
    fn every_event_kind_counts_its_parts() {
        use abi::Level;
        let slot = size_of::<Event>();
        let entry = size_of::<String>() + size_of::<Value>();
        let map: Map = [("key".to_string(), Value::Str("v".repeat(40)))]
            .into_iter()
            .collect();
        let map_bytes = btree(1, entry) + heap_block(3) + heap_block(40);
        assert_eq!(value_heap(&Value::Map(map.clone())), map_bytes);
        assert_eq!(
            event_bytes(&Event::Post(Value::Map(map.clone()))),
            slot + map_bytes
        );
        let log = Event::Log {
            level: Level::Info,
            message: "m".repeat(100),
            fields: map,
        };
        assert_eq!(event_bytes(&log), slot + heap_block(100) + map_bytes);
        let tags: BTreeMap<String, String> =
            (0..7).map(|i| (format!("k{i}"), "v".repeat(30))).collect();
        let tags_bytes = btree(7, 2 * size_of::<String>()) + 7 * (heap_block(2) + heap_block(30));
        let metric = Event::Metric {
            name: "n".repeat(50),
            value: 1.0,
            tags,
        };
        assert_eq!(event_bytes(&metric), slot + heap_block(50) + tags_bytes);
        // Nested values count all the way down; spare capacity counts too.
        let mut list = Vec::with_capacity(10);
        list.push(Value::List(vec![Value::Bytes(vec![1; 50])]));
        let inner = heap_block(size_of::<Value>()) + heap_block(50);
        assert_eq!(
            value_heap(&Value::List(list)),
            heap_block(10 * size_of::<Value>()) + inner
        );
        let mut s = String::with_capacity(64);
        s.push('x');
        assert_eq!(value_heap(&Value::Str(s)), heap_block(64));
        for scalar in [Value::Unit, Value::Bool(true), Value::Float(1.0)] {
            assert_eq!(value_heap(&scalar), 0);
        }
    }

    #[test]
    fn deep_trees_count_every_level() {
        let leaf = heap_block(NODE_HEADER + NODE_CAPACITY * 8);
        let internal = heap_block(NODE_HEADER + NODE_CAPACITY * 8 + NODE_EDGES);
        // 5 * 6 * 6 = 180 entries: 36 leaves, 6 internal nodes, 1 root.
        assert_eq!(btree(180, 8), 36 * leaf + 7 * internal);
        // 181: 37 leaves, then 7, 2 and 1 internal nodes.
        assert_eq!(btree(181, 8), 37 * leaf + 10 * internal);
    }

    #[test]
    fn small_values_are_far_larger_in_memory_than_on_the_wire() {
        let one_entry = Value::Map([(String::new(), Value::Unit)].into_iter().collect());
        let held = size_of::<Value>() + value_heap(&one_entry);
        let wire = abi::wire::encoded_len(&one_entry).unwrap();
        assert!(held > 100 * wire, "{held} vs {wire}");
        let list = Value::List(vec![Value::Str("a".into()); 4]);
        assert_eq!(
            value_heap(&list),
            heap_block(4 * size_of::<Value>()) + 4 * heap_block(1)
        );
        assert_eq!(value_heap(&Value::Bytes(vec![0; 100])), heap_block(100));
        assert_eq!(value_heap(&Value::Int(1)), 0);
    }
}
