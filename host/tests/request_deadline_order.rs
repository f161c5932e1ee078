//! The deadline thread wakes for an earlier deadline armed after a later one. Alone in its own
//! test binary, so no other test's deadlines wake the thread for it.

mod common;

use abi::{ErrorCode, Value};
use common::blocking::{Blocking, requesting};
use common::*;
use std::sync::{Arc, mpsc};
use std::time::Duration;

#[test]
fn an_earlier_deadline_armed_later_is_not_held_up_by_a_later_one() {
    // Cell `a` has a request in flight with a far deadline when cell `b` makes one with a near
    // deadline: `b`'s is cut at its own deadline, `a`'s runs on and completes.
    let slow = Arc::new(Blocking::default());
    let (entered, in_flight) = mpsc::channel();
    *slow.entered.lock().unwrap() = Some(entered);
    let mut a = requesting(slow.clone());
    let a_run = std::thread::spawn(move || a.run(exec(2), Some(Duration::from_secs(600))));
    in_flight.recv().unwrap();

    let fast = Arc::new(Blocking::default());
    let mut b = requesting(fast.clone());
    let err = b.run(exec(2), Some(Duration::from_millis(20))).unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert!(fast.cut(), "cut at its own deadline, not at the later one");
    assert!(!slow.cancelled());

    slow.release();
    assert_eq!(a_run.join().unwrap(), Ok(Value::Unit));
    assert!(!slow.cut(), "a request that ended in time is not cancelled");
}
