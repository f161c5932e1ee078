//! The request handler of one cell: decides each request from the cell's rules, runs the
//! allowed ones (blocking capabilities on the broker's pool), enforces quotas, timeouts and the
//! cell's deadline, and audits every decision.

use crate::audit::{AuditRecord, Decision, emit};
use crate::broker::Shared;
use crate::capability::{Call, Capability, PendingDeny, value_bytes};
use crate::error::CapabilityError;
use crate::quota::QuotaState;
use crate::rules::{Rule, RuleKind};
use abi::{CellError, ErrorCode, Value};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest capability or action name echoed into errors and audit records.
const MAX_NAME_ECHO: usize = 64;

/// Kill switch of one cell's in-flight requests.
#[derive(Default)]
pub(crate) struct Cancel {
    cancelled: AtomicBool,
    inflight: Mutex<Vec<Weak<Slot>>>,
}

/// Where a worker leaves a blocking request's result.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<Value, CapabilityError>>>,
    ready: Condvar,
    /// The requester stopped waiting (timeout, deadline, kill): a job still queued is skipped.
    abandoned: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a request ended, before it becomes the guest's result and an audit record.
struct Outcome {
    decision: Decision,
    rule: String,
    result: Result<Value, CellError>,
    bytes: u64,
}

/// The request handler of one cell, built from its rules by
/// [`Broker::for_cell`](crate::Broker::for_cell).
pub struct CellBroker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cell: String,
    pub(crate) grants: Vec<Arc<Rule>>,
    pub(crate) denies: Vec<Arc<Rule>>,
    pub(crate) quotas: Vec<Mutex<QuotaState>>,
    pub(crate) cancel: Arc<Cancel>,
}

impl std::fmt::Debug for CellBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellBroker")
            .field("cell", &self.cell)
            .field("grants", &self.grants.len())
            .field("denies", &self.denies.len())
            .finish()
    }
}

fn echo(name: &str) -> String {
    if name.len() <= MAX_NAME_ECHO {
        name.to_string()
    } else {
        let mut end = MAX_NAME_ECHO;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &name[..end])
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CellBroker {
    /// The cell this handler decides for.
    pub fn cell(&self) -> &str {
        &self.cell
    }

    /// Whether no rule grants anything (the handler then behaves as deny-all).
    pub fn grants_nothing(&self) -> bool {
        self.grants.is_empty()
    }

    /// Fails every in-flight and future request of this cell with `cancelled`, promptly. Called
    /// when the cell is killed, so a guest blocked in `request` does not hold its killer up.
    pub fn cancel(&self) {
        self.cancel.cancelled.store(true, Ordering::SeqCst);
        let slots: Vec<Arc<Slot>> = lock(&self.cancel.inflight)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for slot in slots {
            // Taking the lock orders this wake-up after the waiter's check of the flag.
            drop(lock(&slot.result));
            slot.ready.notify_all();
        }
    }

    /// Decides and, if allowed, executes one request. Every call produces one audit record.
    pub fn request(
        &self,
        backend: &str,
        capability: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, CellError> {
        self.request_with_deadline(backend, capability, action, payload, None)
    }

    /// [`CellBroker::request`] that never outlives `deadline` (the cell's wall-time limit): a
    /// request that arrives past it is refused before anything runs, and the grant's timeout
    /// is clipped to it (`capability_failed`, naming the deadline).
    pub fn request_with_deadline(
        &self,
        backend: &str,
        capability: &str,
        action: &str,
        payload: Value,
        deadline: Option<Instant>,
    ) -> Result<Value, CellError> {
        self.request_within(backend, capability, action, payload, deadline, None)
    }

    /// [`CellBroker::request_with_deadline`] whose reply carries at most `max_reply_bytes`
    /// bytes of data (the host's `RequestContext::max_reply_bytes`): capabilities that read
    /// (`fs` files and listings, `kv` values, `http` bodies) refuse or stop their reads past it
    /// before allocating, with `limit_frame_size` naming the limit
    /// ([`CapabilityError::ReplyTooLarge`]).
    pub fn request_within(
        &self,
        backend: &str,
        capability: &str,
        action: &str,
        payload: Value,
        deadline: Option<Instant>,
        max_reply_bytes: Option<u64>,
    ) -> Result<Value, CellError> {
        let start = Instant::now();
        let cap = self.shared.caps.get(capability);
        let known = cap.is_some_and(|c| c.actions().contains(&action));
        let outcome = if deadline.is_some_and(|d| start >= d) {
            Outcome {
                decision: Decision::Deny,
                rule: "deadline".into(),
                result: Err(CellError::new(
                    ErrorCode::CapabilityFailed,
                    format!(
                        "{}.{}: timed out: the cell's deadline passed before the request ran",
                        echo(capability),
                        echo(action)
                    ),
                )),
                bytes: 0,
            }
        } else {
            let bounds = Bounds {
                deadline,
                max_reply_bytes,
            };
            self.decide_and_run(backend, cap, capability, action, payload, bounds)
        };
        let (outcome_name, message) = match &outcome.result {
            Ok(_) => ("ok".to_string(), None),
            Err(e) => (e.code.name().to_string(), Some(e.message.clone())),
        };
        let record = AuditRecord {
            ts_ms: now_ms(),
            cell: self.cell.clone(),
            backend: backend.to_string(),
            capability: echo(capability),
            action: echo(action),
            decision: outcome.decision,
            rule: outcome.rule,
            outcome: outcome_name,
            message,
            bytes: outcome.bytes,
            duration_us: start.elapsed().as_micros() as u64,
        };
        emit(&*self.shared.audit, &record, known);
        outcome.result
    }

    fn deny(capability: &str, action: &str, rule: String, why: &str) -> Outcome {
        let message = format!(
            "capability `{}` action `{}` denied by rule `{rule}`: {why}",
            echo(capability),
            echo(action)
        );
        Outcome {
            decision: Decision::Deny,
            rule,
            result: Err(CellError::new(ErrorCode::Denied, message)),
            bytes: 0,
        }
    }

    fn decide_and_run(
        &self,
        backend: &str,
        cap: Option<&Arc<dyn Capability>>,
        capability: &str,
        action: &str,
        payload: Value,
        bounds: Bounds,
    ) -> Outcome {
        const DEFAULT: &str = "default-deny";
        if self.cancel.cancelled.load(Ordering::SeqCst) {
            return Outcome {
                decision: Decision::Deny,
                rule: "cell-killed".into(),
                result: Err(self.cancelled()),
                bytes: 0,
            };
        }
        let Some(cap) = cap else {
            return Self::deny(
                capability,
                action,
                DEFAULT.into(),
                "no such capability is registered",
            );
        };
        if !cap.actions().contains(&action) {
            return Self::deny(
                capability,
                action,
                DEFAULT.into(),
                &format!(
                    "the capability has no such action (actions: {})",
                    cap.actions().join(", ")
                ),
            );
        }
        let invalid = |e: CapabilityError| Outcome {
            decision: Decision::Deny,
            rule: "invalid-request".into(),
            result: Err(e.to_cell_error(capability, action)),
            bytes: 0,
        };
        // Denies first: a matching deny wins over every grant. Those `covers` cannot settle
        // from the payload go to the capability, which decides them before it acts.
        let mut pending = Vec::new();
        for (i, rule) in self.denies.iter().enumerate() {
            if rule.capability == capability && rule.names_action(action) {
                match cap.covers(rule, RuleKind::Deny, action, &payload) {
                    Ok(true) => {
                        return Self::deny(
                            capability,
                            action,
                            RuleKind::Deny.label(i),
                            "a deny rule covers this request",
                        );
                    }
                    Ok(false) => pending.push(PendingDeny {
                        label: RuleKind::Deny.label(i),
                        rule: rule.clone(),
                    }),
                    Err(e) => return invalid(e),
                }
            }
        }
        let mut named = false;
        let mut chosen = None;
        for (i, rule) in self.grants.iter().enumerate() {
            if rule.capability == capability && rule.names_action(action) {
                named = true;
                match cap.covers(rule, RuleKind::Grant, action, &payload) {
                    Ok(true) => {
                        chosen = Some(i);
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => return invalid(e),
                }
            }
        }
        let Some(index) = chosen else {
            let why = if named {
                "the request is outside the scope of every grant of this action"
            } else {
                "not granted to this cell"
            };
            return Self::deny(capability, action, DEFAULT.into(), why);
        };
        let label = RuleKind::Grant.label(index);
        let rule = self.grants[index].clone();
        let quota_err = |why: String| {
            CellError::new(
                ErrorCode::LimitQuota,
                format!("{capability}.{action}: {why} (rule `{label}`)"),
            )
        };
        let payload_bytes = value_bytes(&payload);
        if let Some(quota) = &rule.quota
            && let Err(why) = lock(&self.quotas[index]).admit(quota, payload_bytes)
        {
            return Outcome {
                decision: Decision::Deny,
                rule: format!("{label}.quota"),
                result: Err(quota_err(why)),
                bytes: 0,
            };
        }
        let timeout = rule
            .timeout_ms
            .map_or(self.shared.default_timeout, Duration::from_millis);
        let call = Call {
            cell: self.cell.clone(),
            backend: backend.to_string(),
            action: action.to_string(),
            payload,
            rule: rule.clone(),
            timeout,
            denies: pending,
            max_reply_bytes: bounds.max_reply_bytes,
        };
        let result = if cap.is_quick() {
            run_guarded(&**cap, &call)
        } else {
            self.run_on_worker(cap.clone(), call, timeout, bounds.deadline)
        };
        if let Err(Exec::Cap(CapabilityError::Denied { rule, reason })) = result {
            // A deny rule decided on the object the capability opened: that rule is named, and
            // the grant's quota does not count the request.
            if self.grants[index].quota.is_some() {
                lock(&self.quotas[index]).refund(payload_bytes);
            }
            return Self::deny(capability, action, rule, &reason);
        }
        let mut bytes = payload_bytes;
        let result = match result {
            Ok(value) => {
                let out = value_bytes(&value);
                bytes += out;
                match &rule.quota {
                    Some(quota) => match lock(&self.quotas[index]).settle(quota, out) {
                        Ok(()) => Ok(value),
                        Err(why) => Err(quota_err(why)),
                    },
                    None => Ok(value),
                }
            }
            Err(Exec::Cap(e @ CapabilityError::OutOfScope(_))) => {
                // Left the scope of the grant that allowed it: a denial, naming that rule.
                let mut err = e.to_cell_error(capability, action);
                err.message.push_str(&format!(" (rule `{label}`)"));
                Err(err)
            }
            Err(Exec::Cap(e)) => Err(e.to_cell_error(capability, action)),
            Err(Exec::Cancelled) => Err(self.cancelled()),
        };
        Outcome {
            decision: Decision::Allow,
            rule: label,
            result,
            bytes,
        }
    }

    fn cancelled(&self) -> CellError {
        CellError::new(
            ErrorCode::Cancelled,
            format!(
                "cell `{}` was killed while its request was in flight",
                self.cell
            ),
        )
    }

    /// Runs a blocking capability on the pool and waits for its result, the timeout, the
    /// deadline or the cell's kill, whichever comes first. An abandoned job still queued is
    /// skipped; one running finishes on its own (its I/O has the same timeout) and its result is
    /// dropped. A saturated pool refuses at once.
    fn run_on_worker(
        &self,
        cap: Arc<dyn Capability>,
        call: Call,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Value, Exec> {
        let slot = Arc::new(Slot::default());
        {
            let mut inflight = lock(&self.cancel.inflight);
            inflight.retain(|w| w.strong_count() > 0);
            inflight.push(Arc::downgrade(&slot));
        }
        let job_slot = slot.clone();
        let job = Box::new(move |finished: &crate::pool::Finished<'_>| {
            if job_slot.abandoned.load(Ordering::SeqCst) {
                return;
            }
            let result = run_guarded(&*cap, &call);
            // Release the capability and the pool place before reporting, so once the caller
            // has the result no job keeps the broker's stores alive and its next request finds
            // the place free.
            drop(cap);
            drop(call);
            finished.now();
            *lock(&job_slot.result) = Some(result.map_err(|e| match e {
                Exec::Cap(e) => e,
                Exec::Cancelled => CapabilityError::failed("cancelled"),
            }));
            job_slot.ready.notify_all();
        });
        if let Err(busy) = self.shared.pool.submit(job) {
            return Err(Exec::Cap(CapabilityError::failed(format!(
                "busy: all {} broker workers are busy and {} requests already wait; retry later",
                busy.workers, busy.queue
            ))));
        }
        let by_timeout = Instant::now() + timeout;
        let (until, cut_by_deadline) = match deadline {
            Some(d) if d < by_timeout => (d, true),
            _ => (by_timeout, false),
        };
        let mut guard = lock(&slot.result);
        let outcome = loop {
            if let Some(result) = guard.take() {
                break result.map_err(Exec::Cap);
            }
            if self.cancel.cancelled.load(Ordering::SeqCst) {
                break Err(Exec::Cancelled);
            }
            let now = Instant::now();
            if now >= until {
                let why = if cut_by_deadline {
                    "the cell's deadline came before a result".to_string()
                } else {
                    format!("no result within {} ms", timeout.as_millis())
                };
                break Err(Exec::Cap(CapabilityError::TimedOut(why)));
            }
            guard = slot
                .ready
                .wait_timeout(guard, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        slot.abandoned.store(true, Ordering::SeqCst);
        // The requester, not the worker, takes its request off the list: a worker may hold its
        // job a moment after waking the requester, and the list must not depend on when.
        lock(&self.cancel.inflight)
            .retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&slot)) && w.strong_count() > 0);
        outcome
    }
}

/// What bounds one request besides its grant.
#[derive(Clone, Copy)]
struct Bounds {
    deadline: Option<Instant>,
    max_reply_bytes: Option<u64>,
}

enum Exec {
    Cap(CapabilityError),
    Cancelled,
}

/// Runs a capability, turning a panic into an error for this request only.
fn run_guarded(cap: &dyn Capability, call: &Call) -> Result<Value, Exec> {
    match catch_unwind(AssertUnwindSafe(|| cap.execute(call))) {
        Ok(result) => result.map_err(Exec::Cap),
        Err(panic) => {
            let msg = panic_message(&*panic);
            tracing::error!(capability = cap.name(), action = %call.action, "capability panicked: {msg}");
            Err(Exec::Cap(CapabilityError::failed(format!(
                "the capability panicked: {msg}"
            ))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a guest sends are echoed into errors and audit records at most
    /// `MAX_NAME_ECHO` bytes long, cut on a character boundary.
    #[test]
    fn long_names_are_echoed_cut_on_a_char_boundary() {
        let exact = "a".repeat(MAX_NAME_ECHO);
        assert_eq!(echo(&exact), exact);
        let over = "b".repeat(MAX_NAME_ECHO + 1);
        assert_eq!(echo(&over), format!("{}...", &over[..MAX_NAME_ECHO]));
        // A two-byte character straddling the cut is left out whole.
        let straddling = format!("{}é", "c".repeat(MAX_NAME_ECHO - 1));
        assert_eq!(
            echo(&straddling),
            format!("{}...", "c".repeat(MAX_NAME_ECHO - 1))
        );
    }

    /// The list of requests in flight (for `cancel`) forgets finished ones: each requester takes
    /// its own off before it returns, whenever its worker lets go of the job. (It held 1-3 after
    /// 50 requests while workers dropped their jobs after waking the requester; a CI run saw 3.)
    #[test]
    fn finished_requests_leave_the_in_flight_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let rules: crate::Rules = toml::from_str(&format!(
            "[[grants]]\ncapability = \"fs\"\nactions = [\"read\"]\nroots = [\"{root}\"]"
        ))
        .unwrap();
        let broker = crate::Broker::builder().build().unwrap();
        let cell = broker.for_cell("c", &rules).unwrap();
        let mut payload = abi::Map::new();
        payload.insert("root".into(), Value::Str(root.into()));
        payload.insert("path".into(), Value::Str("f".into()));
        for _ in 0..50 {
            let read = cell.request("b", "fs", "read", Value::Map(payload.clone()));
            assert_eq!(read, Ok(Value::Bytes(b"x".to_vec())));
        }
        let held = lock(&cell.cancel.inflight).len();
        assert_eq!(held, 0, "{held} slots held after 50 requests");
    }

    #[test]
    fn audit_timestamps_are_wall_clock_milliseconds() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let at = now_ms();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(before <= at && at <= after, "{before} {at} {after}");
    }
}
