//! The host side of the cell protocol, enforced once for every backend.
//!
//! Every backend's pipe delivers the frames its guest sends to one [`CellHost`] (through
//! [`abi::backend::HostSide`]) and obeys the [`abi::backend::Flow`] it returns. The rules live
//! here and nowhere else: the handshake, correlation of completions, validation of every value,
//! the bounded event queue that `recv` drains, and the dispatch of `request` to a
//! [`RequestHandler`] on the host. The supervisor, the conformance kit and third-party embedders
//! use this crate without the supervisor; it depends on `abi` only.

mod channel;
pub mod event;
mod host;
mod requests;

pub use channel::Channel;
pub use event::Event;
pub use host::{CellHost, Stats};
pub use requests::{DenyAll, RequestContext, RequestHandler};
