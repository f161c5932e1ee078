//! One node: its supervisor, its cells by id, tenants, quotas, expiry. Everything here is
//! synchronous; the HTTP layer calls the blocking parts through `api::blocking`.
//!
//! Why one file of about 900 lines: a create, a removal, the reaper and a drain each move several
//! of the node's counts together (places under `max_cells`, the tenant's quota reservation, the
//! expiry index, the idempotency slot, the live-cell gauge), and each must give back exactly
//! what it took on every path. Kept side by side, the take and the give-back of each count can
//! be read against each other; the cell's own record (`Entry`) sits with them for that reason.

use crate::config::{ServeConfig, valid_node_name};
use crate::dead::DeadCells;
use crate::error::ApiError;
use crate::events::EventBuffer;
use crate::idempotency::{Claim, Keys, Lead};
use crate::quota::{self, Held, HeldSlot, Ledger, Reservation};
use crate::tenants::{Tenant, Tenants, TenantsError};
use serde::Deserialize;
use serde_json::{Value as J, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use supervisor::shown::shown;
use supervisor::{Cell, CellState, Supervisor, SupervisorError, Value};
use tokio::sync::{Notify, watch};
use toml::Table;

/// `POST /v1/cells`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Backend to spawn on (default: the policy's, else `subinterp`).
    pub backend: Option<String>,
    /// Name of a tenant policy to spawn under (default: the tenant's base policy).
    pub policy: Option<String>,
    /// Source to run once after the spawn; if it fails the cell is killed and the error returned.
    pub source: Option<String>,
    /// Lifetime in milliseconds (default and cap: the node's limits).
    pub ttl_ms: Option<u64>,
    /// Free-form labels, returned with the cell.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A repeated create with the same key returns the same cell.
    pub idempotency_key: Option<String>,
    /// Kill the cell when a client reading its events disconnects (default: never).
    #[serde(default)]
    pub kill_on_disconnect: bool,
}

impl CreateRequest {
    /// A hash of everything the create asks for but its idempotency key: a repeated key must
    /// come with the same request.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (
            &self.backend,
            &self.policy,
            &self.source,
            self.ttl_ms,
            &self.labels,
            self.kill_on_disconnect,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// Most labels one cell may carry, and their keys' and values' longest (bytes): a cell's labels
/// live as long as it, so the body cap alone would let each cell hold a megabyte of them.
pub const MAX_LABELS: usize = 64;
/// The longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 128;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// The longest idempotency key, in bytes (it is kept while its cell lives).
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

impl CreateRequest {
    /// Refuses labels and keys past their bounds, naming the bound.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.labels.len() > MAX_LABELS {
            return Err(ApiError::bad_request(format!(
                "{} labels, at most {MAX_LABELS} are allowed",
                self.labels.len()
            )));
        }
        if let Some((k, v)) = self
            .labels
            .iter()
            .find(|(k, v)| k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE)
        {
            return Err(ApiError::bad_request(format!(
                "label of {} key bytes and {} value bytes: keys may have at most {MAX_LABEL_KEY}, values {MAX_LABEL_VALUE}",
                k.len(),
                v.len()
            )));
        }
        if self
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(ApiError::bad_request(format!(
                "the idempotency key is longer than {MAX_IDEMPOTENCY_KEY} bytes"
            )));
        }
        Ok(())
    }
}

/// One cell as the service holds it.
pub struct Entry {
    /// The cell id, prefixed by the node's name.
    pub id: String,
    /// The tenant that owns the cell.
    pub tenant: String,
    /// The backend it runs on.
    pub backend: String,
    /// The tenant policy it was spawned under, if one was named.
    pub policy: Option<String>,
    /// The supervisor's cell.
    pub cell: Cell,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    expires: Mutex<Expiry>,
    /// The labels given at creation.
    pub labels: BTreeMap<String, String>,
    /// Events kept for reconnecting readers.
    pub events: EventBuffer,
    /// Told by the cell's listener when it queues an event or dies; an open stream drains then.
    pub live: Arc<Notify>,
    /// Kill the cell when a client reading its events disconnects.
    pub kill_on_disconnect: bool,
    /// Most events the cell's queue holds at once (its policy's `channel.max_queued_events`):
    /// a drain of that many moves every event queued when it began, and ends even while
    /// another exec posts.
    queue_bound: usize,
    /// Event streams open on this cell: while there is one, a cell whose queue is full waits
    /// for the stream to drain it (backpressure) instead of being stopped.
    streams: AtomicUsize,
    idempotency_key: Option<String>,
    reservation: Reservation,
    released: AtomicBool,
    busy: Mutex<Duration>,
}

/// When a cell expires, and whether its life has ended (removed, reaped): one lock, so that an
/// extension and the reaper's verdict cannot cross — an extension after the end is refused, and
/// the reaper ends only a cell whose expiry, looked at under that lock, has passed.
struct Expiry {
    at: Instant,
    at_ms: u64,
    ended: bool,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Entry {
    /// A stream opened on this cell: from the first one, a full event queue makes the cell wait
    /// for the streams to drain it rather than stop it, so what a streamed exec says and how it
    /// ends does not depend on how fast each backend posts against how fast the node drains (a
    /// flood of 25,000 posts was stopped on subinterp and microvm and ran on process).
    pub fn stream_opened(&self) {
        if self.streams.fetch_add(1, Ordering::SeqCst) == 0 {
            self.cell.set_backpressure(true);
        }
    }

    /// A stream on this cell ended: with none left, a full queue stops the cell again (nobody
    /// drains it until the exec ends).
    pub fn stream_closed(&self) {
        if self.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.cell.set_backpressure(false);
        }
    }

    /// When the cell expires, milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> u64 {
        self.expiry().at_ms
    }

    fn expiry(&self) -> MutexGuard<'_, Expiry> {
        self.expires.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the cell's life if its expiry has passed by `now` (the reaper's verdict).
    fn end_if_expired(&self, now: Instant) -> bool {
        let mut e = self.expiry();
        if e.at <= now && !e.ended {
            e.ended = true;
            true
        } else {
            false
        }
    }

    /// Whether the cell can still run code.
    pub fn alive(&self) -> bool {
        self.cell.state() == CellState::Alive
    }

    /// The cell as the API returns it: state, labels, times and stats.
    pub fn to_json(&self, node: &str) -> J {
        let info = self.cell.info();
        let (state, reason) = match &info.state {
            CellState::Alive => ("alive", J::Null),
            CellState::Dead(e) => (
                "dead",
                json!({ "code": e.code.name(), "message": e.message }),
            ),
        };
        let busy = *self.busy.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "id": self.id, "node": node, "backend": self.backend, "policy": self.policy,
            "state": state, "reason": reason, "labels": self.labels,
            "created_at": self.created_ms, "expires_at": self.expires_at_ms(),
            "stats": {
                "ops": info.stats.transactions, "events": info.stats.events,
                "requests": info.stats.requests, "violations": info.stats.violations,
                "busy_ms": busy.as_millis() as u64,
                "memory_bytes": info.usage.memory_bytes,
                "cpu_time_ms": info.usage.cpu_time_ms,
                "memory_limit_mib": self.reservation.memory_mib,
                "cpu_time_limit_ms": self.reservation.cpu_time_ms,
                "last_seq": self.events.last_seq(),
            },
        })
    }
}

/// One node: its configuration, supervisor, cells, tenants and quotas.
pub struct Node {
    /// What the node was started with.
    pub config: ServeConfig,
    /// Spawns and holds the cells.
    pub supervisor: Supervisor,
    cells: Mutex<HashMap<String, Arc<Entry>>>,
    /// Idempotency keys: the cells made with them, and the creates running with them now.
    keys: Arc<Keys>,
    /// Dead cells kept for their reason and events, bounded node-wide.
    dead: DeadCells,
    expiry: Mutex<BTreeSet<(Instant, String)>>,
    tenants: RwLock<Arc<Tenants>>,
    /// Per-tenant usage against the tenants' quotas.
    pub ledger: Ledger,
    draining: AtomicBool,
    /// Woken when the earliest expiry may have moved earlier.
    pub reaper: Notify,
    /// Cells held plus creates under way, for drain to wait on.
    pub count: watch::Sender<usize>,
    /// Set when the node kills every cell (the end of a drain): a create still under way then
    /// kills its cell instead of adding it to a node that has stopped.
    closed: AtomicBool,
    streams: Arc<Held>,
    /// Execs and calls running now, per tenant.
    execs: Arc<Held>,
    /// Open event streams on this node.
    pub open_streams: watch::Sender<usize>,
    /// Open client connections; one is counted off once its requests' handlers are dropped.
    pub connections: watch::Sender<usize>,
    /// Blocking calls running in place on async workers now.
    in_place: AtomicUsize,
    /// Cells held plus creates under way, bounded by `max_cells`: counted before the spawn, so
    /// concurrent creates cannot pass the bound.
    places: AtomicUsize,
}

/// One place in a count bounded by a maximum (a blocking call running in place, a cell held or
/// being made), returned when dropped.
pub struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    /// A place in `count` if it is under `max`.
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Counted<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Counted(count))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A create's place among the node's cells (`max_cells`), returned if the create fails.
struct CellPlace<'a> {
    node: &'a Node,
    kept: bool,
}

impl Drop for CellPlace<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.node.places.fetch_sub(1, Ordering::AcqRel);
            self.node.publish_count();
        }
    }
}

/// Loads the base policy tree and the tenants as the config says.
pub fn load_tenants(config: &ServeConfig) -> Result<Tenants, TenantsError> {
    let base: Table = match &config.policy_file {
        None => Table::new(),
        Some(path) => {
            let text =
                supervisor::read_text(path, supervisor::MAX_FILE_BYTES).map_err(|source| {
                    TenantsError::Read {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
            toml::from_str(&text)?
        }
    };
    match &config.tenants_file {
        Some(path) => Tenants::load(path, &base),
        None => Tenants::single(config.api_key.as_deref(), &base),
    }
}

impl Node {
    /// A node serving `tenants` under `config`.
    pub fn new(config: ServeConfig, tenants: Tenants) -> Node {
        let supervisor = Supervisor::new();
        if config.microvm_hosted {
            // Replaces the default `microvm` backend under the same name.
            supervisor.register_backend(Arc::new(backend_microvm::MicroVm::hosted()));
        }
        let dead = DeadCells::new(
            config.limits.max_dead_event_bytes,
            config.limits.max_dead_cells,
        );
        Node {
            config,
            supervisor,
            cells: Mutex::default(),
            keys: Arc::default(),
            dead,
            expiry: Mutex::default(),
            tenants: RwLock::new(Arc::new(tenants)),
            ledger: Ledger::default(),
            draining: AtomicBool::new(false),
            reaper: Notify::new(),
            count: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            streams: Arc::default(),
            execs: Arc::default(),
            open_streams: watch::Sender::new(0),
            connections: watch::Sender::new(0),
            in_place: AtomicUsize::new(0),
            places: AtomicUsize::new(0),
        }
    }

    /// A slot to run a blocking call in place, if fewer than `max` do now.
    pub fn in_place(&self, max: usize) -> Option<Counted<'_>> {
        Counted::take(&self.in_place, max)
    }

    /// The tenants now in force (replaced on reload).
    pub fn tenants(&self) -> Arc<Tenants> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads tenants and the base policy; an invalid file is refused and the old one kept.
    /// Live cells keep the policy they were made with.
    pub fn reload(&self) -> Result<(), TenantsError> {
        match load_tenants(&self.config) {
            Ok(t) => {
                *self.tenants.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
                metrics::counter!("cell_service_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!("tenants and policy reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!("cell_service_reloads_total", "outcome" => "refused")
                    .increment(1);
                tracing::error!("reload refused, the previous tenants and policy stay: {e}");
                Err(e)
            }
        }
    }

    /// Whether the node is draining (refusing new cells).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts draining: new cells are refused from now on.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idempotency keys remembered: those of live cells and of creates running now.
    pub fn idempotency_keys(&self) -> usize {
        self.keys.remembered()
    }

    /// Creates waiting now on another create with the same idempotency key.
    pub fn idempotency_waiting(&self) -> watch::Receiver<usize> {
        self.keys.waiting.subscribe()
    }

    /// Claims the idempotency key of a create of `tenant` (waiting, without a thread, while
    /// another create with it runs): the cell made with it, or the lead to pass to
    /// [`Node::create`]. Past the node's `idempotent_waits_per_tenant` waiting creates, a
    /// `quota_exceeded`; a key another request claimed, `idempotency_key_reused`.
    pub async fn claim_key(
        &self,
        tenant: &Tenant,
        req: &CreateRequest,
        key: &str,
    ) -> Result<Claim<Arc<Entry>>, ApiError> {
        let max = self.config.limits.idempotent_waits_per_tenant;
        let request = req.fingerprint();
        self.keys
            .claim(&tenant.name, key, request, max, |id| {
                self.locked().get(id).cloned()
            })
            .await
    }

    /// Number of cells held.
    pub fn len(&self) -> usize {
        self.locked().len()
    }

    /// Whether no cell is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node a cell id names; `None` when that is not a node name: an id is the client's text, and its node part
    /// becomes a redirect's host (`--peer-url 'http://{node}.cell:8080'`), so `evil.com/x?_1`
    /// must not send the client, and its key, to `evil.com`.
    pub fn owner(id: &str) -> Option<&str> {
        id.rsplit_once('_')
            .map(|(node, _)| node)
            .filter(|node| valid_node_name(node))
    }

    /// The tenant's cell `id`, a redirect to the node holding it, or 404.
    pub fn find(&self, tenant: &Tenant, id: &str, path: &str) -> Result<Arc<Entry>, ApiError> {
        match Node::owner(id) {
            Some(node) if node != self.config.node => {
                return match self.config.peers.url(node) {
                    Some(base) => Err(ApiError::redirect(node, format!("{base}{path}"))),
                    None => Err(ApiError::cell_not_found(id)),
                };
            }
            None => return Err(ApiError::cell_not_found(id)),
            Some(_) => {}
        }
        let found = match self.locked().get(id) {
            Some(e) if e.tenant == tenant.name => e.clone(),
            _ => return Err(ApiError::cell_not_found(id)),
        };
        self.settle_if_dead(&found);
        Ok(found)
    }

    /// The cells of `tenant`, ordered by id.
    pub fn list(&self, tenant: &str) -> Vec<Arc<Entry>> {
        let mut out: Vec<_> = self
            .locked()
            .values()
            .filter(|e| e.tenant == tenant)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        for entry in &out {
            self.settle_if_dead(entry);
        }
        out
    }

    /// A cell seen dead (after a transaction, or found so: a process cell killed from outside
    /// between transactions) gives back what it holds and joins the dead cells, once.
    fn settle_if_dead(&self, entry: &Entry) {
        if !entry.alive() && self.release(entry) {
            self.keep_dead(entry);
        }
    }

    fn ttl(&self, ttl_ms: Option<u64>) -> Duration {
        ttl_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.limits.default_ttl)
            .min(self.config.limits.max_ttl)
    }

    /// Refuses a create at once: labels or key past their bounds, or a draining node.
    pub fn admit(&self, req: &CreateRequest) -> Result<(), ApiError> {
        req.check()?;
        if self.draining() {
            return Err(ApiError::new(
                "draining",
                "this node is draining: create the cell elsewhere",
            ));
        }
        Ok(())
    }

    /// Creates a cell (blocking: spawns, and runs `source` when given). With `lead` (its
    /// idempotency key claimed by [`Node::claim_key`]), tells the creates waiting on the key
    /// how it went.
    pub fn create(
        &self,
        tenant: &Tenant,
        req: CreateRequest,
        lead: Option<Lead>,
    ) -> Result<Arc<Entry>, ApiError> {
        let made = self.make(tenant, req);
        if let Some(lead) = lead {
            let id = made.as_ref().map(|e| e.id.as_str());
            lead.finish(id, |id| self.locked().contains_key(id));
        }
        made
    }

    fn make(&self, tenant: &Tenant, req: CreateRequest) -> Result<Arc<Entry>, ApiError> {
        self.admit(&req)?;
        let policy = tenant.policy(req.policy.as_deref()).ok_or_else(|| {
            ApiError::new(
                "unknown_policy",
                format!(
                    "tenant `{}` has no policy `{}`",
                    tenant.name,
                    shown(req.policy.as_deref().unwrap_or(""))
                ),
            )
        })?;
        let backend = req
            .backend
            .clone()
            .or_else(|| policy.backend.clone())
            .unwrap_or_else(|| "subinterp".into());
        let Some(imp) = self.supervisor.backend(&backend) else {
            return Err(ApiError::new(
                "unknown_backend",
                format!("unknown backend `{}`", shown(&backend)),
            ));
        };
        if !tenant.allows_backend(&backend) {
            return Err(ApiError::new(
                "forbidden",
                format!("tenant `{}` may not use backend `{backend}`", tenant.name),
            ));
        }
        if let Err(why) = imp.available() {
            return Err(ApiError::new(
                "backend_unavailable",
                format!("backend `{backend}` is unavailable on this node: {why}"),
            ));
        }
        self.spawn_cell(tenant, req, policy, backend)
    }

    /// Spawns the cell `create` asked for (`source` run, the cell in the table, its expiry set).
    fn spawn_cell(
        &self,
        tenant: &Tenant,
        req: CreateRequest,
        policy: supervisor::Policy,
        backend: String,
    ) -> Result<Arc<Entry>, ApiError> {
        let max = self.config.limits.max_cells;
        if self
            .places
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ApiError::new(
                "backend_unavailable",
                "this node holds as many cells as it may",
            ));
        }
        let mut place = CellPlace {
            node: self,
            kept: false,
        };
        self.publish_count();
        let reservation = Reservation {
            memory_mib: policy.limits.memory_mib,
            cpu_time_ms: policy.limits.cpu_time_ms,
        };
        self.ledger
            .reserve(&tenant.name, &tenant.quotas, reservation)?;
        let id = format!("{}_{}", self.config.node, random_suffix());
        let started = Instant::now();
        let cell = match self.supervisor.spawn(&id, &backend, &policy) {
            Ok(c) => c,
            Err(e) => {
                self.ledger.release(&tenant.name, reservation);
                return Err(spawn_error(e));
            }
        };
        metrics::histogram!("cell_service_spawn_seconds", "backend" => backend.clone())
            .record(started.elapsed().as_secs_f64());
        let ttl = self.ttl(req.ttl_ms);
        let now = SystemTime::now();
        // Wakes the cell's open streams, which drain it: no thread per cell, nothing polls.
        let live = Arc::new(Notify::new());
        cell.set_listener(Some({
            let live = live.clone();
            Arc::new(move || live.notify_one())
        }));
        let entry = Arc::new(Entry {
            id: id.clone(),
            tenant: tenant.name.clone(),
            backend: backend.clone(),
            policy: req.policy.clone().or(tenant.default_policy.clone()),
            cell,
            created_ms: unix_ms(now),
            expires: Mutex::new(Expiry {
                at: Instant::now() + ttl,
                at_ms: unix_ms(now + ttl),
                ended: false,
            }),
            labels: req.labels,
            events: EventBuffer::new(
                self.config.limits.event_buffer,
                self.config.limits.event_buffer_bytes,
            ),
            live,
            kill_on_disconnect: req.kill_on_disconnect,
            queue_bound: policy.channel.max_queued_events,
            streams: AtomicUsize::new(0),
            idempotency_key: req.idempotency_key,
            reservation,
            released: AtomicBool::new(false),
            busy: Mutex::default(),
        });
        if let Some(source) = &req.source
            && let Err(e) = self.run(&entry, |c| c.exec(source))
        {
            self.release(&entry);
            self.ledger.release_cell(&tenant.name);
            entry.cell.kill();
            return Err(e);
        }
        {
            let mut cells = self.locked();
            if self.closed.load(Ordering::SeqCst) {
                drop(cells);
                self.release(&entry);
                self.ledger.release_cell(&tenant.name);
                entry.cell.kill();
                return Err(ApiError::new(
                    "draining",
                    "the node stopped while the cell was being made",
                ));
            }
            cells.insert(id.clone(), entry.clone());
        }
        place.kept = true;
        self.set_expiry(&entry, ttl);
        metrics::gauge!("cell_service_cells", "backend" => backend, "state" => "alive")
            .increment(1.0);
        tracing::info!(target: "cell_service::audit", tenant = %tenant.name, cell = %id, "create");
        Ok(entry)
    }

    /// Runs exec or call on the cell (blocking), then moves its events to the buffer (an open
    /// stream moves them as they come).
    pub fn run(
        &self,
        entry: &Entry,
        op: impl FnOnce(&Cell) -> Result<Value, supervisor::CellError>,
    ) -> Result<Value, ApiError> {
        let started = Instant::now();
        let result = op(&entry.cell);
        let took = started.elapsed();
        *entry.busy.lock().unwrap_or_else(|e| e.into_inner()) += took;
        metrics::histogram!("cell_service_exec_seconds", "backend" => entry.backend.clone())
            .record(took.as_secs_f64());
        entry
            .events
            .drain(&entry.cell, entry.queue_bound, usize::MAX);
        self.settle_if_dead(entry);
        result.map_err(ApiError::from)
    }

    /// Keeps a cell just seen dead among the node's dead cells, reaping others early when they
    /// pass the node's bounds (`max_dead_cells`, `max_dead_event_bytes`): the oldest of the
    /// tenant that holds the most.
    fn keep_dead(&self, entry: &Entry) {
        let bytes = entry.events.bytes();
        // A cell that died in its create's `source` was never added (the create fails and
        // kills it): recorded, it would push out others' dead cells until it came up as oldest.
        let gone = || entry.expiry().ended || !self.locked().contains_key(&entry.id);
        let reap = self.dead.add(&entry.id, &entry.tenant, bytes, gone);
        for id in reap {
            let Some(old) = self.locked().get(&id).cloned() else {
                continue;
            };
            tracing::info!(target: "cell_service::audit", tenant = %old.tenant, cell = %id, "reaped: past the node's bound of dead cells, the oldest of the tenant holding the most");
            metrics::counter!("cell_service_evictions_total", "reason" => "dead_cells")
                .increment(1);
            self.remove(
                &old,
                "cancelled",
                "the cell was dead and the node keeps a bounded number of dead cells and bytes of their events: it was reaped early, the oldest of the tenant holding the most",
            );
        }
    }

    /// Dead cells the node keeps now, and the bytes of events they hold.
    pub fn dead_cells(&self) -> (usize, usize) {
        self.dead.held()
    }

    /// Returns the cell's memory and CPU-time reservation and what its boundary holds, once. A
    /// cell seen dead stays listed (its reason and events are read until it is deleted or
    /// expires), but its engine and heap (subinterp), child process and cgroups (process) or VM
    /// (microvm) are given back now: the quota no longer counts them, so kept to the cell's
    /// expiry they would let a tenant hold any number of dead cells' memory past its quota. The
    /// cell itself still counts against the tenant's `live_cells` until [`Node::remove`]: it
    /// holds a `max_cells` place and its buffered events until then, and a tenant whose cells
    /// die must not fill the node past its quota with them.
    /// Whether this call gave them back (the first).
    fn release(&self, entry: &Entry) -> bool {
        if entry.released.swap(true, Ordering::SeqCst) {
            return false;
        }
        // Events queued before the death stay receivable; the death's reason stays first.
        entry.cell.close();
        self.ledger.release_limits(&entry.tenant, entry.reservation);
        metrics::gauge!("cell_service_cells", "backend" => entry.backend.clone(), "state" => "alive")
            .decrement(1.0);
        true
    }

    /// Moves the cell's expiry to `ttl` from now; false once its life has ended.
    fn set_expiry(&self, entry: &Entry, ttl: Duration) -> bool {
        let at = Instant::now() + ttl;
        let old = {
            let mut e = entry.expiry();
            if e.ended {
                return false;
            }
            let old = e.at;
            e.at = at;
            e.at_ms = unix_ms(SystemTime::now() + ttl);
            old
        };
        let mut index = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        index.remove(&(old, entry.id.clone()));
        index.insert((at, entry.id.clone()));
        if index.first().is_some_and(|(t, _)| *t == at) {
            self.reaper.notify_one();
        }
        true
    }

    /// Extends the cell's life to `ttl_ms` from now; false if it has ended (removed or reaped
    /// while the request ran): the caller answers `cell_not_found`, not a life it did not give.
    pub fn extend(&self, entry: &Entry, ttl_ms: u64) -> bool {
        self.set_expiry(entry, self.ttl(Some(ttl_ms)))
    }

    /// Kills and forgets a cell.
    pub fn remove(&self, entry: &Entry, code: &str, why: &str) {
        entry.expiry().ended = true;
        // Out of the table first: a reader that saw the `closed` line finds the cell gone. The
        // count drain waits on drops once the boundary is released, below.
        if self.locked().remove(&entry.id).is_some() {
            // The place `spawn_cell` kept, and the tenant's count of cells held; removed twice
            // (a delete racing the reaper) once.
            self.places.fetch_sub(1, Ordering::AcqRel);
            self.ledger.release_cell(&entry.tenant);
        }
        // Events the cell sent first, then the reason, then the kill (whose own reason the
        // closed buffer no longer takes).
        entry
            .events
            .drain(&entry.cell, entry.queue_bound, usize::MAX);
        entry.events.close(code, why);
        entry.cell.kill();
        self.release(entry);
        if let Some(key) = &entry.idempotency_key {
            self.keys.forget(&entry.tenant, key, &entry.id);
        }
        // After its end was set above: a death recorded from now on is refused.
        self.dead.forget(&entry.id);
        let at = entry.expiry().at;
        self.expiry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(at, entry.id.clone()));
        self.publish_count();
    }

    /// Tells drain how many cells are held or being made.
    fn publish_count(&self) {
        self.count.send_replace(self.places.load(Ordering::Acquire));
    }

    /// Kills cells past their expiry; returns the next expiry.
    pub fn reap(&self) -> Option<Instant> {
        let now = Instant::now();
        loop {
            let next = {
                let index = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
                index.first().cloned()
            };
            match next {
                Some((at, id)) if at <= now => {
                    let entry = self.locked().get(&id).cloned();
                    match entry {
                        // Expired by its own expiry, looked at now: an extension that came
                        // after this key was read has moved it (and left this key stale).
                        Some(e) if e.end_if_expired(now) => {
                            tracing::info!(target: "cell_service::audit", tenant = %e.tenant, cell = %id, "expired");
                            metrics::counter!("cell_service_evictions_total", "reason" => "expired").increment(1);
                            self.remove(&e, "cancelled", "the cell's ttl ran out");
                        }
                        _ => {
                            self.expiry
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&(at, id));
                        }
                    }
                }
                other => return other.map(|(at, _)| at),
            }
        }
    }

    /// Kills every cell (end of drain).
    pub fn kill_all(&self, why: &str) {
        // Before the snapshot, under the same lock a create takes to add its cell: a create
        // either adds it before (and it is killed here) or sees the node closed.
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<_> = self.locked().values().cloned().collect();
        for e in all {
            metrics::counter!("cell_service_evictions_total", "reason" => "drain").increment(1);
            self.remove(&e, "cancelled", why);
        }
    }

    /// Takes one of the tenant's stream slots, or names the quota.
    pub fn open_stream(self: &Arc<Self>, tenant: &str) -> Result<StreamSlot, ApiError> {
        let max = self.config.limits.streams_per_tenant;
        let held = self.streams.take(tenant, max).ok_or_else(|| {
            quota::refuse(
                tenant,
                "streams",
                format!("tenant `{tenant}` has {max} event streams open, the most allowed"),
            )
        })?;
        self.open_streams.send_modify(|n| *n += 1);
        metrics::gauge!("cell_service_streams").increment(1.0);
        Ok(StreamSlot {
            node: self.clone(),
            _held: held,
        })
    }

    /// Takes one of the tenant's places for an exec or call, or names the quota: the smaller of
    /// the node's `execs_per_tenant` and the tenant's `execs_in_flight`.
    pub fn start_exec(&self, tenant: &Tenant) -> Result<HeldSlot, ApiError> {
        let node_max = self.config.limits.execs_per_tenant;
        let max = tenant.quotas.execs_in_flight.map_or(node_max, |q| {
            node_max.min(usize::try_from(q).unwrap_or(usize::MAX))
        });
        self.execs.take(&tenant.name, max).ok_or_else(|| {
            quota::refuse(
                &tenant.name,
                "execs_in_flight",
                format!(
                    "tenant `{}` has {max} execs and calls running, the most allowed at once",
                    tenant.name
                ),
            )
        })
    }

    /// The node as `GET /v1/node` returns it: name, version, readiness and backends.
    pub fn node_json(&self) -> J {
        let backends: Vec<J> = self
            .supervisor
            .backends()
            .into_iter()
            .zip(self.supervisor.host_layers())
            .map(|((name, ok), (_, layers))| {
                json!({
                    "name": name, "available": ok.is_ok(), "reason": ok.err(),
                    "layers": layers.iter().map(|l| json!({"name": l.name, "active": l.active, "detail": l.detail})).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "node": self.config.node, "version": env!("CARGO_PKG_VERSION"),
            "ready": !self.draining(), "draining": self.draining(),
            "live_cells": self.len(), "capacity": { "max_cells": self.config.limits.max_cells },
            "backends": backends,
        })
    }
}

/// An open event stream, counted against its tenant until dropped.
pub struct StreamSlot {
    node: Arc<Node>,
    _held: HeldSlot,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.node
            .open_streams
            .send_modify(|n| *n = n.saturating_sub(1));
        metrics::gauge!("cell_service_streams").decrement(1.0);
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn spawn_error(e: SupervisorError) -> ApiError {
    match e {
        SupervisorError::UnknownBackend { .. } => ApiError::new("unknown_backend", e.to_string()),
        SupervisorError::Grants(_) | SupervisorError::MemoryOverHost { .. } => {
            ApiError::new("invalid_policy", e.to_string())
        }
        SupervisorError::Handshake(c) => c.into(),
        SupervisorError::Spawn(_) => ApiError::new("spawn_failed", e.to_string()),
        other => ApiError::new("internal", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_slots_are_bounded_and_returned() {
        let node = Node::new(
            ServeConfig::new("unix:/nonexistent".parse().unwrap(), "n"),
            Tenants::single(None, &Table::new()).unwrap(),
        );
        let held: Vec<_> = (0..3).map(|_| node.in_place(3).unwrap()).collect();
        assert!(node.in_place(3).is_none());
        drop(held);
        assert!(node.in_place(1).is_some());
    }

    fn node_with_a_cell() -> (Node, Arc<Entry>) {
        let node = Node::new(
            ServeConfig::new("unix:/nonexistent".parse().unwrap(), "n"),
            Tenants::single(None, &Table::new()).unwrap(),
        );
        let tenant = node.tenants().tenants["default"].clone();
        let req = CreateRequest {
            backend: Some("subinterp".into()),
            ttl_ms: Some(60_000),
            ..CreateRequest::default()
        };
        let entry = node.create(&tenant, req, None).unwrap();
        (node, entry)
    }

    #[test]
    fn a_cell_removed_while_its_ttl_request_ran_is_not_extended() {
        let (node, entry) = node_with_a_cell();
        assert!(node.extend(&entry, 1_000));
        node.remove(&entry, "cancelled", "deleted");
        assert!(
            !node.extend(&entry, 1_000),
            "a gone cell's life was extended"
        );
        assert!(
            node.expiry.lock().unwrap().is_empty(),
            "an index key outlived its cell"
        );
    }

    #[test]
    fn the_reaper_ends_a_cell_by_its_expiry_now_not_by_a_stale_key() {
        let (node, entry) = node_with_a_cell();
        // A key the reaper read before an extension moved the expiry (60 s ahead).
        let stale = Instant::now() - Duration::from_secs(1);
        node.expiry
            .lock()
            .unwrap()
            .insert((stale, entry.id.clone()));
        node.reap();
        assert_eq!(node.len(), 1, "an extended cell was reaped");
        assert!(entry.alive());
        assert!(node.extend(&entry, 1_000));
        assert!(
            !node
                .expiry
                .lock()
                .unwrap()
                .contains(&(stale, entry.id.clone()))
        );
        // Its own expiry passed: then it is reaped, and no extension comes after.
        let past = {
            let mut e = entry.expiry();
            let old = e.at;
            e.at = Instant::now() - Duration::from_millis(1);
            (old, e.at)
        };
        {
            let mut index = node.expiry.lock().unwrap();
            index.remove(&(past.0, entry.id.clone()));
            index.insert((past.1, entry.id.clone()));
        }
        node.reap();
        assert!(node.is_empty(), "an expired cell was kept");
        assert!(!node.extend(&entry, 1_000));
    }
}
