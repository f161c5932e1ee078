//! The guest side of a cell, shared by every backend (`no_std + alloc`).
//!
//! * [`Cell`] — one Rhai engine and its state: `exec` runs source, functions it defines stay and
//!   are reachable by `call`, together with the host modules the policy allows;
//! * the script API is exactly `post`, `log`, `metric` and `request` (module `api`); everything
//!   else out of model (`eval`, `print`, `debug`, undeclared imports) fails with a hint;
//! * [`Transport`] — the pipe a backend supplies; [`agent::serve`] is the loop over it;
//! * [`Interrupt`] — cancellation and deadlines, polled from the engine's progress callback.
//!
//! Data limits, as the engine (Rhai 1.27, patched: `vendor/README.md`) checks them on every
//! change, each in O(1): `max_string_len` is one string's length in bytes, `max_array_len` one
//! array's element count (a BLOB's byte count), `max_map_len` one map's entry count; nested
//! collections are each held to their limit, never summed. Values nest at most
//! [`limits::MAX_VALUE_NESTING`] deep. Each gives its own code (`limit_string_size`,
//! `limit_array_size`, `limit_map_size`, `limit_value`), for a literal as for a run-time change.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(all(feature = "std", feature = "no_std"))]
compile_error!("enable exactly one of the `std` and `no_std` features of cell-runtime");
#[cfg(not(any(feature = "std", feature = "no_std")))]
compile_error!("enable one of the `std` and `no_std` features of cell-runtime");

pub mod agent;
mod api;
mod cell;
mod compiled;
pub mod convert;
mod errors;
pub mod limits;
mod meter;
pub mod modules;
mod text;
mod transport;

pub use cell::Cell;
pub use cell::{Step, check_hello, prewarm, ready};
pub use errors::cell_error;
pub use transport::{
    Interrupt, NeverInterrupt, Transport, TransportError, cannot_send, decode_frame, encode_frame,
};

/// The engine name reported in the handshake.
pub const ENGINE: &str = "rhai";
/// The engine version reported in the handshake.
pub const ENGINE_VERSION: &str = "1.27";
