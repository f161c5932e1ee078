//! The broker: the registry of capabilities shared by a supervisor, and the per-cell request
//! handler built from a cell's rules.

use crate::audit::{AuditRecord, AuditSink, Decision, NoAudit, emit};
use crate::capability::{Call, Capability, PendingDeny, value_bytes};
use crate::caps::{Clock, Fs, Http, Kv, KvLimits, Random, SecretStore, Secrets};
use crate::error::{CapabilityError, ConfigError};
use crate::rules::{Quota, Rule, RuleKind, Rules};
use abi::{CellError, ErrorCode, Value};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time limit of one request when its grant sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `timeout_ms` a rule may set (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest capability or action name echoed into errors and audit records.
const MAX_NAME_ECHO: usize = 64;

struct Shared {
    caps: BTreeMap<String, Arc<dyn Capability>>,
    audit: Arc<dyn AuditSink>,
    default_timeout: Duration,
}

/// The capabilities of one supervisor, its audit sink and its stores. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("capabilities", &self.capabilities())
            .finish()
    }
}

/// Configures a [`Broker`].
pub struct BrokerBuilder {
    extra: Vec<Arc<dyn Capability>>,
    audit: Arc<dyn AuditSink>,
    kv_dir: Option<PathBuf>,
    kv_limits: KvLimits,
    secrets: Secrets,
    default_timeout: Duration,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        BrokerBuilder {
            extra: Vec::new(),
            audit: Arc::new(NoAudit),
            kv_dir: None,
            kv_limits: KvLimits::default(),
            secrets: Secrets::default(),
            default_timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl BrokerBuilder {
    /// Where audit records go (default: only `tracing` and `metrics`).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = sink;
        self
    }

    /// The directory of the persistent `kv` store. Without one, `kv` rules are refused.
    pub fn kv_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.kv_dir = Some(dir.into());
        self
    }

    /// Bounds of the kv store (default: [`KvLimits::default`]).
    pub fn kv_limits(mut self, limits: KvLimits) -> Self {
        self.kv_limits = limits;
        self
    }

    /// The named secrets `secret` grants may expose.
    pub fn secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Time limit of requests whose grant sets no `timeout_ms`.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Adds a third-party capability.
    pub fn register(mut self, capability: Arc<dyn Capability>) -> Self {
        self.extra.push(capability);
        self
    }

    pub fn build(self) -> Result<Broker, ConfigError> {
        let kv = match &self.kv_dir {
            Some(dir) => Kv::open(dir, self.kv_limits)?,
            None => Kv::unconfigured(),
        };
        let builtins: Vec<Arc<dyn Capability>> = vec![
            Arc::new(Clock::new()),
            Arc::new(Random),
            Arc::new(Fs),
            Arc::new(kv),
            Arc::new(SecretStore::new(self.secrets)),
            Arc::new(Http),
        ];
        let mut caps: BTreeMap<String, Arc<dyn Capability>> = BTreeMap::new();
        for cap in builtins.into_iter().chain(self.extra) {
            let name = cap.name().to_string();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(ConfigError::Broker(format!(
                    "capability name `{name}` is invalid: use letters, digits, `_`, `-` or `.`"
                )));
            }
            if caps.insert(name.clone(), cap).is_some() {
                return Err(ConfigError::Broker(format!(
                    "capability `{name}` is registered twice"
                )));
            }
        }
        if self.default_timeout.is_zero() {
            return Err(ConfigError::Broker(
                "the default timeout must be positive".into(),
            ));
        }
        Ok(Broker {
            shared: Arc::new(Shared {
                caps,
                audit: self.audit,
                default_timeout: self.default_timeout,
            }),
        })
    }
}

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Names of the registered capabilities.
    pub fn capabilities(&self) -> Vec<String> {
        self.shared.caps.keys().cloned().collect()
    }

    /// Checks every rule against the registry: known capability and actions, no scope field the
    /// capability does not read, values in range.
    pub fn check(&self, rules: &Rules) -> Result<(), ConfigError> {
        for (kind, list) in [
            (RuleKind::Grant, &rules.grants),
            (RuleKind::Deny, &rules.denies),
        ] {
            for (i, rule) in list.iter().enumerate() {
                self.check_rule(kind, i, rule)?;
            }
        }
        Ok(())
    }

    /// Checks what does not depend on this host or supervisor: for registered capabilities,
    /// known actions, applicable fields and value ranges; for other names only the generic shape
    /// (they may be third-party capabilities registered later). Policy files are checked with it
    /// when they are loaded; [`Broker::for_cell`] checks everything at spawn.
    pub fn check_shape(&self, rules: &Rules) -> Result<(), ConfigError> {
        for (kind, list) in [
            (RuleKind::Grant, &rules.grants),
            (RuleKind::Deny, &rules.denies),
        ] {
            for (i, rule) in list.iter().enumerate() {
                if self.shared.caps.contains_key(&rule.capability) {
                    let cap = self.check_generic(kind, i, rule)?;
                    cap.check_shape(rule, kind)
                        .map_err(|reason| ConfigError::Invalid {
                            rule: format!("{} ({})", kind.label(i), rule.capability),
                            reason,
                        })?;
                } else if rule.actions.is_empty() {
                    return Err(ConfigError::Invalid {
                        rule: format!("{} ({})", kind.label(i), rule.capability),
                        reason: "`actions` is empty: name at least one action, or \"*\"".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_rule(&self, kind: RuleKind, index: usize, rule: &Rule) -> Result<(), ConfigError> {
        let cap = self.check_generic(kind, index, rule)?;
        cap.check_shape(rule, kind)
            .and_then(|()| cap.check_rule(rule, kind))
            .map_err(|reason| ConfigError::Invalid {
                rule: format!("{} ({})", kind.label(index), rule.capability),
                reason,
            })
    }

    fn check_generic(
        &self,
        kind: RuleKind,
        index: usize,
        rule: &Rule,
    ) -> Result<&Arc<dyn Capability>, ConfigError> {
        let label = kind.label(index);
        let invalid = |reason: String| ConfigError::Invalid {
            rule: format!("{label} ({})", rule.capability),
            reason,
        };
        let Some(cap) = self.shared.caps.get(&rule.capability) else {
            return Err(ConfigError::UnknownCapability {
                rule: label,
                capability: rule.capability.clone(),
                known: self.capabilities().join(", "),
            });
        };
        if rule.actions.is_empty() {
            return Err(invalid(
                "`actions` is empty: name at least one action, or \"*\"".into(),
            ));
        }
        for action in &rule.actions {
            if action != "*" && !cap.actions().contains(&action.as_str()) {
                return Err(ConfigError::UnknownAction {
                    rule: label,
                    capability: rule.capability.clone(),
                    action: action.clone(),
                    known: cap.actions().join(", "),
                });
            }
        }
        for field in rule.set_scope_fields() {
            if !cap.scope_fields().contains(&field) {
                return Err(ConfigError::FieldNotApplicable {
                    rule: label,
                    capability: rule.capability.clone(),
                    field,
                });
            }
        }
        if let Some(ms) = rule.timeout_ms {
            if ms == 0 || ms > MAX_TIMEOUT_MS {
                return Err(invalid(format!(
                    "`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}"
                )));
            }
        }
        if let Some(q) = &rule.quota {
            if kind == RuleKind::Deny {
                return Err(invalid("a deny rule cannot carry a `quota`".into()));
            }
            if q.requests.is_none() && q.bytes.is_none() {
                return Err(invalid(
                    "`quota` sets neither `requests` nor `bytes`".into(),
                ));
            }
        }
        if kind == RuleKind::Deny && rule.timeout_ms.is_some() {
            return Err(invalid("a deny rule cannot carry a `timeout_ms`".into()));
        }
        Ok(cap)
    }

    /// The request handler of one cell: checks `rules` and binds them to `cell`.
    pub fn for_cell(&self, cell: &str, rules: &Rules) -> Result<CellBroker, ConfigError> {
        self.check(rules)?;
        Ok(CellBroker {
            shared: self.shared.clone(),
            cell: cell.into(),
            quotas: rules
                .grants
                .iter()
                .map(|_| Mutex::new(QuotaState::new()))
                .collect(),
            grants: rules.grants.iter().cloned().map(Arc::new).collect(),
            denies: rules.denies.iter().cloned().map(Arc::new).collect(),
            cancel: Arc::new(Cancel::default()),
        })
    }
}

struct QuotaState {
    window_start: Instant,
    requests: u64,
    bytes: u64,
}

impl QuotaState {
    fn new() -> Self {
        QuotaState {
            window_start: Instant::now(),
            requests: 0,
            bytes: 0,
        }
    }

    fn roll(&mut self, quota: &Quota) {
        if quota.window_ms > 0
            && self.window_start.elapsed() >= Duration::from_millis(quota.window_ms)
        {
            *self = QuotaState::new();
        }
    }

    fn describe(quota: &Quota) -> String {
        if quota.window_ms == 0 {
            "per cell life".into()
        } else {
            format!("per {} ms", quota.window_ms)
        }
    }

    /// Counts one request carrying `bytes` of payload, or says why the quota refuses it.
    fn admit(&mut self, quota: &Quota, bytes: u64) -> Result<(), String> {
        self.roll(quota);
        if let Some(max) = quota.requests {
            if self.requests >= max {
                return Err(format!(
                    "request quota used up: {max} requests {}",
                    Self::describe(quota)
                ));
            }
        }
        if let Some(max) = quota.bytes {
            if self.bytes.saturating_add(bytes) > max {
                return Err(format!(
                    "byte quota used up: {} of {max} bytes {} used, this payload has {bytes}",
                    self.bytes,
                    Self::describe(quota)
                ));
            }
        }
        self.requests += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        Ok(())
    }

    /// Counts `bytes` of result; past the quota the result is withheld.
    fn settle(&mut self, quota: &Quota, bytes: u64) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(bytes);
        match quota.bytes {
            Some(max) if self.bytes > max => Err(format!(
                "byte quota used up: the result of {bytes} bytes brings the total to {} of {max} bytes {}",
                self.bytes,
                Self::describe(quota)
            )),
            _ => Ok(()),
        }
    }
}

/// Kill switch of one cell's in-flight requests.
#[derive(Default)]
struct Cancel {
    cancelled: AtomicBool,
    inflight: Mutex<Vec<Weak<Slot>>>,
}

/// Where a worker leaves a blocking request's result.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<Value, CapabilityError>>>,
    ready: Condvar,
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

/// The request handler of one cell, built from its rules by [`Broker::for_cell`].
pub struct CellBroker {
    shared: Arc<Shared>,
    cell: String,
    grants: Vec<Arc<Rule>>,
    denies: Vec<Arc<Rule>>,
    quotas: Vec<Mutex<QuotaState>>,
    cancel: Arc<Cancel>,
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
        let start = Instant::now();
        let cap = self.shared.caps.get(capability);
        let known = cap.is_some_and(|c| c.actions().contains(&action));
        let outcome = self.decide_and_run(backend, cap, capability, action, payload);
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
        if let Some(quota) = &rule.quota {
            if let Err(why) = lock(&self.quotas[index]).admit(quota, payload_bytes) {
                return Outcome {
                    decision: Decision::Deny,
                    rule: format!("{label}.quota"),
                    result: Err(quota_err(why)),
                    bytes: 0,
                };
            }
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
        };
        let result = if cap.is_quick() {
            run_guarded(&**cap, &call)
        } else {
            self.run_on_worker(cap.clone(), call, timeout)
        };
        if let Err(Exec::Cap(CapabilityError::Denied { rule, reason })) = result {
            // A deny rule decided on the object the capability opened: that rule is named.
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

    /// Runs a blocking capability on a worker thread and waits for its result, the timeout or
    /// the cell's kill, whichever comes first. An abandoned worker finishes on its own (its I/O
    /// has the same timeout) and its result is dropped.
    fn run_on_worker(
        &self,
        cap: Arc<dyn Capability>,
        call: Call,
        timeout: Duration,
    ) -> Result<Value, Exec> {
        let slot = Arc::new(Slot::default());
        {
            let mut inflight = lock(&self.cancel.inflight);
            inflight.retain(|w| w.strong_count() > 0);
            inflight.push(Arc::downgrade(&slot));
        }
        let worker_slot = slot.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("broker-{}", cap.name()))
            .spawn(move || {
                let result = run_guarded(&*cap, &call);
                // Release the capability before reporting, so once the caller has the result
                // no worker keeps the broker's stores (e.g. the kv file lock) alive.
                drop(cap);
                drop(call);
                *lock(&worker_slot.result) = Some(result.map_err(|e| match e {
                    Exec::Cap(e) => e,
                    Exec::Cancelled => CapabilityError::failed("cancelled"),
                }));
                worker_slot.ready.notify_all();
            });
        if let Err(e) = spawned {
            return Err(Exec::Cap(CapabilityError::failed(format!(
                "cannot start a worker thread: {e}"
            ))));
        }
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&slot.result);
        loop {
            if let Some(result) = guard.take() {
                return result.map_err(Exec::Cap);
            }
            if self.cancel.cancelled.load(Ordering::SeqCst) {
                return Err(Exec::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Exec::Cap(CapabilityError::TimedOut(format!(
                    "no result within {} ms",
                    timeout.as_millis()
                ))));
            }
            guard = slot
                .ready
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
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
