//! Backpressure (`CellHost::set_backpressure`): a full event queue makes the guest wait for
//! `recv` instead of stopping it, never holds more than its limits, and the wait ends on room,
//! a kill or the deadline, each with the same answer as without the wait.

mod common;

use abi::{CellError, ErrorCode, GuestFrame, Value};
use cell_host::{Channel, DenyAll};
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LIMIT: usize = 8;

/// A cell whose every exec posts `0..n`, recording the deepest queue it saw while posting.
fn flooding(n: i64, deepest: Arc<AtomicUsize>) -> Cell {
    let channel = Channel {
        max_queued_events: LIMIT,
        ..Channel::default()
    };
    let cell = Cell::ready(
        channel,
        Arc::new(DenyAll),
        Box::new(move |frame, host| {
            if let abi::HostFrame::Hello(_) = frame {
                return Ok(vec![ready()]);
            }
            // Frames go to the host one at a time, as a pipe hands them over.
            for i in 0..n {
                match host_on_frame(host, GuestFrame::Post(Value::Int(i))) {
                    Ok(()) => {}
                    Err(e) => return Err(abi::backend::PipeError::Aborted(e)),
                }
                deepest.fetch_max(host.queued_events(), Ordering::SeqCst);
            }
            Ok(vec![GuestFrame::Done {
                id: id_of(frame),
                result: Ok(Value::Str("done".into())),
            }])
        }),
    );
    cell.host.set_backpressure(true);
    cell
}

fn host_on_frame(host: &cell_host::CellHost, frame: GuestFrame) -> Result<(), CellError> {
    use abi::backend::{Flow, HostSide};
    match host.on_frame(frame) {
        Flow::Continue => Ok(()),
        Flow::Abort(e) => Err(e),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_drained_flood_arrives_whole_and_in_order_within_the_limit() {
    let deepest = Arc::new(AtomicUsize::new(0));
    let mut cell = flooding(1000, deepest.clone());
    let host = cell.host.clone();
    let reader = std::thread::spawn(move || {
        (0..1000)
            .map(|_| match host.next_event(None) {
                Ok(cell_host::Event::Post(v)) => v,
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    });
    let r = cell.run(exec(2), Some(Duration::from_secs(60)));
    assert_eq!(r, Ok(Value::Str("done".into())));
    let got = reader.join().unwrap();
    assert_eq!(got, (0..1000).map(Value::Int).collect::<Vec<_>>());
    assert!(deepest.load(Ordering::SeqCst) <= LIMIT);
    assert!(cell.host.dead().is_none());
}

#[test]
fn without_backpressure_the_same_flood_is_stopped() {
    let mut cell = flooding(1000, Arc::default());
    cell.host.set_backpressure(false);
    let err = cell.run(exec(2), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitEventQueue);
}

#[test]
fn with_nobody_draining_the_wall_time_ends_the_wait() {
    let mut cell = flooding(1000, Arc::default());
    let err = cell
        .run(exec(2), Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut, "{err}");
    assert!(cell.killed(), "a cell past its wall time is stopped");
    // What was queued before the wait is still delivered.
    let mut got = 0;
    while cell.host.next_event(Some(Instant::now())).is_ok() {
        got += 1;
    }
    assert_eq!(got, LIMIT);
}

#[test]
fn a_kill_ends_the_wait_with_the_kill() {
    let mut cell = flooding(1000, Arc::default());
    let host = cell.host.clone();
    let killer = std::thread::spawn(move || {
        // Once the queue is full the guest waits (or is about to): kill it then.
        while host.queued_events() < LIMIT {
            std::thread::yield_now();
        }
        host.mark_dead(CellError::new(ErrorCode::Cancelled, "killed by the test"));
    });
    let err = cell.run(exec(2), None).unwrap_err();
    killer.join().unwrap();
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
    assert_eq!(err.message, "killed by the test");
}

#[test]
fn an_event_over_the_whole_byte_limit_is_refused_at_once() {
    let channel = Channel {
        max_queued_bytes: 64,
        ..Channel::default()
    };
    let mut cell = Cell::ready(
        channel,
        Arc::new(DenyAll),
        guest(|_, _| vec![GuestFrame::Post(Value::Str("x".repeat(200)))]),
    );
    cell.host.set_backpressure(true);
    // No deadline and nobody draining: waiting would never end.
    let err = cell.run(exec(2), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitEventQueue);
}
