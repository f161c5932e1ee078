//! The host side of the cell protocol, enforced once for every backend.
//!
//! Every backend's pipe delivers the frames its guest sends to one [`CellHost`] (through
//! [`abi::backend::HostSide`]) and obeys the [`abi::backend::Flow`] it returns; every host frame
//! goes out through [`CellHost::transact`], which checks it first. The rules live here and
//! nowhere else: the frame cap, value depth and lengths in both directions, the handshake and
//! the modules a cell may name, correlation of completions, which error codes a guest may
//! report, the bounded event queue that `recv` drains, the metric series a cell may create, and
//! the dispatch of `request` to a [`RequestHandler`] on the host within the transaction's
//! wall-time limit. The supervisor, the conformance kit and third-party embedders use this crate
//! without the supervisor; it depends on `abi` only.
#![forbid(unsafe_code)]

pub mod canonical;
mod channel;
mod deadlines;
pub mod event;
mod host;
mod memory;
mod requests;
mod rules;
pub mod series;

pub use channel::Channel;
pub use event::Event;
pub use host::{CellHost, Listener, START_TIME, Stats};
pub use memory::event_bytes;
pub use requests::{DenyAll, RequestContext, RequestHandler};
pub use rules::{Direction, check_hello};
