//! The host side against a fake pipe: each rule fails a test when it breaks, with boundary
//! values exactly at and one past each cap.
//!
//! Long (about 900 lines) because it is a list: one short test per rule, all driving the same
//! fake pipe from `common`; splitting it by rule would only repeat the imports.

mod common;

use abi::backend::{HostSide, PipeError, Resource, Resources};
use abi::value::MAX_VALUE_DEPTH;
use abi::wire::{self, WireError};
use abi::{CellError, EngineLimits, ErrorCode, GuestFrame, Hello, HostFrame, Map, Ready, Value};
use cell_host::{CellHost, Channel, DenyAll, event_bytes};
use common::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn call(id: u64, args: Vec<Value>) -> HostFrame {
    HostFrame::Call {
        id,
        function: "f".into(),
        args,
        kwargs: Map::new(),
    }
}

/// A call of exactly `len` encoded bytes.
fn call_of_len(id: u64, len: usize) -> HostFrame {
    let base = wire::encoded_len(&call(id, vec![Value::Str(String::new())])).unwrap();
    (0..4)
        .map(|extra| call(id, vec![Value::Str("x".repeat(len - base - extra))]))
        .find(|f| wire::encoded_len(f).unwrap() == len)
        .unwrap()
}

fn plain() -> Cell {
    Cell::ready(Channel::default(), Arc::new(DenyAll), guest(|_, _| vec![]))
}

#[test]
fn handshake_checks_version_and_schema_each() {
    for (version, schema, ok) in [
        (abi::ABI_VERSION, abi::SCHEMA_KEY, true),
        (abi::ABI_VERSION + 1, abi::SCHEMA_KEY, false),
        (abi::ABI_VERSION, "cell-abi/1;other", false),
    ] {
        let answer = GuestFrame::Ready(Ready {
            abi_version: version,
            schema: schema.into(),
            ..Ready::new("fake", "0")
        });
        let mut cell = Cell::new(
            Channel::default(),
            Arc::new(DenyAll),
            Box::new(move |_, _| Ok(vec![answer.clone()])),
        );
        let r = cell.run(hello(), None);
        if ok {
            assert_eq!(r, Ok(Value::Unit));
            assert!(cell.host.ready().is_some() && cell.host.dead().is_none());
        } else {
            assert_eq!(r.unwrap_err().code, ErrorCode::VersionMismatch);
            assert!(cell.killed(), "a mismatched cell is killed");
            assert_eq!(cell.host.dead().unwrap().code, ErrorCode::VersionMismatch);
        }
    }
}

#[test]
fn a_hello_naming_an_unknown_module_never_reaches_the_pipe() {
    let mut cell = Cell::new(Channel::default(), Arc::new(DenyAll), guest(|_, _| vec![]));
    let bad = HostFrame::Hello(Hello::new(
        "t",
        EngineLimits::default(),
        vec!["math".into(), "os".into()],
    ));
    let err = cell.run(bad, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("`os`"), "{err}");
    assert!(cell.sent().is_empty());
    assert!(cell.killed());
}

#[test]
fn refusals_keep_guest_codes_and_not_host_ones() {
    for (code, expected) in [
        (ErrorCode::VersionMismatch, ErrorCode::VersionMismatch),
        (ErrorCode::InvalidArgument, ErrorCode::InvalidArgument),
        (ErrorCode::CellCrashed, ErrorCode::ProtocolViolation),
        (ErrorCode::TimedOut, ErrorCode::ProtocolViolation),
    ] {
        let mut cell = Cell::new(
            Channel::default(),
            Arc::new(DenyAll),
            Box::new(move |_, _| Ok(vec![GuestFrame::Refused(CellError::new(code, "no"))])),
        );
        assert_eq!(
            cell.run(hello(), None).unwrap_err().code,
            expected,
            "{code}"
        );
    }
}

#[test]
fn outgoing_frame_cap_is_exact_and_the_cell_stays_usable() {
    let mut cell = plain();
    let cap = Channel::default().max_frame_bytes as usize;
    assert_eq!(cell.run(call_of_len(2, cap), None), Ok(Value::Unit));
    let sent_before = cell.sent().len();
    let err = cell.run(call_of_len(3, cap + 1), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize);
    assert_eq!(
        err.message,
        format!(
            "the call's arguments encode to {} bytes, over the 1 MiB frame cap (host → cell)",
            cap + 1
        )
    );
    assert_eq!(
        cell.sent().len(),
        sent_before,
        "the frame never reached the pipe"
    );
    assert!(cell.host.dead().is_none() && !cell.killed());
    assert_eq!(cell.run(exec(4), None), Ok(Value::Unit));
    // An exec's source is capped the same way.
    let source = "x".repeat(cap);
    let err = cell
        .run(HostFrame::Exec { id: 5, source }, None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize);
    assert!(cell.host.dead().is_none());
}

#[test]
fn outgoing_depth_and_lengths_are_checked_and_the_cell_stays_usable() {
    let mut cell = plain();
    let mut v = Value::Unit;
    for _ in 1..MAX_VALUE_DEPTH {
        v = Value::List(vec![v]);
    }
    assert_eq!(cell.run(call(2, vec![v.clone()]), None), Ok(Value::Unit));
    let err = cell
        .run(call(3, vec![Value::List(vec![v])]), None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue);
    let limit = EngineLimits::default().max_array_len as usize;
    assert_eq!(
        cell.run(call(4, vec![Value::List(vec![Value::Unit; limit])]), None),
        Ok(Value::Unit)
    );
    let err = cell
        .run(
            call(5, vec![Value::List(vec![Value::Unit; limit + 1])]),
            None,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitArraySize);
    assert!(err.message.ends_with("(host → cell)"));
    assert!(cell.host.dead().is_none());
    assert_eq!(cell.run(exec(6), None), Ok(Value::Unit));
}

#[test]
fn only_hello_exec_and_call_start_transactions() {
    let mut cell = plain();
    for frame in [
        HostFrame::Shutdown,
        HostFrame::Reply {
            id: 1,
            result: Ok(Value::Unit),
        },
    ] {
        assert_eq!(
            cell.run(frame, None).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}

fn request(id: u64) -> GuestFrame {
    GuestFrame::Request {
        id,
        capability: "fs".into(),
        action: "read".into(),
        payload: Value::Unit,
    }
}

#[test]
fn the_reply_budget_follows_the_channel_cap() {
    // A smaller frame cap sets a smaller budget.
    let small = Channel {
        max_frame_bytes: 4096,
        ..Channel::default()
    };
    let handler = Fixed::new(Ok(Value::Int(1)));
    let mut cell = Cell::ready(small, handler.clone(), guest(|_, _| vec![request(1)]));
    cell.run(exec(2), None).unwrap();
    let budget = handler.reply_budgets.lock().unwrap()[0];
    assert!((4096 - 24..4096).contains(&budget), "budget {budget}");
}

#[test]
fn an_over_cap_broker_reply_becomes_an_error_reply() {
    let cap = Channel::default().max_frame_bytes as usize;
    let handler = Fixed::new(Ok(Value::Bytes(vec![7; cap])));
    let mut cell = Cell::ready(
        Channel::default(),
        handler.clone(),
        guest(|_, _| vec![request(1)]),
    );
    assert_eq!(cell.run(exec(2), None), Ok(Value::Unit));
    let reply = cell.sent().pop().unwrap();
    let HostFrame::Reply {
        id: 1,
        result: Err(e),
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(e.code, ErrorCode::LimitFrameSize);
    assert!(e.message.contains("(host → cell)"), "{e}");
    assert!(cell.host.dead().is_none());
    // The handler was told the largest reply it may give, below the cap; a reply of exactly
    // that many bytes fits and is sent as it is.
    let budget = handler.reply_budgets.lock().unwrap()[0];
    assert!(
        budget < cap && budget + 24 > cap,
        "budget {budget}, cap {cap}"
    );
    let fits = Value::Bytes(vec![7; budget]);
    let handler = Fixed::new(Ok(fits.clone()));
    let mut cell = Cell::ready(Channel::default(), handler, guest(|_, _| vec![request(1)]));
    cell.run(exec(2), None).unwrap();
    assert_eq!(
        cell.sent().pop(),
        Some(HostFrame::Reply {
            id: 1,
            result: Ok(fits)
        })
    );
}

#[test]
fn requests_get_the_deadline_and_cannot_outlast_it() {
    // The handler sees the transaction's deadline.
    let handler = Fixed::new(Ok(Value::Int(1)));
    let mut cell = Cell::ready(
        Channel::default(),
        handler.clone(),
        guest(|_, _| vec![request(1)]),
    );
    cell.run(exec(2), Some(Duration::from_secs(60))).unwrap();
    assert!(handler.deadlines.lock().unwrap()[0].is_some());
    cell.run(exec(3), None).unwrap_err(); // request id 1 replayed: a violation
    // A capability slower than the wall time: the transaction ends timed_out, the cell dies.
    let slow = Arc::new(Fixed {
        outlast_deadline: true,
        ..Arc::into_inner(Fixed::new(Ok(Value::Int(1)))).unwrap()
    });
    let mut cell = Cell::ready(
        Channel::default(),
        slow.clone(),
        guest(|_, _| vec![request(1)]),
    );
    let err = cell
        .run(exec(2), Some(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert_eq!(
        err.message,
        "the cell ran past its wall-time limit of 20 ms"
    );
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    assert!(cell.killed());
    assert!(
        !cell
            .sent()
            .iter()
            .any(|f| matches!(f, HostFrame::Reply { .. })),
        "no reply after the deadline"
    );
    // Past the deadline already: the handler is not even asked.
    let handler = Fixed::new(Ok(Value::Int(1)));
    let mut cell = Cell::ready(
        Channel::default(),
        handler.clone(),
        guest(|_, _| vec![request(1)]),
    );
    let err = cell.run(exec(2), Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn request_ids_must_increase() {
    let handler = Fixed::new(Ok(Value::Unit));
    let mut cell = Cell::ready(
        Channel::default(),
        handler,
        guest(|f, _| match id_of(f) {
            2 => vec![request(1), request(2)],
            _ => vec![request(2)],
        }),
    );
    assert_eq!(cell.run(exec(2), None), Ok(Value::Unit));
    let err = cell.run(exec(3), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    assert!(cell.killed());
    assert_eq!(cell.host.stats().violations, 1);
}

#[test]
fn guest_codes_pass_and_host_only_codes_do_not() {
    for &code in ErrorCode::ALL.iter().chain(&[ErrorCode::Unknown(70)]) {
        let mut cell = Cell::ready(
            Channel::default(),
            Arc::new(DenyAll),
            guest(move |f, _| {
                vec![GuestFrame::Done {
                    id: id_of(f),
                    result: Err(CellError::new(code, "guest words")),
                }]
            }),
        );
        let err = cell
            .run(exec(2), Some(Duration::from_secs(60)))
            .unwrap_err();
        if code.guest_may_report() {
            assert_eq!(err, CellError::new(code, "guest words"));
        } else {
            assert_eq!(err.code, ErrorCode::Runtime, "{code}");
            assert!(err.message.contains("guest words") && err.message.contains(code.name()));
            assert!(
                cell.host.dead().is_none() && !cell.killed(),
                "{code}: the cell lives"
            );
        }
    }
}

#[test]
fn a_guest_timeout_counts_only_past_the_hosts_deadline() {
    let timed_out = |f: &HostFrame, _: &CellHost| {
        vec![GuestFrame::Done {
            id: id_of(f),
            result: Err(CellError::new(
                ErrorCode::TimedOut,
                "the script ran past it",
            )),
        }]
    };
    let mut cell = Cell::ready(Channel::default(), Arc::new(DenyAll), guest(timed_out));
    let err = cell
        .run(exec(2), Some(Duration::from_secs(60)))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Runtime);
    let err = cell.run(exec(3), Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert_eq!(err.message, "the cell ran past its wall-time limit of 0 ms");
    assert!(cell.killed());
}

#[test]
fn a_guest_cancellation_counts_only_after_the_hosts_kill() {
    let cancelled = |f: &HostFrame, host: &CellHost| {
        if id_of(f) == 3 {
            host.mark_dead(CellError::new(ErrorCode::Cancelled, "cell `t` was killed"));
        }
        vec![GuestFrame::Done {
            id: id_of(f),
            result: Err(CellError::new(ErrorCode::Cancelled, "cancelled")),
        }]
    };
    let mut cell = Cell::ready(Channel::default(), Arc::new(DenyAll), guest(cancelled));
    assert_eq!(
        cell.run(exec(2), None).unwrap_err().code,
        ErrorCode::Runtime
    );
    let err = cell.run(exec(3), None).unwrap_err();
    assert_eq!(
        err,
        CellError::new(ErrorCode::Cancelled, "cell `t` was killed")
    );
    let err = cell.run(exec(4), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::CellClosed);
}

#[test]
fn pipe_errors_are_worded_by_the_host() {
    let resources = Resources {
        memory_bytes: 32 << 20,
        cpu_time_ms: 700,
        ..Resources::default()
    };
    type Case = (fn() -> PipeError, ErrorCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            || PipeError::TimedOut,
            ErrorCode::TimedOut,
            "the cell ran past its wall-time limit of 1500 ms",
        ),
        (
            || PipeError::Killed,
            ErrorCode::Cancelled,
            "the cell was killed",
        ),
        (
            || {
                PipeError::Wire(WireError::TooLarge {
                    len: 5_000_000,
                    max: 1 << 20,
                })
            },
            ErrorCode::LimitFrameSize,
            "the cell's frame encodes to 5000000 bytes, over the 1 MiB frame cap (cell → host)",
        ),
        (
            || PipeError::Exhausted {
                resource: Resource::Memory,
                detail: "oom".into(),
            },
            ErrorCode::LimitMemory,
            "the cell ran out of memory: its limit is 32 MiB",
        ),
        (
            || PipeError::Exhausted {
                resource: Resource::CpuTime,
                detail: "SIGXCPU".into(),
            },
            ErrorCode::LimitCpu,
            "the cell used up its CPU time limit of 700 ms",
        ),
        (
            || PipeError::Exhausted {
                resource: Resource::Stack,
                detail: "guard page".into(),
            },
            ErrorCode::LimitCallDepth,
            abi::error::CALL_DEPTH_MESSAGE,
        ),
        (
            || PipeError::Aborted(CellError::new(ErrorCode::Runtime, "in-process guest")),
            ErrorCode::ProtocolViolation,
            "the cell stopped the transaction: runtime: in-process guest",
        ),
    ];
    for (make, code, message) in cases {
        let host = Arc::new(
            CellHost::new("t", "fake", Channel::default(), Arc::new(DenyAll))
                .with_resources(resources.clone()),
        );
        let mut pipe = FakePipe {
            host: host.clone(),
            guest: Box::new(move |f, _| match f {
                HostFrame::Hello(_) => Ok(vec![ready()]),
                _ => Err(make()),
            }),
            sent: Default::default(),
            killed: Arc::new(Flag(Default::default())),
        };
        host.transact(&mut pipe, hello(), None).unwrap();
        let err = host
            .transact(&mut pipe, exec(2), Some(Duration::from_millis(1500)))
            .unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (code, message));
        assert!(pipe.killed.0.load(Ordering::SeqCst), "{code}: killed");
        assert_eq!(host.dead().unwrap(), err);
    }
}

#[test]
fn correlation_and_phases_are_enforced() {
    type Answer = Box<dyn Fn(&HostFrame) -> Vec<GuestFrame> + Send + Sync>;
    let cases: Vec<Answer> = vec![
        Box::new(|f| {
            vec![GuestFrame::Done {
                id: id_of(f) + 1,
                result: Ok(Value::Unit),
            }]
        }),
        Box::new(|_| vec![ready()]),
        Box::new(|_| vec![GuestFrame::Refused(CellError::new(ErrorCode::Runtime, "x"))]),
    ];
    for case in cases {
        let mut cell = Cell::ready(
            Channel::default(),
            Arc::new(DenyAll),
            guest(move |f, _| case(f)),
        );
        let err = cell.run(exec(2), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::ProtocolViolation, "{err}");
        assert!(cell.killed());
    }
    // Between transactions the guest has nothing to say.
    let host = CellHost::new("t", "fake", Channel::default(), Arc::new(DenyAll));
    assert!(matches!(
        host.on_frame(GuestFrame::Post(Value::Unit)),
        abi::backend::Flow::Abort(_)
    ));
}

#[test]
fn incoming_frames_over_the_cap_abort_even_in_process() {
    let channel = Channel {
        max_frame_bytes: 100,
        ..Channel::default()
    };
    let post = |len: usize| GuestFrame::Post(Value::Str("x".repeat(len)));
    let base = wire::encoded_len(&post(0)).unwrap();
    let at = post(100 - base);
    assert_eq!(wire::encoded_len(&at).unwrap(), 100);
    let mut cell = Cell::ready(
        channel.clone(),
        Arc::new(DenyAll),
        guest(move |_, _| vec![at.clone()]),
    );
    assert_eq!(cell.run(exec(2), None), Ok(Value::Unit));
    let over = post(101 - base);
    let mut cell = Cell::ready(
        channel,
        Arc::new(DenyAll),
        guest(move |_, _| vec![over.clone()]),
    );
    let err = cell.run(exec(2), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize);
    assert!(err.message.ends_with("(cell → host)"));
}

#[test]
fn incoming_values_over_the_engine_lengths_are_violations() {
    let limit = EngineLimits::default().max_array_len as usize;
    for (len, ok) in [(limit, true), (limit + 1, false)] {
        let mut cell = Cell::ready(
            Channel::default(),
            Arc::new(DenyAll),
            guest(move |f, _| {
                vec![GuestFrame::Done {
                    id: id_of(f),
                    result: Ok(Value::List(vec![Value::Unit; len])),
                }]
            }),
        );
        let r = cell.run(exec(2), None);
        assert_eq!(r.is_ok(), ok, "{r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().code, ErrorCode::ProtocolViolation);
        }
    }
}

#[test]
fn queue_bounds_are_exact_in_events_and_bytes() {
    let event = GuestFrame::Post(Value::Str("abc".into()));
    let size = event_bytes(&cell_host::Event::Post(Value::Str("abc".into())));
    for (events, bytes, n, ok) in [
        (3, usize::MAX, 3, true),
        (3, usize::MAX, 4, false),
        (usize::MAX, 3 * size, 3, true),
        (usize::MAX, 3 * size, 4, false),
        (usize::MAX, 3 * size - 1, 3, false),
    ] {
        let channel = Channel {
            max_queued_events: events,
            max_queued_bytes: bytes,
            ..Channel::default()
        };
        let e = event.clone();
        let mut cell = Cell::ready(
            channel,
            Arc::new(DenyAll),
            guest(move |_, _| vec![e.clone(); n]),
        );
        let r = cell.run(exec(2), None);
        assert_eq!(r.is_ok(), ok, "{events}/{bytes} with {n}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().code, ErrorCode::LimitEventQueue);
        }
        // Events accepted before the flood are still delivered.
        let mut got = 0;
        while cell
            .host
            .next_event(Some(std::time::Instant::now()))
            .is_ok()
        {
            got += 1;
        }
        assert_eq!(
            got,
            if ok { n } else { n - 1 }
                .min(3)
                .min(if bytes < 3 * size { 2 } else { 3 })
        );
    }
}

#[test]
fn receiving_frees_the_queue() {
    let size = event_bytes(&cell_host::Event::Post(Value::Int(1)));
    for channel in [
        Channel {
            max_queued_events: 2,
            ..Channel::default()
        },
        Channel {
            max_queued_bytes: 2 * size,
            ..Channel::default()
        },
    ] {
        drain_and_refill(channel);
    }
}

fn drain_and_refill(channel: Channel) {
    let mut cell = Cell::ready(
        channel,
        Arc::new(DenyAll),
        guest(|_, _| vec![GuestFrame::Post(Value::Int(1)); 2]),
    );
    for id in 2..6 {
        cell.run(exec(id), None).unwrap();
        for _ in 0..2 {
            cell.host.next_event(None).unwrap();
        }
    }
}

#[test]
fn metric_series_are_bounded_and_counted() {
    let n = cell_host::series::MAX_SERIES + 5;
    let metrics: Vec<GuestFrame> = (0..n)
        .map(|i| GuestFrame::Metric {
            name: format!("m{i}"),
            value: 1.0,
            tags: Default::default(),
        })
        .collect();
    let channel = Channel {
        max_queued_events: n,
        ..Channel::default()
    };
    let mut cell = Cell::ready(
        channel,
        Arc::new(DenyAll),
        guest(move |_, _| metrics.clone()),
    );
    cell.run(exec(2), None).unwrap();
    assert_eq!(cell.host.stats().metrics_dropped, 5);
    assert_eq!(
        cell.host.stats().events,
        n as u64,
        "every metric is still queued for recv"
    );
}

#[test]
fn stats_count_what_happened() {
    let handler = Fixed::new(Ok(Value::Unit));
    let mut cell = Cell::ready(
        Channel::default(),
        handler,
        guest(|f, _| {
            let id = id_of(f);
            vec![GuestFrame::Post(Value::Int(1)), request(id)]
        }),
    );
    for id in 2..5 {
        cell.run(exec(id), None).unwrap();
    }
    let stats = cell.host.stats();
    assert_eq!(
        (
            stats.transactions,
            stats.events,
            stats.requests,
            stats.violations
        ),
        (3, 3, 3, 0)
    );
}

#[test]
fn recv_waits_ends_and_reports_death() {
    let cell = plain();
    let now = std::time::Instant::now();
    assert_eq!(cell.host.next_event(Some(now)), Err(None));
    cell.host
        .mark_dead(CellError::new(ErrorCode::Cancelled, "first"));
    cell.host
        .mark_dead(CellError::new(ErrorCode::CellClosed, "second"));
    let first = CellError::new(ErrorCode::Cancelled, "first");
    assert_eq!(cell.host.dead(), Some(first.clone()));
    assert_eq!(cell.host.next_event(None), Err(Some(first)));
}

#[test]
fn a_blocked_recv_is_woken_by_an_event_and_by_death() {
    let mut cell = Cell::ready(
        Channel::default(),
        Arc::new(DenyAll),
        guest(|_, _| vec![GuestFrame::Post(Value::Int(7))]),
    );
    let host = cell.host.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            tx.send(host.next_event(None)).unwrap();
        }
    });
    // A generous bound, only so that a lost wake fails instead of hanging the run.
    let next = || rx.recv_timeout(Duration::from_secs(60));
    // Only a waiter already blocked shows that the wake reaches it (notifies are skipped when
    // nobody waits).
    while cell.host.receivers_waiting() == 0 {
        std::thread::yield_now();
    }
    cell.run(exec(2), None).unwrap();
    assert_eq!(next(), Ok(Ok(cell_host::Event::Post(Value::Int(7)))));
    while cell.host.receivers_waiting() == 0 {
        std::thread::yield_now();
    }
    let gone = CellError::new(ErrorCode::CellClosed, "closed");
    cell.host.mark_dead(gone.clone());
    assert_eq!(next(), Ok(Err(Some(gone))));
    assert_eq!(cell.host.receivers_waiting(), 0);
}

#[test]
fn a_dead_cell_refuses_transactions() {
    let mut cell = plain();
    cell.host
        .mark_dead(CellError::new(ErrorCode::Cancelled, "gone"));
    let before = cell.sent().len();
    assert_eq!(
        cell.run(exec(2), None).unwrap_err().code,
        ErrorCode::CellClosed
    );
    assert_eq!(cell.sent().len(), before);
}

#[test]
fn metric_names_are_one_to_256_bytes() {
    for (len, ok) in [(1, true), (256, true), (0, false), (257, false)] {
        let metric = GuestFrame::Metric {
            name: "m".repeat(len),
            value: 1.0,
            tags: Default::default(),
        };
        let mut cell = Cell::ready(
            Channel::default(),
            Arc::new(DenyAll),
            guest(move |_, _| vec![metric.clone()]),
        );
        let r = cell.run(exec(2), None);
        assert_eq!(r.is_ok(), ok, "{len}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().code, ErrorCode::ProtocolViolation);
            assert!(cell.killed(), "{len}");
        }
    }
}

#[test]
fn an_interrupt_cancels_the_exec_and_keeps_the_cell() {
    let cancelled = |f: &HostFrame, host: &CellHost| {
        if id_of(f) == 2 {
            host.mark_interrupted();
        }
        vec![GuestFrame::Done {
            id: id_of(f),
            result: Err(CellError::new(ErrorCode::Cancelled, "cancelled")),
        }]
    };
    let mut cell = Cell::ready(Channel::default(), Arc::new(DenyAll), guest(cancelled));
    let err = cell.run(exec(2), None).unwrap_err();
    assert_eq!(
        err,
        CellError::new(ErrorCode::Cancelled, "the exec was interrupted")
    );
    assert!(!cell.killed() && cell.host.dead().is_none());
    // The interrupt was for that exec only: a later `cancelled` is the script's own.
    assert_eq!(
        cell.run(exec(3), None).unwrap_err().code,
        ErrorCode::Runtime
    );
    assert!(!cell.killed());
}

#[test]
fn an_over_cap_handshake_is_named_as_such() {
    let channel = Channel {
        max_frame_bytes: 100,
        ..Channel::default()
    };
    let mut cell = Cell::new(channel, Arc::new(DenyAll), guest(|_, _| vec![]));
    let big = HostFrame::Hello(Hello::new("x".repeat(200), EngineLimits::default(), vec![]));
    let err = cell.run(big, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize);
    assert!(
        err.message.starts_with("the handshake encodes to "),
        "{err}"
    );
    assert!(cell.sent().is_empty() && cell.killed());
}

#[test]
fn a_frame_of_exactly_max_frame_memory_is_taken() {
    let value = Value::Str("x".repeat(100));
    let heap = event_bytes(&cell_host::Event::Post(value.clone()))
        - event_bytes(&cell_host::Event::Post(Value::Unit));
    assert!(heap > 0);
    for (max, ok) in [(heap, true), (heap - 1, false)] {
        let channel = Channel {
            max_frame_memory: max,
            ..Channel::default()
        };
        let post = GuestFrame::Post(value.clone());
        let mut cell = Cell::ready(
            channel,
            Arc::new(DenyAll),
            guest(move |_, _| vec![post.clone()]),
        );
        let r = cell.run(exec(2), None);
        assert_eq!(r.is_ok(), ok, "{max}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().code, ErrorCode::LimitValue);
        }
    }
}

#[test]
fn an_interrupt_does_not_spare_a_cell_past_its_deadline() {
    let timed_out = |f: &HostFrame, host: &CellHost| {
        host.mark_interrupted();
        vec![GuestFrame::Done {
            id: id_of(f),
            result: Err(CellError::new(ErrorCode::TimedOut, "too slow")),
        }]
    };
    let mut cell = Cell::ready(Channel::default(), Arc::new(DenyAll), guest(timed_out));
    let err = cell.run(exec(2), Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert!(
        cell.killed(),
        "a cell past its deadline is killed, interrupted or not"
    );
}

/// A listener is told of each event as it is queued, while the exec that sent it still runs
/// (it can receive it right there), and once when the cell dies; one set on a dead cell at once.
#[test]
fn listener_is_told_of_each_event_as_it_is_queued_and_of_death() {
    use std::sync::Mutex;
    // What the listener received, in the order it was told.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut cell = Cell::ready(
        Channel::default(),
        Arc::new(DenyAll),
        guest(|_, _| {
            vec![
                GuestFrame::Post(Value::Int(1)),
                GuestFrame::Post(Value::Int(2)),
            ]
        }),
    );
    let host = Arc::downgrade(&cell.host);
    {
        let seen = seen.clone();
        cell.host.set_listener(Some(Arc::new(move || {
            let host = host.upgrade().expect("the cell is held");
            // Receiving from inside the listener works: the event is already queued.
            let got = match host.next_event(Some(std::time::Instant::now())) {
                Ok(cell_host::Event::Post(v)) => format!("post {v:?}"),
                Ok(other) => format!("{other:?}"),
                Err(Some(dead)) => format!("dead {}", dead.code.name()),
                Err(None) => "nothing".into(),
            };
            seen.lock().unwrap().push(got);
        })));
    }
    cell.run(exec(1), None).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["post Int(1)", "post Int(2)"]);
    cell.host
        .mark_dead(CellError::new(ErrorCode::Cancelled, "killed"));
    cell.host
        .mark_dead(CellError::new(ErrorCode::Cancelled, "twice"));
    assert_eq!(
        *seen.lock().unwrap(),
        ["post Int(1)", "post Int(2)", "dead cancelled"]
    );
    let late = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let late = late.clone();
        cell.host.set_listener(Some(Arc::new(move || {
            late.fetch_add(1, Ordering::SeqCst);
        })));
    }
    assert_eq!(late.load(Ordering::SeqCst), 1);
}

/// A pipe that notes the deadline of each transaction, answers the handshake with `Ready`
/// unless told to let it time out, and completes every exec with unit.
struct Timed {
    host: Arc<CellHost>,
    deadlines: Vec<Option<std::time::Instant>>,
    start_times_out: bool,
    killed: Arc<Flag>,
}

impl abi::backend::CellPipe for Timed {
    fn transact(
        &mut self,
        frame: HostFrame,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), PipeError> {
        self.deadlines.push(deadline);
        let answer = match frame {
            HostFrame::Hello(_) if self.start_times_out => return Err(PipeError::TimedOut),
            HostFrame::Hello(_) => ready(),
            other => GuestFrame::Done {
                id: id_of(&other),
                result: Ok(Value::Unit),
            },
        };
        match self.host.on_frame(answer) {
            abi::backend::Flow::Done => Ok(()),
            other => panic!("{other:?}"),
        }
    }
    fn killer(&self) -> Arc<dyn abi::backend::Killer> {
        self.killed.clone()
    }
    fn shutdown(&mut self) -> Result<(), PipeError> {
        Ok(())
    }
}

#[test]
fn a_start_is_given_the_start_time_not_only_the_scripts_wall_time() {
    // A wall time of 1 ms refused process and microVM cells at random: their handshake waits
    // for a process or a VM to come up, and it was given the script's wall time.
    let timed = |start_times_out| {
        let host = Arc::new(CellHost::new(
            "t",
            "fake",
            Channel::default(),
            Arc::new(DenyAll),
        ));
        let pipe = Timed {
            host: host.clone(),
            deadlines: Vec::new(),
            start_times_out,
            killed: Arc::new(Flag(std::sync::atomic::AtomicBool::new(false))),
        };
        (host, pipe)
    };
    let wall = Duration::from_millis(1);
    let (host, mut pipe) = timed(false);
    let before = std::time::Instant::now();
    assert_eq!(
        host.transact(&mut pipe, hello(), Some(wall)),
        Ok(Value::Unit)
    );
    assert_eq!(
        host.transact(&mut pipe, exec(1), Some(wall)),
        Ok(Value::Unit)
    );
    let after = std::time::Instant::now();
    let start = pipe.deadlines[0].expect("a start has a deadline");
    let script = pipe.deadlines[1].expect("an exec has its wall time");
    assert!(start >= before + cell_host::START_TIME, "{start:?}");
    assert!(script <= after + wall, "the exec keeps the wall time");
    // A wall time longer than the start time is the start's too; none is none.
    let (host, mut pipe) = timed(false);
    let long = cell_host::START_TIME * 3;
    host.transact(&mut pipe, hello(), Some(long)).unwrap();
    assert!(pipe.deadlines[0].unwrap() >= before + long);
    let (host, mut pipe) = timed(false);
    host.transact(&mut pipe, hello(), None).unwrap();
    assert_eq!(pipe.deadlines, [None]);
    // A start past it says so, in its own words, and the cell is dead.
    let (host, mut pipe) = timed(true);
    let err = host.transact(&mut pipe, hello(), Some(wall)).unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);
    assert_eq!(err.message, "the cell did not start within 10000 ms");
    assert!(pipe.killed.0.load(Ordering::SeqCst));
    assert_eq!(host.dead(), Some(err));
}
