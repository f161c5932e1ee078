//! Blocking requests run on a bounded worker pool (no thread per request; a saturated pool
//! refuses at once) and never outlive the cell's deadline.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::{Broker, Call, Capability, CapabilityError, Decision, MemoryAudit};
use common::cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const B: &str = "subinterp";
const GRANT: &str = "[[grants]]\ncapability = \"gate\"\nactions = [\"*\"]\ntimeout_ms = 600000";

/// A blocking capability: `pass` returns at once; `hold` reports that it started and waits
/// until the test releases it. Counts the requests it ran.
struct Gate {
    ran: AtomicUsize,
    started: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

impl Capability for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn actions(&self) -> &[&str] {
        &["pass", "hold"]
    }
    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        if call.action == "hold" {
            let _ = self.started.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
        }
        Ok(Value::Unit)
    }
}

struct Setup {
    gate: Arc<Gate>,
    started: Receiver<()>,
    release: Sender<()>,
    audit: Arc<MemoryAudit>,
    broker: Broker,
}

fn setup(pool: Option<(usize, usize)>) -> Setup {
    let (started_tx, started) = channel();
    let (release, release_rx) = channel();
    let gate = Arc::new(Gate {
        ran: AtomicUsize::new(0),
        started: Mutex::new(started_tx),
        release: Mutex::new(release_rx),
    });
    let audit = Arc::new(MemoryAudit::default());
    let mut builder = Broker::builder()
        .register(gate.clone())
        .audit(audit.clone());
    if let Some((workers, queue)) = pool {
        builder = builder.pool(workers, queue);
    }
    Setup {
        gate,
        started,
        release,
        audit,
        broker: builder.build().unwrap(),
    }
}

fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "broker-worker")
        .count()
}

#[test]
fn a_saturated_pool_refuses_at_once_and_recovers() {
    let s = setup(Some((1, 0)));
    let c = Arc::new(cell(&s.broker, "busy", GRANT));
    let holder = {
        let c = c.clone();
        std::thread::spawn(move || c.request(B, "gate", "hold", Value::Unit))
    };
    s.started.recv().unwrap(); // the only worker is now held
    let err = c.request(B, "gate", "pass", Value::Unit).unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed, "{err}");
    assert!(err.message.contains("busy"), "{err}");
    assert_eq!(
        s.gate.ran.load(Ordering::SeqCst),
        1,
        "the refused request ran"
    );
    s.release.send(()).unwrap();
    assert_eq!(holder.join().unwrap(), Ok(Value::Unit));
    assert_eq!(c.request(B, "gate", "pass", Value::Unit), Ok(Value::Unit));
    let busy = s
        .audit
        .records()
        .into_iter()
        .find(|r| r.outcome == "capability_failed")
        .expect("the refusal is audited");
    assert_eq!(busy.rule, "grants[0]");
}

#[test]
fn requests_within_workers_plus_queue_all_run_on_a_bounded_set_of_threads() {
    let s = setup(Some((2, 30)));
    let c = Arc::new(cell(&s.broker, "many", GRANT));
    // 32 concurrent callers never exceed 2 running plus 30 waiting, so none is refused.
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || c.request(B, "gate", "pass", Value::Unit))
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.join().unwrap(), Ok(Value::Unit));
    }
    for _ in 0..50 {
        assert_eq!(c.request(B, "gate", "pass", Value::Unit), Ok(Value::Unit));
    }
    assert_eq!(s.gate.ran.load(Ordering::SeqCst), 82);
    // Workers start on demand: this pool has at most 2, and the other tests of this binary, whose
    // requests never overlap within one pool, at most one each (4). Without a pool, 82 requests
    // would have started 82 threads.
    let threads = worker_threads();
    assert!((1..=6).contains(&threads), "{threads} broker workers");
}

#[test]
fn a_request_past_its_deadline_is_refused_before_anything_runs() {
    let s = setup(None);
    let c = cell(&s.broker, "late", GRANT);
    let past = Instant::now();
    let err = c
        .request_with_deadline(B, "gate", "pass", Value::Unit, Some(past))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed, "{err}");
    assert!(err.message.contains("deadline"), "{err}");
    assert_eq!(s.gate.ran.load(Ordering::SeqCst), 0);
    let record = s.audit.records().pop().unwrap();
    assert_eq!(
        (record.decision, record.rule.as_str()),
        (Decision::Deny, "deadline")
    );
    // Without a deadline, or with one ahead, the same request runs.
    let ahead = Instant::now() + Duration::from_secs(600);
    assert_eq!(
        c.request_with_deadline(B, "gate", "pass", Value::Unit, Some(ahead)),
        Ok(Value::Unit)
    );
}

#[test]
fn the_deadline_cuts_a_request_in_flight_whatever_the_grant_timeout() {
    // The grant allows 10 minutes; the deadline ends the wait long before. The test would hang
    // (not fail on a clock) if the deadline were ignored.
    let s = setup(None);
    let c = cell(&s.broker, "cut", GRANT);
    let deadline = Instant::now() + Duration::from_millis(50);
    let err = c
        .request_with_deadline(B, "gate", "hold", Value::Unit, Some(deadline))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed, "{err}");
    assert!(err.message.contains("deadline"), "{err}");
    s.release.send(()).unwrap(); // let the abandoned job finish
}

#[test]
fn a_job_abandoned_while_queued_never_runs() {
    let s = setup(Some((1, 4)));
    let c = Arc::new(cell(&s.broker, "skip", GRANT));
    let holder = {
        let c = c.clone();
        std::thread::spawn(move || c.request(B, "gate", "hold", Value::Unit))
    };
    s.started.recv().unwrap();
    // Queued behind the held worker, its deadline passes while it waits.
    let deadline = Instant::now() + Duration::from_millis(20);
    let err = c
        .request_with_deadline(B, "gate", "pass", Value::Unit, Some(deadline))
        .unwrap_err();
    assert!(err.message.contains("deadline"), "{err}");
    s.release.send(()).unwrap();
    assert_eq!(holder.join().unwrap(), Ok(Value::Unit));
    // A later request runs after the skipped one: the worker is free again.
    assert_eq!(c.request(B, "gate", "pass", Value::Unit), Ok(Value::Unit));
    assert_eq!(
        s.gate.ran.load(Ordering::SeqCst),
        2,
        "the abandoned job ran"
    );
}

#[test]
fn a_pool_needs_a_worker() {
    assert!(Broker::builder().pool(0, 10).build().is_err());
}
