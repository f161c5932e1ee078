//! The supervisor: backends by name, named cells.

use crate::broker_handler::BrokerHandler;
use crate::builder::SupervisorBuilder;
use crate::cell::{Cell, CellInfo};
use crate::names::Names;
use crate::policy::Policy;
use crate::shown::shown;
use abi::CellError;
use abi::backend::{Backend, SpawnError};
use host::CellHost;
use host::{DenyAll, RequestHandler};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Why a cell could not be spawned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The policy or caller names a backend this supervisor does not have.
    #[error("unknown backend `{name}` (known: {known})")]
    UnknownBackend {
        /// The name asked for (escaped, cut after 64 characters).
        name: String,
        /// The backends this supervisor has, comma-separated.
        known: String,
    },
    /// The name is empty, too long, only dots, or has characters outside `[A-Za-z0-9-_.]`
    /// (quoted escaped, cut after 64 characters).
    #[error("invalid cell name `{0}`: use 1 to 64 letters, digits, `-`, `_` or `.`, not only dots")]
    InvalidName(String),
    /// A live cell already has this name.
    #[error("a cell named `{0}` is already running")]
    NameTaken(String),
    /// The backend could not spawn the cell.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The guest refused the handshake (ABI version, schema, limits).
    #[error("the cell refused the handshake: {0}")]
    Handshake(CellError),
    /// The policy's grants do not hold on this supervisor (unknown capability, missing root,
    /// unconfigured secret or kv store, ...).
    #[error("the policy's grants are refused: {0}")]
    Grants(broker::ConfigError),
    /// The policy's memory limit is more than this host's RAM: refused on every backend alike
    /// (a limit no boundary can hold; the process and microVM boundaries cannot even be built).
    #[error("limits.memory_mib is {asked_mib}, more than this host's {host_mib} MiB of RAM")]
    MemoryOverHost {
        /// The policy's `memory_mib`.
        asked_mib: u64,
        /// This host's RAM in MiB.
        host_mib: u64,
    },
}

/// This host's physical RAM in bytes (`MemTotal`, the `_SC_PHYS_PAGES` the boundaries check
/// against), `None` if the system does not say. Read once: every spawn checks against it, and
/// reading `/proc/meminfo` costs about twice a whole subinterp spawn.
fn host_ram_bytes() -> Option<u64> {
    static RAM: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *RAM.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// Owns the backends and keeps track of the cells spawned through it. Spawns on one supervisor
/// run in parallel, from any number of threads.
pub struct Supervisor {
    backends: RwLock<BTreeMap<String, Arc<dyn Backend>>>,
    names: Arc<Names>,
    requests: RwLock<Arc<dyn RequestHandler>>,
    /// Capabilities, stores and audit sink; created with defaults on first use.
    broker: RwLock<Option<broker::Broker>>,
    /// Whether [`Supervisor::set_broker`] attached the broker. The one made with defaults when
    /// a policy first grants something serves policies with rules only: a cell whose policy has
    /// none gets the request handler whatever cells were spawned before it, so its refusals
    /// read the same on every run.
    attached: AtomicBool,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor with every built-in backend of this build registered (cargo features
    /// `subinterp`, `process`, `microvm`) and no capability granted.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a supervisor: backends (built-in or a third party's), broker, request handler.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::new()
    }

    /// No backend, deny-all requests.
    pub(crate) fn empty() -> Self {
        Supervisor {
            backends: RwLock::default(),
            names: Arc::default(),
            requests: RwLock::new(Arc::new(DenyAll)),
            broker: RwLock::new(None),
            attached: AtomicBool::new(false),
        }
    }

    /// Adds (or replaces) a backend under its name; third-party backends plug in here.
    pub fn register_backend(&self, backend: Arc<dyn Backend>) {
        self.backends
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(backend.name().to_string(), backend);
    }

    /// Where `request(...)` goes for cells spawned from now on.
    pub fn set_request_handler(&self, handler: Arc<dyn RequestHandler>) {
        *self.requests.write().unwrap_or_else(|e| e.into_inner()) = handler;
    }

    /// The broker that serves cells spawned from now on: their policy's grants are checked
    /// against its capabilities and every request is audited to its sink.
    pub fn set_broker(&self, broker: broker::Broker) {
        *self.broker.write().unwrap_or_else(|e| e.into_inner()) = Some(broker);
        self.attached.store(true, Ordering::SeqCst);
    }

    /// The attached broker, or a default one (built-in capabilities, no kv store, no secrets,
    /// audit to `tracing`/`metrics` only) created now.
    pub fn broker(&self) -> Result<broker::Broker, broker::ConfigError> {
        if let Some(b) = &*self.broker.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(b.clone());
        }
        let mut slot = self.broker.write().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &*slot {
            return Ok(b.clone());
        }
        let b = broker::Broker::builder().build()?;
        *slot = Some(b.clone());
        Ok(b)
    }

    /// The request handler of a new cell: the broker's, built from the policy's grants, when
    /// the policy has rules or a broker is attached; else the supervisor's handler (deny-all
    /// unless replaced).
    fn request_handler(
        &self,
        name: &str,
        policy: &Policy,
    ) -> Result<Arc<dyn RequestHandler>, SupervisorError> {
        let rules = policy.rules();
        if rules.is_empty() && !self.attached.load(Ordering::SeqCst) {
            return Ok(self
                .requests
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone());
        }
        let broker = self.broker().map_err(SupervisorError::Grants)?;
        let cell = broker
            .for_cell(name, &rules)
            .map_err(SupervisorError::Grants)?;
        Ok(Arc::new(BrokerHandler(cell)))
    }

    /// The backend registered as `name`, if there is one.
    pub fn backend(&self, name: &str) -> Option<Arc<dyn Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Registered backends with `Ok` or the reason each is unavailable here.
    pub fn backends(&self) -> Vec<(String, Result<(), String>)> {
        let backends = self.backends.read().unwrap_or_else(|e| e.into_inner());
        backends
            .iter()
            .map(|(name, b)| (name.clone(), b.available()))
            .collect()
    }

    /// Every registered backend with its confinement layers on this host (for `cell doctor`).
    pub fn host_layers(&self) -> Vec<(String, Vec<abi::backend::Layer>)> {
        let backends = self.backends.read().unwrap_or_else(|e| e.into_inner());
        backends
            .iter()
            .map(|(name, b)| (name.clone(), b.host_layers()))
            .collect()
    }

    /// Spawns a cell named `name` on `backend` under `policy` and completes the handshake.
    ///
    /// ```no_run
    /// use cell_supervisor::{Policy, Supervisor};
    ///
    /// let supervisor = Supervisor::new();
    /// let mut policy = Policy::default();
    /// policy.limits.max_operations = 100_000;
    /// let cell = supervisor.spawn("demo", "subinterp", &policy)?;
    /// assert_eq!(cell.exec("40 + 2")?, abi::Value::Int(42));
    /// cell.close();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn(
        &self,
        name: &str,
        backend: &str,
        policy: &Policy,
    ) -> Result<Cell, SupervisorError> {
        let _span = tracing::info_span!("spawn", cell = name, backend).entered();
        // Only dots (`.`, `..`) is refused too: names become parts of paths and labels.
        if name.is_empty()
            || name.len() > 64
            || name.bytes().all(|b| b == b'.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(SupervisorError::InvalidName(shown(name)));
        }
        let imp = self
            .backend(backend)
            .ok_or_else(|| SupervisorError::UnknownBackend {
                name: shown(backend),
                known: self
                    .backends
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        // The name is held, not locked: other spawns proceed while this one greets its cell.
        let reservation = self.names.reserve(name)?;
        let spec = policy.spawn_spec(name);
        if let Some(ram) = host_ram_bytes()
            && spec.resources.memory_bytes > ram
        {
            return Err(SupervisorError::MemoryOverHost {
                asked_mib: spec.resources.memory_bytes >> 20,
                host_mib: ram >> 20,
            });
        }
        host::check_hello(&spec.hello).map_err(SupervisorError::Handshake)?;
        let requests = self.request_handler(name, policy)?;
        let host = Arc::new(
            CellHost::new(name, backend, policy.channel.clone(), requests)
                .with_resources(spec.resources.clone()),
        );
        let pipe = imp.spawn(&spec, host.clone())?;
        let cell = Cell::new(
            name,
            backend,
            host,
            pipe,
            policy.wall_time(),
            reservation.names(),
        );
        cell.handshake(spec.hello)
            .map_err(SupervisorError::Handshake)?;
        reservation.fill(&cell.inner);
        metrics::counter!("cell.spawned", "backend" => backend.to_string()).increment(1);
        Ok(cell)
    }

    /// The cells this supervisor spawned that still exist (alive, or dead with a handle still
    /// held and no newer cell of the same name), by name.
    pub fn list(&self) -> Vec<CellInfo> {
        let mut cells: Vec<CellInfo> = self
            .names
            .cells()
            .into_iter()
            .map(|inner| Cell { inner }.info())
            .collect();
        cells.sort_by(|a, b| a.name.cmp(&b.name));
        cells
    }

    /// The handle of a cell by name.
    pub fn get(&self, name: &str) -> Option<Cell> {
        self.names.get(name).map(|inner| Cell { inner })
    }
}
