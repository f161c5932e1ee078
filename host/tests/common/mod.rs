//! A fake pipe whose "guest" is a closure answering each host frame with guest frames, and fake
//! request handlers: the host side under test without any backend.
#![allow(dead_code)]

pub mod blocking;

use abi::backend::{CellPipe, Flow, HostSide, Killer, PipeError};
use abi::{EngineLimits, GuestFrame, Hello, HostFrame, Ready, Value};
use cell_host::{CellHost, Channel, RequestContext, RequestHandler};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the fake guest does with one host frame.
pub type Guest = Box<dyn FnMut(&HostFrame, &CellHost) -> Result<Vec<GuestFrame>, PipeError> + Send>;

pub struct Flag(pub AtomicBool);
impl Killer for Flag {
    fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub struct FakePipe {
    pub host: Arc<CellHost>,
    pub guest: Guest,
    /// Every frame the pipe was handed, and every reply it was told to send.
    pub sent: Arc<Mutex<Vec<HostFrame>>>,
    pub killed: Arc<Flag>,
}

impl CellPipe for FakePipe {
    fn transact(&mut self, frame: HostFrame, _: Option<Instant>) -> Result<(), PipeError> {
        self.sent.lock().unwrap().push(frame.clone());
        let frames = (self.guest)(&frame, &self.host)?;
        for f in frames {
            match self.host.on_frame(f) {
                Flow::Continue => {}
                Flow::Reply(r) => self.sent.lock().unwrap().push(r),
                Flow::Done => return Ok(()),
                Flow::Abort(e) => return Err(PipeError::Aborted(e)),
                _ => unreachable!(),
            }
        }
        Err(PipeError::Closed)
    }
    fn killer(&self) -> Arc<dyn Killer> {
        self.killed.clone()
    }
    fn shutdown(&mut self) -> Result<(), PipeError> {
        Ok(())
    }
}

pub fn ready() -> GuestFrame {
    GuestFrame::Ready(Ready::new("fake", "0"))
}

pub fn hello() -> HostFrame {
    HostFrame::Hello(Hello::new(
        "t",
        EngineLimits::default(),
        vec!["math".into()],
    ))
}

pub fn exec(id: u64) -> HostFrame {
    HostFrame::Exec {
        id,
        source: "x".into(),
    }
}

/// The id of an exec or call.
pub fn id_of(frame: &HostFrame) -> u64 {
    match frame {
        HostFrame::Exec { id, .. } | HostFrame::Call { id, .. } => *id,
        _ => 0,
    }
}

/// A guest that answers Hello with Ready and every exec/call with `body` then `Done(Ok(unit))`
/// unless `body` ends with its own Done.
pub fn guest(
    mut body: impl FnMut(&HostFrame, &CellHost) -> Vec<GuestFrame> + Send + 'static,
) -> Guest {
    Box::new(move |frame, host| {
        Ok(match frame {
            HostFrame::Hello(_) => vec![ready()],
            other => {
                let mut out = body(other, host);
                if !matches!(out.last(), Some(GuestFrame::Done { .. })) {
                    out.push(GuestFrame::Done {
                        id: id_of(other),
                        result: Ok(Value::Unit),
                    });
                }
                out
            }
        })
    })
}

pub struct Cell {
    pub host: Arc<CellHost>,
    pub pipe: FakePipe,
}

impl Cell {
    pub fn new(channel: Channel, handler: Arc<dyn RequestHandler>, guest: Guest) -> Cell {
        let host = Arc::new(CellHost::new("t", "fake", channel, handler));
        let pipe = FakePipe {
            host: host.clone(),
            guest,
            sent: Arc::default(),
            killed: Arc::new(Flag(AtomicBool::new(false))),
        };
        Cell { host, pipe }
    }

    /// A cell past its handshake.
    pub fn ready(channel: Channel, handler: Arc<dyn RequestHandler>, guest: Guest) -> Cell {
        let mut cell = Cell::new(channel, handler, guest);
        cell.run(hello(), None).expect("handshake");
        cell
    }

    pub fn run(
        &mut self,
        frame: HostFrame,
        wall_time: Option<std::time::Duration>,
    ) -> Result<Value, abi::CellError> {
        self.host.transact(&mut self.pipe, frame, wall_time)
    }

    pub fn killed(&self) -> bool {
        self.pipe.killed.0.load(Ordering::SeqCst)
    }

    pub fn sent(&self) -> Vec<HostFrame> {
        self.pipe.sent.lock().unwrap().clone()
    }
}

/// Answers every request with a fixed result and records what it was asked and until when.
pub struct Fixed {
    pub answer: Result<Value, abi::CellError>,
    pub calls: AtomicUsize,
    pub deadlines: Mutex<Vec<Option<Instant>>>,
    /// The largest reply each request was told it may have.
    pub reply_budgets: Mutex<Vec<usize>>,
    /// Block in `handle` until the deadline passed (a capability slower than the wall time).
    pub outlast_deadline: bool,
}

impl Fixed {
    pub fn new(answer: Result<Value, abi::CellError>) -> Arc<Fixed> {
        Arc::new(Fixed {
            answer,
            calls: AtomicUsize::new(0),
            deadlines: Mutex::default(),
            reply_budgets: Mutex::default(),
            outlast_deadline: false,
        })
    }
}

impl RequestHandler for Fixed {
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        _: &str,
        _: &str,
        _: Value,
    ) -> Result<Value, abi::CellError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.deadlines.lock().unwrap().push(ctx.deadline);
        self.reply_budgets.lock().unwrap().push(ctx.max_reply_bytes);
        if self.outlast_deadline
            && let Some(d) = ctx.deadline
        {
            // Simulates a capability that runs past the transaction's deadline.
            while Instant::now() < d {
                std::thread::sleep(d - Instant::now());
            }
        }
        self.answer.clone()
    }
}
