//! The supervisor: the user-facing API of the cell runtime.
//!
//! One cargo feature per built-in backend: `subinterp`, `process`, `microvm` (default: all).
//!
//! ```no_run
//! use cell_supervisor::{Policy, Supervisor};
//! let supervisor = Supervisor::new();
//! let cell = supervisor.spawn("demo", "subinterp", &Policy::default()).unwrap();
//! cell.exec("post(40 + 2)").unwrap();
//! let event = cell.recv(Some(std::time::Duration::from_secs(1))).unwrap();
//! cell.close();
//! ```
//!
//! * [`Supervisor`] — backends by name ([`Supervisor::builder`] registers them, a third
//!   party's too), named cells, `spawn` (parallel, flat in the number of live cells), `list`;
//! * [`Cell`] — `exec`, `call`, `recv`, `interrupt`, `kill`, `close` on one cell; `kill` and
//!   `close` stop a running exec at once;
//! * [`host`] — the host side of the protocol (`cell-host`), the one piece every backend's pipe
//!   plugs into;
//! * [`Policy`] — limits, modules and channel bounds, loaded from TOML (unknown keys are errors);
//! * [`RequestHandler`] — where `request(...)` goes: the [`broker`]'s per-cell handler, built at
//!   spawn from the policy's `[[grants]]`/`[[denies]]`; with no grants and no broker, deny-all.
#![forbid(unsafe_code)]

mod broker_handler;
mod builder;
mod cell;
pub mod json;
mod names;
pub mod policy;
pub mod shown;
mod supervisor;

pub use abi::{CellError, ErrorCode, Level, Map, Value};
/// The global allocator that makes `memory_mib` bind on subinterp cells; a program that runs
/// them installs it with `#[global_allocator]`.
#[cfg(feature = "subinterp")]
pub use backend_subinterp::AccountingAllocator;
/// The broker crate: capabilities, rules, audit sinks (`cell-broker`).
pub use broker;
pub use broker::{MAX_FILE_BYTES, read_text};
pub use builder::SupervisorBuilder;
pub use cell::{Cell, CellInfo, CellState, InterruptError, RecvError, Usage};
/// The host side of the protocol (`cell-host`).
pub use host;
pub use host::Event;
pub use host::event;
pub use host::{DenyAll, Listener, RequestContext, RequestHandler};
pub use policy::{Policy, PolicyError};
pub use supervisor::{Supervisor, SupervisorError};
