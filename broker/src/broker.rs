//! The broker: the registry of capabilities shared by a supervisor (with its audit sink, stores
//! and worker pool), which checks rules and builds each cell's [`CellBroker`].

use crate::audit::{AuditSink, NoAudit};
use crate::capability::Capability;
use crate::caps::{Clock, Fs, Http, Kv, KvLimits, Random, SecretStore, Secrets};
use crate::cell::CellBroker;
use crate::error::ConfigError;
use crate::pool::{DEFAULT_QUEUE, DEFAULT_WORKERS, Pool};
use crate::quota::QuotaState;
use crate::rules::{Rule, RuleKind, Rules};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time limit of one request when its grant sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `timeout_ms` a rule may set (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

pub(crate) struct Shared {
    pub(crate) caps: BTreeMap<String, Arc<dyn Capability>>,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) default_timeout: Duration,
    pub(crate) pool: Pool,
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
    workers: usize,
    queue: usize,
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
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
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

    /// Size of the worker pool blocking capabilities run on (`workers`, at least 1) and how many
    /// requests may wait for a worker (`queue`); past both, a request is refused at once
    /// (`capability_failed`, "busy"). Default: [`DEFAULT_WORKERS`] and [`DEFAULT_QUEUE`].
    pub fn pool(mut self, workers: usize, queue: usize) -> Self {
        self.workers = workers;
        self.queue = queue;
        self
    }

    /// Adds a third-party capability.
    pub fn register(mut self, capability: Arc<dyn Capability>) -> Self {
        self.extra.push(capability);
        self
    }

    /// Builds the broker: opens the kv store when [`BrokerBuilder::kv_dir`] was set and registers
    /// the built-in capabilities plus any [`BrokerBuilder::register`]ed ones.
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
        if self.workers == 0 {
            return Err(ConfigError::Broker(
                "the worker pool needs at least one worker".into(),
            ));
        }
        Ok(Broker {
            shared: Arc::new(Shared {
                caps,
                audit: self.audit,
                default_timeout: self.default_timeout,
                pool: Pool::new(self.workers, self.queue),
            }),
        })
    }
}

impl Broker {
    /// A builder with no kv store, no secrets, no audit sink and the default timeout and pool.
    ///
    /// ```
    /// use abi::Value;
    /// use cell_broker::{Broker, Rule, Rules};
    ///
    /// let broker = Broker::builder().build()?;
    /// let rules = Rules { grants: vec![Rule::new("clock", &["wall"])], denies: vec![] };
    /// let cell = broker.for_cell("demo", &rules)?;
    /// assert!(matches!(cell.request("subinterp", "clock", "wall", Value::Unit), Ok(Value::Int(_))));
    /// # Ok::<(), cell_broker::ConfigError>(())
    /// ```
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
        if let Some(ms) = rule.timeout_ms
            && (ms == 0 || ms > MAX_TIMEOUT_MS)
        {
            return Err(invalid(format!(
                "`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}"
            )));
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
            cancel: Default::default(),
        })
    }
}
