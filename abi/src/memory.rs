//! What a value really holds in memory, estimated from its shape: heap blocks as the allocator
//! rounds them, B-tree nodes of maps, value slots. On the wire a one-entry map is four bytes, in
//! memory a B-tree leaf of ~640 bytes. The host's event queue counts this, and a decode's memory
//! ceiling (`wire::decode_body_within`) charges the same sizes as it builds a value.

use crate::{Map, Value};
use alloc::{collections::BTreeMap, string::String};
use core::mem::size_of;

/// Entries a B-tree node holds at most (`std`'s B = 6, capacity 2B - 1).
pub const NODE_CAPACITY: usize = 11;
/// Entries a B-tree leaf holds at least once maps are built in key order (as decoding does):
/// splits leave the left node with B - 1 = 5 entries.
pub const NODE_FILL: usize = 5;
/// Bookkeeping in every node besides its keys and values: parent pointer, index and length.
pub const NODE_HEADER: usize = 16;
/// Edge pointers an internal node adds to a leaf's layout.
pub const NODE_EDGES: usize = (NODE_CAPACITY + 1) * size_of::<usize>();

/// Bytes the allocator really sets aside for a request of `n` bytes (glibc malloc: an 8-byte
/// header, 16-byte granules, 32 bytes at least). Zero for no allocation.
pub const fn heap_block(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let chunk = (n + 8).div_ceil(16) * 16;
    if chunk < 32 { 32 } else { chunk }
}

/// Heap bytes of a B-tree holding `len` entries of `entry` bytes (key + value), built in order.
pub fn btree(len: usize, entry: usize) -> usize {
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

/// Bytes one map entry takes in a B-tree node: its key and its value slot.
pub const MAP_ENTRY: usize = size_of::<String>() + size_of::<Value>();
/// Bytes one metric tag takes in a B-tree node: its key and its value.
pub const TAG_ENTRY: usize = 2 * size_of::<String>();

/// Heap bytes a map owns: its nodes, keys and values.
pub fn map_heap(map: &Map) -> usize {
    btree(map.len(), MAP_ENTRY)
        + map
            .iter()
            .map(|(k, v)| string(k, k.capacity()) + value_heap(v))
            .sum::<usize>()
}

/// Heap bytes a metric's tags own.
pub fn tags_heap(tags: &BTreeMap<String, String>) -> usize {
    btree(tags.len(), TAG_ENTRY)
        + tags
            .iter()
            .map(|(k, v)| string(k, k.capacity()) + string(v, v.capacity()))
            .sum::<usize>()
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
    fn deep_trees_count_every_level() {
        let leaf = heap_block(NODE_HEADER + NODE_CAPACITY * 8);
        let internal = heap_block(NODE_HEADER + NODE_CAPACITY * 8 + NODE_EDGES);
        // 5 * 6 * 6 = 180 entries: 36 leaves, 6 internal nodes, 1 root.
        assert_eq!(btree(180, 8), 36 * leaf + 7 * internal);
        // 181: 37 leaves, then 7, 2 and 1 internal nodes.
        assert_eq!(btree(181, 8), 37 * leaf + 10 * internal);
    }
}
