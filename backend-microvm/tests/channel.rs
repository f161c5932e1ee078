//! The channel under pressure and from other threads: an event flood stops at the host side's
//! bound and never delivers another frame; an interrupt ends the running transaction only.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use abi::backend::{Flow, HostSide, PipeError};
use abi::{CellError, ErrorCode, GuestFrame, Value};
use cell_backend_microvm::MicroVm;
use common::*;

/// A host side with a bounded event queue that nobody drains, like a supervisor whose caller
/// does not `recv`: the post past the bound aborts the transaction.
struct BoundedQueue {
    max: usize,
    queued: AtomicUsize,
    /// Every post the pipe ever delivered, including refused ones.
    delivered: AtomicUsize,
}

impl HostSide for BoundedQueue {
    fn on_frame(&self, frame: GuestFrame) -> Flow {
        match frame {
            GuestFrame::Post(_) => {
                self.delivered.fetch_add(1, Ordering::SeqCst);
                if self.queued.load(Ordering::SeqCst) >= self.max {
                    return Flow::Abort(CellError::new(
                        ErrorCode::LimitEventQueue,
                        format!("more than {} events queued", self.max),
                    ));
                }
                self.queued.fetch_add(1, Ordering::SeqCst);
                Flow::Continue
            }
            GuestFrame::Ready(_) | GuestFrame::Done { .. } => Flow::Done,
            _ => Flow::Continue,
        }
    }
}

#[test]
fn a_post_flood_stops_at_the_queue_bound_and_nothing_follows() {
    if !kvm() {
        return;
    }
    for backend in [MicroVm::new(), MicroVm::cold()] {
        let host = Arc::new(BoundedQueue {
            max: 100,
            queued: AtomicUsize::new(0),
            delivered: AtomicUsize::new(0),
        });
        let mut pipe = start(&backend, &spec(), host.clone());
        let r = exec(&mut pipe, 1, "let i = 0; loop { post(i); i += 1; }");
        assert!(
            matches!(&r, Err(PipeError::Aborted(e)) if e.code == ErrorCode::LimitEventQueue),
            "{r:?}"
        );
        assert_eq!(host.queued.load(Ordering::SeqCst), 100);
        assert_eq!(
            host.delivered.load(Ordering::SeqCst),
            101,
            "one refused post"
        );
        // The caller does not kill the cell. The flooding script must not resume under the next
        // transaction and deliver more posts as if they were that transaction's.
        for id in 2..5 {
            assert!(exec(&mut pipe, id, "1").is_err(), "the cell is stopped");
        }
        assert_eq!(host.delivered.load(Ordering::SeqCst), 101);
        assert_eq!(host.queued.load(Ordering::SeqCst), 100);
    }
}

/// Records frames and tells the test when the script has started (its first post).
struct Started {
    frames: Recorder,
    started: Mutex<Option<mpsc::Sender<()>>>,
}

impl HostSide for Started {
    fn on_frame(&self, frame: GuestFrame) -> Flow {
        if matches!(frame, GuestFrame::Post(Value::Str(ref s)) if s == "started")
            && let Some(tx) = self.started.lock().unwrap().as_ref()
        {
            let _ = tx.send(());
        }
        self.frames.on_frame(frame)
    }
}

#[test]
fn interrupt_cancels_the_running_exec_and_the_cell_stays_usable() {
    if !kvm() {
        return;
    }
    for backend in [MicroVm::new(), MicroVm::cold()] {
        let (tx, rx) = mpsc::channel();
        let host = Arc::new(Started {
            frames: Recorder::default(),
            started: Mutex::new(Some(tx)),
        });
        let mut pipe = start(&backend, &spec(), host.clone());
        let interrupter = pipe
            .interrupter()
            .expect("microVM cells can be interrupted");

        // An interrupt while nothing runs cancels nothing later.
        interrupter.interrupt();
        exec(&mut pipe, 1, "let kept = 41; fn more(x) { x + 1 }").unwrap();
        assert!(
            matches!(
                host.frames.last(),
                Some(GuestFrame::Done {
                    id: 1,
                    result: Ok(_)
                })
            ),
            "{:?}",
            host.frames.last()
        );

        // Interrupted from another thread once the endless script is running.
        let t = std::thread::spawn(move || {
            rx.recv().unwrap();
            interrupter.interrupt();
        });
        exec(&mut pipe, 2, "post(\"started\"); loop {}").unwrap();
        t.join().unwrap();
        match host.frames.last() {
            Some(GuestFrame::Done {
                id: 2,
                result: Err(e),
            }) => {
                assert_eq!(e.code, ErrorCode::Cancelled, "{e:?}")
            }
            other => panic!("expected a cancelled completion, got {other:?}"),
        }

        // The cell keeps its state and runs the next exec to completion.
        exec(&mut pipe, 3, "more(kept)").unwrap();
        assert_eq!(
            host.frames.last(),
            Some(GuestFrame::Done {
                id: 3,
                result: Ok(Value::Int(42))
            })
        );
    }
}
