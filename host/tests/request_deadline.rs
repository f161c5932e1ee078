//! A broker request in flight is cut at its transaction's deadline: the host cancels it from
//! another thread (the pipe is waiting for the host side, so nothing else can), and the
//! transaction ends `timed_out`.

mod common;

use abi::{ErrorCode, Value};
use common::blocking::{Blocking, requesting};
use common::*;
use std::sync::{Arc, mpsc};
use std::time::Duration;

#[test]
fn a_request_in_flight_is_cancelled_at_the_deadline() {
    let handler = Arc::new(Blocking::default());
    let mut cell = requesting(handler.clone());
    let err = cell
        .run(exec(2), Some(Duration::from_millis(20)))
        .unwrap_err();
    assert!(handler.cut(), "the host cancelled the request in flight");
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert_eq!(
        err.message,
        "the cell ran past its wall-time limit of 20 ms"
    );
    assert!(cell.killed());
}

#[test]
fn a_request_without_a_deadline_is_not_cancelled() {
    let handler = Arc::new(Blocking::default());
    let (entered, in_flight) = mpsc::channel();
    *handler.entered.lock().unwrap() = Some(entered);
    let mut cell = requesting(handler.clone());
    let run = std::thread::spawn(move || cell.run(exec(2), None));
    in_flight.recv().unwrap();
    handler.release();
    assert_eq!(run.join().unwrap(), Ok(Value::Unit));
    assert!(!handler.cancelled());
}
