//! The cell broker: the capabilities behind the ABI's `request(capability, action, payload)`.
//!
//! * A **capability** ([`Capability`]) has a name, a fixed set of actions and a scope it reads
//!   from rules. Built-ins: `clock`, `random`, `fs`, `kv`, `secret`, `http` (see CAPABILITIES.md
//!   at the repository root). Third parties register their own with
//!   [`BrokerBuilder::register`]; requests travel through the frozen ABI, so a registered
//!   capability works on every backend unchanged.
//! * **Rules** ([`Rules`]: `[[grants]]` and `[[denies]]` in a policy file) decide, on the host
//!   only: deny by default, and a matching deny wins over any grant.
//! * The [`Broker`] (one per supervisor: registry, kv store, secrets, audit sink) builds a
//!   [`CellBroker`] per cell from that cell's rules; it decides and runs each request, enforces
//!   quotas and timeouts, turns a failing or panicking capability into an error for that request
//!   only, cancels in-flight requests when the cell is killed, and audits every decision
//!   ([`audit`]).
//!
//! ```
//! use cell_broker::{Broker, Rule, Rules};
//! use abi::{ErrorCode, Value};
//! let broker = Broker::builder().build().unwrap();
//! let rules = Rules { grants: vec![Rule::new("clock", &["wall"])], denies: vec![] };
//! let cell = broker.for_cell("demo", &rules).unwrap();
//! assert!(matches!(cell.request("subinterp", "clock", "wall", Value::Unit), Ok(Value::Int(_))));
//! let err = cell.request("subinterp", "clock", "monotonic", Value::Unit).unwrap_err();
//! assert_eq!(err.code, ErrorCode::Denied);
//! assert!(err.message.contains("default-deny"));
//! ```
#![forbid(unsafe_code)]

pub mod audit;
mod broker;
mod capability;
pub mod caps;
mod cell;
mod error;
mod files;
mod pool;
mod quota;
mod rules;

pub use audit::{AuditRecord, AuditSink, Decision, JsonLinesAudit, MemoryAudit, NoAudit};
pub use broker::{Broker, BrokerBuilder, DEFAULT_TIMEOUT, MAX_TIMEOUT_MS};
pub use capability::{
    Call, Capability, MAX_GRANT_BYTES, Payload, PendingDeny, ReadLimit, value_bytes,
};
pub use caps::{KvLimits, Secrets};
pub use cell::CellBroker;
pub use error::{CapabilityError, ConfigError};
pub use files::{MAX_FILE_BYTES, read_text};
pub use pool::{DEFAULT_QUEUE, DEFAULT_WORKERS};
pub use rules::{Access, Namespace, Quota, Rule, RuleKind, Rules};
