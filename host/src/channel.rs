//! Bounds on the channel between a cell and its host.

use abi::wire::DEFAULT_MAX_FRAME_LEN;
use serde::Deserialize;

/// Bounds on the channel between a cell and the host (a policy's `[channel]` table).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Channel {
    /// Largest frame in either direction, checked before allocation.
    pub max_frame_bytes: u32,
    /// Events (posts, logs, metrics) waiting for `recv`; a cell that floods past it is killed.
    pub max_queued_events: usize,
    /// Memory the events waiting for `recv` hold, as the host estimates it from their shape
    /// (heap blocks, B-tree nodes, value slots: `cell_host::event_bytes`), not their encoded
    /// size. The queue never holds more than about this much (the estimate stays within 2x).
    pub max_queued_bytes: usize,
    /// Memory one guest frame may take once decoded, estimated like `max_queued_bytes` and
    /// charged while a byte-stream pipe decodes it, before each allocation (a 1 MiB frame could
    /// otherwise take ~171 MiB). Past it the cell is stopped with `limit_value`.
    pub max_frame_memory: usize,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            max_frame_bytes: DEFAULT_MAX_FRAME_LEN,
            max_queued_events: 10_000,
            max_queued_bytes: 16 << 20,
            max_frame_memory: 64 << 20,
        }
    }
}
