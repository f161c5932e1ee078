//! The event queue is bounded by the memory it really holds, measured here with a counting
//! allocator: whatever shape a cell gives its events, the host holds at most about twice
//! `max_queued_bytes` for them.

mod common;

use abi::{GuestFrame, Level, Map, Value};
use cell_host::{Channel, DenyAll};
use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes the allocator really sets aside for live blocks (glibc rounding: 8-byte header,
/// 16-byte granules, 32 bytes at least).
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn block(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(block(layout.size()), Ordering::SeqCst);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(block(layout.size()), Ordering::SeqCst);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests in this file measure one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const BOUND: usize = 4 << 20;

/// Floods a cell with `event()` frames (one post per frame, as a guest sends them) until the
/// queue refuses one; returns the bytes the queue then holds, measured.
fn flood(event: fn() -> GuestFrame) -> isize {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let channel = Channel {
        max_queued_events: usize::MAX,
        max_queued_bytes: BOUND,
        ..Channel::default()
    };
    let cell = Cell::ready(
        channel,
        Arc::new(DenyAll),
        Box::new(|f, _| {
            Ok(match f {
                abi::HostFrame::Hello(_) => vec![ready()],
                // Frames are made one at a time as the host takes them, like a pipe decodes.
                _ => Vec::new(),
            })
        }),
    );
    let before = LIVE.load(Ordering::SeqCst);
    cell.host.begin(2);
    let mut accepted = 0usize;
    loop {
        match abi::backend::HostSide::on_frame(&*cell.host, event()) {
            abi::backend::Flow::Continue => accepted += 1,
            abi::backend::Flow::Abort(e) => {
                assert_eq!(e.code, abi::ErrorCode::LimitEventQueue);
                break;
            }
            other => panic!("{other:?}"),
        }
        assert!(accepted < 100_000_000, "the queue never filled");
    }
    let held = LIVE.load(Ordering::SeqCst) - before;
    assert!(accepted > 0);
    held
}

fn check(name: &str, event: fn() -> GuestFrame) {
    let held = flood(event);
    eprintln!("{name}: the queue holds {held} bytes for a bound of {BOUND}");
    assert!(held <= 2 * BOUND as isize, "{name}: {held} bytes held");
    // The bound bites near its value: the estimate is not wildly pessimistic either.
    assert!(held >= BOUND as isize / 2, "{name}: only {held} bytes held");
}

#[test]
fn tiny_one_entry_maps() {
    check("maps", || {
        GuestFrame::Post(Value::List(vec![
            Value::Map(
                [(String::new(), Value::Unit)].into_iter().collect()
            );
            64
        ]))
    });
}

#[test]
fn tiny_nested_empty_lists_and_maps() {
    check("nested", || {
        let mut v = Value::List(vec![]);
        for i in 0..60 {
            v = if i % 2 == 0 {
                Value::List(vec![v, Value::Map(Map::new())])
            } else {
                Value::Map([(String::new(), v)].into_iter().collect())
            };
        }
        GuestFrame::Post(v)
    });
}

#[test]
fn many_short_strings() {
    check("strings", || {
        GuestFrame::Post(Value::List(vec![Value::Str("a".into()); 256]))
    });
}

#[test]
fn many_small_posts() {
    check("posts", || GuestFrame::Post(Value::Int(1)));
}

#[test]
fn logs_and_metrics() {
    check("logs", || GuestFrame::Log {
        level: Level::Info,
        message: "m".into(),
        fields: [("k".to_string(), Value::Str("v".into()))]
            .into_iter()
            .collect(),
    });
    check("metrics", || GuestFrame::Metric {
        name: "n".into(),
        value: 1.0,
        tags: [("k".to_string(), "v".to_string())].into_iter().collect(),
    });
}
