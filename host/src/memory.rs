//! What an event really holds in the host's memory, estimated from its shape.
//!
//! The queue's byte bound counts this, not the encoded size: on the wire a one-entry map is four
//! bytes, in memory it is a B-tree leaf of ~640 bytes; a one-byte string is three bytes on the
//! wire and a 32-byte value slot plus a heap block in memory. Counting encoded bytes let a cell
//! make the host hold ~30x the bound. The estimate follows the standard library's layouts and
//! the allocator's rounding, so it stays within a small factor of the truth (the tests measure
//! it with a counting allocator: the queue never holds more than twice its bound).

use crate::event::Event;
use abi::GuestFrame;
use abi::memory::{heap_block, map_heap, tags_heap, value_heap};
use std::mem::size_of;

fn string(s: &String) -> usize {
    heap_block(s.capacity())
}

/// Bytes an event holds while it waits in the queue: its slot in the queue and everything it
/// owns on the heap.
pub fn event_bytes(event: &Event) -> usize {
    size_of::<Event>()
        + match event {
            Event::Post(v) => value_heap(v),
            Event::Log {
                message, fields, ..
            } => string(message) + map_heap(fields),
            Event::Metric { name, tags, .. } => string(name) + tags_heap(tags),
        }
}

/// Heap bytes the values of a guest frame hold: what `Channel::max_frame_memory` bounds. The
/// frame's own strings (names, messages) are at most its encoded size and not counted.
pub(crate) fn frame_bytes(frame: &GuestFrame) -> usize {
    match frame {
        GuestFrame::Post(v)
        | GuestFrame::Done { result: Ok(v), .. }
        | GuestFrame::Request { payload: v, .. } => value_heap(v),
        GuestFrame::Log { fields, .. } => map_heap(fields),
        GuestFrame::Metric { tags, .. } => tags_heap(tags),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::memory::{MAP_ENTRY, TAG_ENTRY, btree};
    use abi::{Map, Value};
    use std::collections::BTreeMap;

    #[test]
    fn every_event_kind_counts_its_parts() {
        use abi::Level;
        let slot = size_of::<Event>();
        let entry = MAP_ENTRY;
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
        let tags_bytes = btree(7, TAG_ENTRY) + 7 * (heap_block(2) + heap_block(30));
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
