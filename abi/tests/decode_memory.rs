//! Decoding allocates at most a bounded multiple of the frame's size, whatever its shape.
//!
//! A peer chooses the bytes, so it chooses the shape: one byte of `Unit` becomes a 32-byte value
//! slot, four bytes of a one-entry map become a 632-byte B-tree leaf. The worst shapes are
//! measured here with a counting allocator (peak of live heap, as the allocator rounds blocks)
//! against [`DECODE_FACTOR`], the bound SPEC.md states.

use cell_abi::{GuestFrame, Map, Value, wire};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Only the measuring thread's blocks count: the test harness spawns threads and captures
    /// output concurrently, and one stray block is enough to pass an exact bound.
    static MEASURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn measuring() -> bool {
    MEASURING.try_with(|m| m.get()).unwrap_or(false)
}

/// What glibc sets aside for a block: 8-byte header, 16-byte granules, 32 bytes at least.
fn block(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measuring() {
            let live =
                LIVE.fetch_add(block(layout.size()), Ordering::SeqCst) + block(layout.size());
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measuring() {
            LIVE.fetch_sub(block(layout.size()), Ordering::SeqCst);
        }
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

/// The most heap decoding a body of `n` bytes holds at its peak is `DECODE_FACTOR * n` bytes
/// plus [`RESERVE`]. Measured worst: 171x, lists of one-entry maps.
const DECODE_FACTOR: usize = 172;
/// What the open containers of a frame that lies about its counts reserve before it fails: at
/// most 64 value slots of 32 bytes per level, 64 levels.
const RESERVE: usize = 64 * (64 * 32 + 16);

/// Tests in this file allocate one at a time, so one's allocations do not count in another's
/// peak.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Peak heap held while decoding `body` (the decoded frame included), beyond what was live.
fn peak_of(body: &[u8]) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    MEASURING.with(|m| m.set(true));
    let frame = wire::decode_body::<GuestFrame>(body);
    MEASURING.with(|m| m.set(false));
    let peak = PEAK.load(Ordering::SeqCst) - before;
    drop(frame);
    peak as usize
}

fn post(v: Value) -> Vec<u8> {
    let bytes = wire::encode(&GuestFrame::Post(v), wire::ABSOLUTE_MAX_FRAME_LEN).unwrap();
    bytes[wire::HEADER_LEN..].to_vec()
}

fn one_entry_map(key: &str) -> Value {
    Value::Map([(key.to_string(), Value::Unit)].into_iter().collect())
}

/// Shapes a hostile peer would pick: the most in-memory structure per wire byte.
fn shapes(n: usize) -> Vec<(&'static str, Vec<u8>)> {
    let keys = |n: usize| -> Map { (0..n).map(|i| (format!("{i:x}"), Value::Unit)).collect() };
    vec![
        ("units", post(Value::List(vec![Value::Unit; n]))),
        (
            "one-entry maps",
            post(Value::List(vec![one_entry_map(""); n / 4])),
        ),
        (
            "one-char strings",
            post(Value::List(vec![Value::Str("a".into()); n / 3])),
        ),
        (
            "one-byte byte strings",
            post(Value::List(vec![Value::Bytes(vec![1]); n / 3])),
        ),
        (
            "one-element lists",
            post(Value::List(vec![Value::List(vec![Value::Unit]); n / 3])),
        ),
        (
            "empty maps",
            post(Value::List(vec![Value::Map(Map::new()); n / 2])),
        ),
        ("wide map", post(Value::Map(keys(n / 5)))),
        (
            "maps of one-entry maps",
            post(Value::List(vec![
                Value::Map(
                    [("k".to_string(), one_entry_map(""))].into_iter().collect()
                );
                n / 7
            ])),
        ),
        (
            "log fields",
            wire::encode(
                &GuestFrame::Log {
                    level: cell_abi::Level::Info,
                    message: String::new(),
                    fields: (0..n / 5)
                        .map(|i| (format!("{i:x}"), one_entry_map("")))
                        .collect(),
                },
                wire::ABSOLUTE_MAX_FRAME_LEN,
            )
            .unwrap()[wire::HEADER_LEN..]
                .to_vec(),
        ),
    ]
}

#[test]
fn decoding_holds_at_most_a_bounded_multiple_of_the_body() {
    let _serial = serial();
    let mut worst = (0.0f64, "");
    for n in [64usize, 4096, 64 << 10] {
        for (name, body) in shapes(n) {
            let peak = peak_of(&body);
            let ratio = peak as f64 / body.len() as f64;
            eprintln!(
                "{name:>24} {:>8} bytes -> {peak:>10} peak ({ratio:.1}x)",
                body.len()
            );
            assert!(
                peak <= DECODE_FACTOR * body.len() + RESERVE,
                "{name}: a body of {} bytes held {peak} bytes while decoding ({ratio:.1}x)",
                body.len()
            );
            if body.len() > 4096 && ratio > worst.0 {
                worst = (ratio, name);
            }
        }
    }
    eprintln!("worst: {:.1}x ({})", worst.0, worst.1);
}

fn lying_counts() -> Vec<u8> {
    let mut body = vec![3u8]; // GuestFrame::Post
    for _ in 0..cell_abi::value::MAX_VALUE_DEPTH {
        body.extend([6, 0x80, 0x08]); // List, count 1024
    }
    body.extend([0; 1024]); // Units
    body
}

/// 64 nested lists each claiming 1024 elements, followed by 1024 units: the innermost list is
/// whole, every other holds one element and then the frame ends. Each open level reserves up to
/// its cap before the frame fails, and no more. (postcard gives no hint for a count larger than
/// the bytes left, so the claims are kept below it.)
#[test]
fn counts_a_frame_lies_about_reserve_a_bounded_amount() {
    let _serial = serial();
    let body = lying_counts();
    let peak = peak_of(&body);
    eprintln!(
        "{} bytes claiming 1024 elements per level -> {peak} peak",
        body.len()
    );
    assert!(wire::decode_body::<GuestFrame>(&body).is_err());
    assert!(
        peak <= RESERVE,
        "{peak} bytes reserved for a {}-byte body",
        body.len()
    );
    // The reservation is real (the bound is not vacuous): over half of it was taken.
    assert!(peak > RESERVE / 2, "{peak}");
}

/// With a ceiling, decoding stops before it takes more than the ceiling, whatever the shape,
/// and the charges are close to the truth: every shape decodes within about twice what it
/// really takes.
#[test]
fn a_ceiling_stops_decoding_before_it_is_passed() {
    let _serial = serial();
    let within = |body: &[u8], max: usize| {
        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        MEASURING.with(|m| m.set(true));
        let frame = wire::decode_body_within::<GuestFrame>(body, max);
        MEASURING.with(|m| m.set(false));
        let peak = (PEAK.load(Ordering::SeqCst) - before) as usize;
        (frame, peak)
    };
    const MAX: usize = 256 << 10;
    for (name, body) in shapes(64 << 10) {
        let (frame, peak) = within(&body, MAX);
        assert_eq!(
            frame,
            Err(wire::WireError::OverMemory { max: MAX }),
            "{name}"
        );
        assert!(
            peak <= MAX,
            "{name}: {peak} bytes held under a {MAX}-byte ceiling"
        );
        let needs = peak_of(&body);
        let (frame, _) = within(&body, 2 * needs);
        assert_eq!(
            frame.as_ref().ok(),
            wire::decode_body::<GuestFrame>(&body).as_ref().ok(),
            "{name}: needs {needs} bytes, refused under twice that"
        );
    }
    // What lying counts reserve is charged too.
    let (frame, peak) = within(&lying_counts(), 64 << 10);
    assert_eq!(frame, Err(wire::WireError::OverMemory { max: 64 << 10 }));
    assert!(peak <= 64 << 10, "{peak} bytes held under a 64 KiB ceiling");
    // Nothing lingers: the next decode on this thread has no ceiling again.
    let body = &shapes(64 << 10)[1].1;
    assert!(wire::decode_body::<GuestFrame>(body).is_ok());
}
